// 5. Hook wall time for a 4-interface domain, cold apply and no-op, vs `node -e 0`, through both entries side by side in
// every iteration (the machines are noisy): `node dist/hook-loader.cjs` (what the installed hook runs) and
// `bin/virtqos hook qemu` (the CLI, which dispatches to the same loader before loading the CLI bundle).
import { existsSync, readdirSync, rmSync, statSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { processRunner } from "../src/adapters/exec.js";
import { createLogger } from "../src/adapters/log.js";
import { cachedCapabilities } from "../src/adapters/probe.js";
import { reconcile } from "../src/app/engine.js";
import { parseDomainXml } from "../src/core/domain-xml.js";
import { emptyPolicy } from "../src/core/policy.js";
import { run } from "../src/lab/exec.js";
import {
  atMost,
  type BenchOptions,
  type BenchResult,
  createNamespace,
  deleteNamespace,
  info,
  median,
  nowMs,
  onCleanup,
  type RunnerCall,
  round,
  timedSpawn,
  timingRunner,
  tmpfsRunDir,
} from "./common.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..");
const HOOK = join(ROOT, "dist", "hook-loader.cjs");
const BIN = join(ROOT, "bin", "virtqos");
const TAPS = ["hk0", "hk1", "hk2", "hk3"];
const NAME = "bench-hook";
const UUID = "b3c40000-0000-4000-8000-00000000f00d";

function hookXml(): string {
  const ifaces = TAPS.map(
    (tap, i) =>
      `<interface type='bridge'><mac address='52:54:00:b8:00:${(i + 1).toString(16).padStart(2, "0")}'/><source bridge='br0'/>` +
      `<target dev='${tap}'/><bandwidth><inbound average='${1250 * (i + 1)}'/><outbound average='${625 * (i + 1)}'/></bandwidth>` +
      `<model type='virtio'/></interface>`,
  );
  return `<domain type='kvm' id='7'>\n  <name>${NAME}</name>\n  <uuid>${UUID}</uuid>\n  <devices>\n    ${ifaces.join("\n    ")}\n  </devices>\n</domain>\n`;
}

/** Newest mtime under src/, to warn when dist/hook.mjs was built from older sources. */
function newestSource(dir: string): number {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    newest = Math.max(newest, e.isDirectory() ? newestSource(p) : statSync(p).mtimeMs);
  }
  return newest;
}

async function htbRoots(ns: string): Promise<number> {
  const out = (await run("tc", ["-n", ns, "qdisc", "show"])).stdout;
  return out.split("\n").filter((l) => /^qdisc htb 7651: dev \S+ root/.test(l)).length;
}

export async function hook(opts: BenchOptions): Promise<BenchResult[]> {
  if (!existsSync(HOOK))
    throw new Error(`${HOOK} is missing: run \`node scripts/build.mjs\` (or \`npm run bench\`)`);
  const stale = statSync(HOOK).mtimeMs < newestSource(join(ROOT, "src"));
  if (stale)
    opts.log("  WARNING: dist/hook.cjs is older than src/: results describe the old build (npm run build)");
  const iterations = opts.quick ? 8 : 15;
  // On tmpfs, like /run/virtqos on a real host.
  const { dir: runDir, tmpfs } = tmpfsRunDir("vqbench-hook-");
  const inProcDir = tmpfsRunDir("vqbench-hookinproc-").dir;
  let ns: string | undefined;
  const cleanup = async () => {
    if (ns) await deleteNamespace(ns).catch(() => {});
    ns = undefined;
    rmSync(runDir, { recursive: true, force: true });
    rmSync(inProcDir, { recursive: true, force: true });
  };
  const unregister = onCleanup(cleanup);
  try {
    ns = await createNamespace("hook");
    const lines = TAPS.flatMap((t, i) => [
      `link add ${t} type veth peer name hkp${i}`,
      `link set dev ${t} up`,
      `link set dev hkp${i} up`,
    ]);
    await run("ip", ["-n", ns, "-batch", "-"], { input: `${lines.join("\n")}\n` });
    const xml = hookXml();
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      VIRTQOS_NETNS: ns,
      VIRTQOS_RUN_DIR: runDir,
      VIRTQOS_CONFIG: "/nonexistent",
      VIRTQOS_LOG: "silent",
    };
    // Neither child should load anything the parent's tooling asked for (tsx sets no NODE_OPTIONS today, but be sure).
    const parentNodeOptions = env.NODE_OPTIONS;
    delete env.NODE_OPTIONS;
    const node = process.execPath;
    const hookRun = (op: string, sub: string, e = env) =>
      timedSpawn(node, [HOOK, NAME, op, sub, "-"], { input: xml, env: e });
    // As an operator or a script runs it: the file itself (`#!/usr/bin/env node`), so env's exec is counted too.
    const binRun = (op: string, sub: string, e = env) =>
      timedSpawn(BIN, ["hook", "qemu", NAME, op, sub, "-"], { input: xml, env: e });

    // Warm-up (untimed): probes capabilities and caches them in the run dir; errors go to stderr here.
    const warm = await hookRun("start", "begin", { ...env, VIRTQOS_LOG: "stderr" });
    const warmRoots = await htbRoots(ns);
    const warmStop = await hookRun("stopped", "end", { ...env, VIRTQOS_LOG: "stderr" });
    const capsCached = existsSync(join(runDir, "capabilities.json"));
    if (warm.code !== 0 || warmRoots !== 8 || !capsCached) {
      throw new Error(
        `hook warm-up did not apply: exit ${warm.code}, ${warmRoots} htb roots (want 8), caps cached ${capsCached}; stderr: ${warm.stderr.trim()} ${warmStop.stderr.trim()}`,
      );
    }
    // The same through bin/virtqos.
    const binWarm = await binRun("start", "begin", { ...env, VIRTQOS_LOG: "stderr" });
    const binWarmRoots = await htbRoots(ns);
    const binWarmStop = await binRun("stopped", "end", { ...env, VIRTQOS_LOG: "stderr" });
    if (binWarm.code !== 0 || binWarmRoots !== 8 || (await htbRoots(ns)) !== 0) {
      throw new Error(
        `bin/virtqos hook warm-up did not apply: exit ${binWarm.code}, ${binWarmRoots} htb roots (want 8); stderr: ${binWarm.stderr.trim()} ${binWarmStop.stderr.trim()}`,
      );
    }
    // Also warm the page cache for node itself.
    await timedSpawn(node, ["-e", "0"], { env });

    const t = {
      node: [] as number[],
      prepare: [] as number[],
      start: [] as number[],
      started: [] as number[],
      oneProc: [] as number[],
      stopped: [] as number[],
      binPrepare: [] as number[],
      binStart: [] as number[],
      binStarted: [] as number[],
      binStopped: [] as number[],
    };
    let badApply = 0;
    let badRemove = 0;
    let nonZeroExit = 0;
    for (let i = 0; i < iterations; i++) {
      const n = await timedSpawn(node, ["-e", "0"], { env });
      t.node.push(n.ms);
      const p = await hookRun("prepare", "begin");
      t.prepare.push(p.ms);
      // One short iproute2 process in the namespace: the unit cost of every observe/apply step.
      t.oneProc.push((await timedSpawn("ip", ["-n", ns, "link", "show", "dev", "lo"], { env })).ms);
      const s = await hookRun("start", "begin");
      t.start.push(s.ms);
      const s2 = await hookRun("started", "begin");
      t.started.push(s2.ms);
      if ((await htbRoots(ns)) !== 8) badApply++;
      const x = await hookRun("stopped", "end");
      t.stopped.push(x.ms);
      if ((await htbRoots(ns)) !== 0) badRemove++;
      // bin/virtqos, same cycle, same iteration.
      const bp = await binRun("prepare", "begin");
      t.binPrepare.push(bp.ms);
      const bs = await binRun("start", "begin");
      t.binStart.push(bs.ms);
      const bs2 = await binRun("started", "begin");
      t.binStarted.push(bs2.ms);
      if ((await htbRoots(ns)) !== 8) badApply++;
      const bx = await binRun("stopped", "end");
      t.binStopped.push(bx.ms);
      if ((await htbRoots(ns)) !== 0) badRemove++;
      for (const r of [p, s, s2, x, bp, bs, bs2, bx]) if (r.code !== 0 || r.stdout) nonZeroExit++;
      // The second node baseline of the iteration, after the bin runs: both entries sit between two.
      t.node.push((await timedSpawn(node, ["-e", "0"], { env })).ms);
    }

    // In-process engine time for the same domain (no node startup, no module load): the tc/ip share.
    const runner = processRunner({ netns: ns });
    const caps = await cachedCapabilities(runner, runDir);
    const ctx = { runner, runDir: inProcDir, log: createLogger({ level: "error", target: "silent" }), caps };
    const domain = parseDomainXml(xml);
    const inProc = { cold: [] as number[], noop: [] as number[], remove: [] as number[] };
    const procs = { cold: [] as RunnerCall[][], noop: [] as RunnerCall[][], remove: [] as RunnerCall[][] };
    const timed = async (which: keyof typeof inProc, domains: (typeof domain)[]) => {
      const tr = timingRunner(runner);
      const t0 = nowMs();
      const r = await reconcile(
        { ...ctx, runner: tr.runner },
        { domains, policy: emptyPolicy(), scope: [UUID], sweep: true },
      );
      inProc[which].push(nowMs() - t0);
      procs[which].push(tr.calls);
      return r;
    };
    for (let i = 0; i < Math.min(iterations, 10); i++) {
      await timed("cold", [domain]);
      const r = await timed("noop", [domain]);
      if (r.plan.ops.length) badApply++;
      await timed("remove", []);
    }
    /** Per child process (in order), the median time over the in-process runs. */
    const perProcess = (runs: RunnerCall[][]) =>
      (runs[0] ?? []).map((c, i) => ({
        cmd: `${c.cmd} ${c.args}`,
        inputLines: c.inputLines,
        medianMs: round(median(runs.map((r) => r[i]?.ms ?? Number.NaN).filter(Number.isFinite)), 2),
      }));

    const m = {
      nodeMs: round(median(t.node), 1),
      prepareBeginMs: round(median(t.prepare), 1),
      startBeginColdMs: round(median(t.start), 1),
      startedBeginNoopMs: round(median(t.started), 1),
      stoppedEndMs: round(median(t.stopped), 1),
      binPrepareBeginMs: round(median(t.binPrepare), 1),
      binStartBeginColdMs: round(median(t.binStart), 1),
      binStartedBeginNoopMs: round(median(t.binStarted), 1),
      binStoppedEndMs: round(median(t.binStopped), 1),
      oneIpProcessMs: round(median(t.oneProc), 2),
      inProcessColdReconcileMs: round(median(inProc.cold), 1),
      inProcessNoopReconcileMs: round(median(inProc.noop), 1),
      inProcessRemoveReconcileMs: round(median(inProc.remove), 1),
    };
    const breakdown = {
      nodeStartupMs: m.nodeMs,
      moduleLoadAndStdinMs: round(m.prepareBeginMs - m.nodeMs, 1),
      engineColdMs: round(m.startBeginColdMs - m.prepareBeginMs, 1),
      engineNoopMs: round(m.startedBeginNoopMs - m.prepareBeginMs, 1),
    };
    const details = {
      iterations,
      medians: m,
      breakdown,
      samplesMs: Object.fromEntries(Object.entries(t).map(([k, v]) => [k, v.map((x) => round(x, 1))])),
      inProcessChildProcesses: {
        cold: perProcess(procs.cold),
        noop: perProcess(procs.noop),
        remove: perProcess(procs.remove),
      },
      inProcessSamplesMs: Object.fromEntries(
        Object.entries(inProc).map(([k, v]) => [k, v.map((x) => round(x, 1))]),
      ),
      badApply,
      badRemove,
      nonZeroExit,
      distStale: stale,
      parentNodeOptions: parentNodeOptions ?? null,
      capabilitiesCached: capsCached,
      runDirOnTmpfs: tmpfs,
    };
    opts.log(
      `  medians: node ${m.nodeMs} ms; hook-loader: prepare ${m.prepareBeginMs} ms, start(cold) ${m.startBeginColdMs} ms, started(no-op) ${m.startedBeginNoopMs} ms; bin/virtqos hook qemu: prepare ${m.binPrepareBeginMs} ms, start(cold) ${m.binStartBeginColdMs} ms, started(no-op) ${m.binStartedBeginNoopMs} ms`,
    );
    if (badApply || badRemove || nonZeroExit) {
      opts.log(
        `  WARNING: ${badApply} applies and ${badRemove} removals did not leave the expected state, ${nonZeroExit} non-zero exits`,
      );
    }
    const ratio = (xs: number[]) => round(median(xs) / median(t.node), 3);
    return [
      atMost(
        "hook.cold_apply_over_node",
        "median(hook-loader start begin) / median(node -e 0)",
        ratio(t.start),
        "ratio",
        1.5,
        details,
      ),
      atMost(
        "hook.noop_over_node",
        "median(hook-loader started begin, no-op) / median(node -e 0)",
        ratio(t.started),
        "ratio",
        1.5,
        {},
      ),
      atMost(
        "hook.cli_cold_apply_over_node",
        "median(bin/virtqos hook qemu start begin) / median(node -e 0)",
        ratio(t.binStart),
        "ratio",
        1.5,
        {},
      ),
      atMost(
        "hook.cli_noop_over_node",
        "median(bin/virtqos hook qemu started begin, no-op) / median(node -e 0)",
        ratio(t.binStarted),
        "ratio",
        1.5,
        {},
      ),
      info(
        "hook.cold_apply_ms",
        "median hook-loader start begin (cold apply, 4 ifaces)",
        m.startBeginColdMs,
        "ms",
        {},
      ),
      info("hook.noop_ms", "median hook-loader started begin (no-op)", m.startedBeginNoopMs, "ms", {}),
      info(
        "hook.cli_cold_apply_ms",
        "median bin/virtqos hook qemu start begin (cold apply, 4 ifaces)",
        m.binStartBeginColdMs,
        "ms",
        {},
      ),
      info(
        "hook.cli_noop_ms",
        "median bin/virtqos hook qemu started begin (no-op)",
        m.binStartedBeginNoopMs,
        "ms",
        {},
      ),
      info(
        "hook.prepare_ms",
        "median hook-loader prepare begin (module load only)",
        m.prepareBeginMs,
        "ms",
        {},
      ),
      info(
        "hook.cli_prepare_ms",
        "median bin/virtqos hook qemu prepare begin (module load only)",
        m.binPrepareBeginMs,
        "ms",
        {},
      ),
      info("hook.node_ms", "median node -e 0", m.nodeMs, "ms", {}),
      {
        name: "hook.correctness",
        metric: "iterations where the hook left the wrong state or exited non-zero",
        value: badApply + badRemove + nonZeroExit,
        unit: "count",
        target: "== 0",
        pass: badApply + badRemove + nonZeroExit === 0,
        details: { badApply, badRemove, nonZeroExit },
      },
    ];
  } finally {
    unregister();
    await cleanup();
  }
}
