/**
 * The hook always exits (issue 6, item 2), through every entry libvirt or an operator uses:
 *   - `node dist/hook-loader.cjs <domain> <op> <sub> <extra>`: what the installed hook runs,
 *   - `bin/virtqos hook qemu <domain> <op> <sub> <extra>`: the CLI (dispatched to the same loader),
 *   - `node dist/virtqos.mjs hook qemu ...`: the CLI bundle's own hook command (where the 60 s hang was; it has
 *     the same deadline, counted from when the command runs, but no process-level last resort).
 * Real processes throughout: a PATH with no ip/tc at all, and fake `tc` scripts that hang (forever, or only on
 * the apply batch, or on the rollback batch too) with a short `hookTimeout` in the policy file. Checks the exit
 * status (0; 1 with `strict: true`), the wall time, the ERROR lines, that no fake tc is left running and that no
 * lock file is left behind. Needs `npm run build` (dist/) first; the fake-tc cases need root (a namespace).
 *   node --import tsx --test test/integration/hook-exit.test.ts
 */
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import {
  chmodSync,
  existsSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { processRunner } from "../../src/adapters/exec.js";
import { cachedCapabilities } from "../../src/adapters/probe.js";
import { run } from "../../src/lab/exec.js";
import { domainXml, ifbsIn, SKIP_NOT_ROOT, uuidFor } from "../helpers/netns.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const LOADER = join(ROOT, "dist", "hook-loader.cjs");
const BIN = join(ROOT, "bin", "virtqos");
const CLI_BUNDLE = join(ROOT, "dist", "virtqos.mjs");
const FIXTURE = readFileSync(join(ROOT, "test", "fixtures", "libvirt-9.0", "cliff-start-begin.xml"), "utf8");
const SKIP_NO_DIST = existsSync(LOADER) && existsSync(CLI_BUNDLE) ? false : "run `npm run build` first";

const which = (cmd: string): string | undefined =>
  ["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map((d) => join(d, cmd)).find((p) => existsSync(p));
const REAL_TC = which("tc");
const REAL_IP = which("ip");

const scratch: string[] = [];
function tempDir(prefix: string): string {
  const d = mkdtempSync(join(tmpdir(), prefix));
  scratch.push(d);
  return d;
}
after(() => {
  for (const d of scratch) rmSync(d, { recursive: true, force: true });
});

/** A PATH directory with node and the given executables (symlinks or script bodies). */
function binDir(entries: Record<string, { link: string } | { script: string }> = {}): string {
  const dir = tempDir("virtqos-hookexit-bin-");
  symlinkSync(process.execPath, join(dir, "node"));
  for (const [name, e] of Object.entries(entries)) {
    if ("link" in e) symlinkSync(e.link, join(dir, name));
    else {
      writeFileSync(join(dir, name), e.script);
      chmodSync(join(dir, name), 0o755);
    }
  }
  return dir;
}

/** A `tc` that records its pid, runs the real tc for what `passes` matches and hangs (exec sleep) otherwise. */
function fakeTc(pidFile: string, cases: string): string {
  return `#!/bin/sh\n# fake tc for test/integration/hook-exit.test.ts\nhang() { echo $$ >> ${pidFile}; exec /bin/sleep 100000; }\ncase " $* " in\n${cases}\nesac\n`;
}

type Entry = "loader" | "bin" | "cli-bundle";
const ENTRIES: Entry[] = ["loader", "bin"];

interface HookRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  ms: number;
  stderr: string;
  stdout: string;
}

/** Run the hook as a real process through one entry; killed (and failing the test) after `killAfterMs`. */
function runEntry(
  entry: Entry,
  args: string[],
  opts: {
    path: string;
    env: Record<string, string>;
    input: string;
    killAfterMs?: number;
    keepStdinOpen?: boolean;
  },
): Promise<HookRun> {
  const [cmd, argv] =
    entry === "loader"
      ? [process.execPath, [LOADER, ...args]]
      : entry === "bin"
        ? [BIN, ["hook", "qemu", ...args]] // `#!/usr/bin/env node`: finds node on the test's PATH
        : [process.execPath, [CLI_BUNDLE, "hook", "qemu", ...args]];
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const env: NodeJS.ProcessEnv = { PATH: opts.path, ...opts.env };
    const child = spawn(cmd, argv, { env, stdio: ["pipe", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.on("data", (b: Buffer) => err.push(b));
    const killer = setTimeout(() => child.kill("SIGKILL"), opts.killAfterMs ?? 30_000);
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(killer);
      resolve({
        code,
        signal,
        ms: performance.now() - t0,
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8"),
      });
    });
    child.stdin.on("error", () => {});
    if (opts.keepStdinOpen) child.stdin.write(opts.input);
    else child.stdin.end(opts.input);
  });
}

/** Whether a process still runs (a zombie waiting for init to reap it does not). */
function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

async function assertGone(pidFile: string): Promise<number[]> {
  const pids = existsSync(pidFile)
    ? readFileSync(pidFile, "utf8").split("\n").filter(Boolean).map(Number)
    : [];
  const until = Date.now() + 2_000;
  while (pids.some(running) && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(
    pids.filter(running),
    [],
    `fake tc processes still running after the hook exited (of ${pids.join(", ")})`,
  );
  return pids;
}

function runDirFor(prefix: string): string {
  return tempDir(`virtqos-hookexit-run-${prefix}-`);
}

function policyFile(text: string): string {
  const f = join(tempDir("virtqos-hookexit-policy-"), "policy.yaml");
  writeFileSync(f, text);
  return f;
}

describe("no ip, no tc on PATH", { skip: SKIP_NO_DIST }, () => {
  for (const entry of [...ENTRIES, "cli-bundle"] as Entry[]) {
    for (const [op, sub] of [
      ["start", "begin"],
      ["stopped", "end"],
    ]) {
      test(`${entry}: ${op} ${sub} logs ERROR and exits 0 at once`, async () => {
        const runDir = runDirFor(entry);
        const r = await runEntry(entry, ["cliff", op, sub, "-"], {
          path: binDir(),
          env: { VIRTQOS_RUN_DIR: runDir, VIRTQOS_CONFIG: join(runDir, "none.yaml"), VIRTQOS_LOG: "stderr" },
          input: FIXTURE,
        });
        assert.equal(r.signal, null, `killed after ${Math.round(r.ms)} ms: the hook did not exit`);
        assert.equal(r.code, 0, r.stderr);
        assert.ok(r.ms < 5_000, `took ${Math.round(r.ms)} ms`);
        assert.match(r.stderr, /ERROR: .*(ip|tc) is not installed/);
        assert.equal(r.stdout, "");
        assert.ok(!existsSync(join(runDir, "lock")), "lock file left behind");
      });
    }
  }

  test("bin: strict: true exits 1, still at once", async () => {
    const runDir = runDirFor("strict");
    const r = await runEntry("bin", ["cliff", "start", "begin", "-"], {
      path: binDir(),
      env: {
        VIRTQOS_RUN_DIR: runDir,
        VIRTQOS_CONFIG: policyFile("strict: true\n"),
        VIRTQOS_LOG: "stderr",
      },
      input: FIXTURE,
    });
    assert.equal(r.code, 1, r.stderr);
    assert.ok(r.ms < 5_000, `took ${Math.round(r.ms)} ms`);
  });
});

test(
  "loader and bin: a caller that never closes stdin: the deadline still ends the hook",
  { skip: SKIP_NO_DIST },
  async () => {
    for (const entry of ENTRIES) {
      const runDir = runDirFor(`stdin-${entry}`);
      const r = await runEntry(entry, ["cliff", "start", "begin", "-"], {
        path: binDir(),
        env: {
          VIRTQOS_RUN_DIR: runDir,
          VIRTQOS_CONFIG: policyFile("hookTimeout: 2s\n"),
          VIRTQOS_LOG: "stderr",
        },
        input: FIXTURE,
        keepStdinOpen: true,
      });
      assert.equal(r.signal, null, `${entry}: killed after ${Math.round(r.ms)} ms: the hook did not exit`);
      assert.equal(r.code, 0, r.stderr);
      assert.ok(r.ms >= 1_900 && r.ms < 4_500, `${entry}: exited after ${Math.round(r.ms)} ms, want ~2000`);
      assert.match(r.stderr, /ERROR: HOOK_TIMEOUT: .*within 2 s/);
      assert.ok(!existsSync(join(runDir, "lock")), "lock file left behind");
    }
  },
);

test("killing the children right after a spawn that failed does not kill our own process group", async () => {
  // libuv turns kill() of a child whose spawn failed (no pid yet, 'error' not yet delivered) into kill(0, sig):
  // the whole process group, which for the hook is libvirtd's. Its own group here, so only it would die.
  const dir = tempDir("virtqos-hookexit-kill0-");
  const script = join(dir, "kill0.mts");
  writeFileSync(
    script,
    `import { processRunner } from ${JSON.stringify(join(ROOT, "src", "adapters", "exec.ts"))};\n` +
      "const runner = processRunner();\n" +
      'const p = runner.run("virtqos-no-such-command", []).catch((e) => e.code);\n' +
      "const killed = runner.kill();\n" +
      "console.log(JSON.stringify({ killed, error: await p }));\n",
  );
  const r = await new Promise<{ code: number | null; signal: string | null; out: string }>((resolve) => {
    const c = spawn(process.execPath, ["--import", "tsx", script], {
      detached: true,
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    c.stdout.on("data", (b: Buffer) => {
      out += b;
    });
    c.on("close", (code, signal) => resolve({ code, signal, out }));
  });
  assert.equal(r.signal, null, "the process killed its own process group");
  assert.equal(r.code, 0);
  assert.deepEqual(JSON.parse(r.out), { killed: [], error: "COMMAND_MISSING" });
});

describe("a tc that hangs", { skip: SKIP_NOT_ROOT || SKIP_NO_DIST || (!REAL_TC && "no tc") }, () => {
  const ns = `vqh-hookexit-${process.pid}`;
  const tap = "hx0";
  const uuid = uuidFor("hookexit");
  const xml = domainXml("hookexit", uuid, [
    {
      guest: { name: "hookexit", ns, tap, mac: "52:54:00:6e:00:01", ipv4: "", ipv6: "" },
      type: "ethernet",
      inbound: { average: 1250 },
      outbound: { average: 625 },
    },
  ]);
  const envFor = (runDir: string, policy: string) => ({
    VIRTQOS_RUN_DIR: runDir,
    VIRTQOS_CONFIG: policy,
    VIRTQOS_NETNS: ns,
    VIRTQOS_LOG: "stderr",
  });
  const kernelState = async () => ({
    ifbs: await ifbsIn(ns),
    qdiscs: (await run("tc", ["-n", ns, "qdisc", "show", "dev", tap])).stdout,
  });
  /** The capabilities cached with the real tc, so the fake one is met by the apply itself, not the probe. */
  const warmRunDir = async (prefix: string) => {
    const runDir = runDirFor(prefix);
    await cachedCapabilities(processRunner({ netns: ns }), runDir);
    return runDir;
  };

  before(async () => {
    await run("ip", ["netns", "del", ns], { allowFail: true });
    await run("ip", ["netns", "add", ns]);
    await run("ip", ["-n", ns, "link", "add", tap, "type", "veth", "peer", "name", "hxp0"]);
    await run("ip", ["-n", ns, "link", "set", tap, "up"]);
  });
  after(async () => {
    await run("ip", ["netns", "del", ns], { allowFail: true });
  });

  for (const entry of [...ENTRIES, "cli-bundle"] as Entry[]) {
    for (const strict of [false, true]) {
      test(`${entry}: hookTimeout 2s, tc never answers${strict ? ", strict" : ""}: HOOK_TIMEOUT, exit ${strict ? 1 : 0} after ~2 s`, async () => {
        const runDir = runDirFor(entry);
        const pids = join(runDir, "..", `${runDir.split("/").pop()}.tc-pids`);
        scratch.push(pids);
        const path = binDir({ ip: { link: REAL_IP! }, tc: { script: fakeTc(pids, "  *) hang;;") } });
        const policy = policyFile(`hookTimeout: 2s\n${strict ? "strict: true\n" : ""}`);
        const r = await runEntry(entry, ["hookexit", "start", "begin", "-"], {
          path,
          env: envFor(runDir, policy),
          input: xml,
        });
        assert.equal(r.signal, null, `killed after ${Math.round(r.ms)} ms: the hook did not exit`);
        assert.equal(r.code, strict ? 1 : 0, r.stderr);
        // The real entries count from the process start; the CLI bundle from when its hook command runs.
        assert.ok(r.ms >= 1_900 && r.ms < 4_500, `exited after ${Math.round(r.ms)} ms, want ~2000`);
        assert.match(r.stderr, /ERROR: HOOK_TIMEOUT: .* did not finish within 2 s .*killed .*tc /);
        assert.equal(r.stdout, "");
        const seen = await assertGone(pids);
        assert.ok(seen.length >= 1, "the fake tc never ran");
        assert.ok(!existsSync(join(runDir, "lock")), "lock file left behind");
        assert.deepEqual((await kernelState()).ifbs, []);
      });
    }
  }

  for (const entry of ENTRIES) {
    test(`${entry}: the apply batch hangs: killed at the deadline, the engine rolls the devices back`, async () => {
      const runDir = await warmRunDir(`rollback-${entry}`);
      const pids = join(runDir, "tc-pids");
      // Dumps (-j) and the rollback (-force) reach the real tc; the apply batch hangs before changing anything,
      // while `ip -batch` has already created the IFB alongside it.
      const tc = fakeTc(
        pids,
        `  *" -j "*|*" -force "*) exec ${REAL_TC} "$@";;\n  *" -batch "*) hang;;\n  *) exec ${REAL_TC} "$@";;`,
      );
      const r = await runEntry(entry, ["hookexit", "start", "begin", "-"], {
        path: binDir({ ip: { link: REAL_IP! }, tc: { script: tc } }),
        env: envFor(runDir, policyFile("hookTimeout: 2s\n")),
        input: xml,
      });
      assert.equal(r.code, 0, r.stderr);
      assert.ok(r.ms >= 1_900 && r.ms < 4_500, `exited after ${Math.round(r.ms)} ms`);
      assert.match(r.stderr, /HOOK_TIMEOUT: .*killed .*-batch/);
      assert.match(r.stderr, /devices restored to their previous state/);
      await assertGone(pids);
      const k = await kernelState();
      assert.deepEqual(k.ifbs, [], "the IFB the interrupted apply created was not rolled back");
      assert.doesNotMatch(k.qdiscs, /7651:/);
      assert.ok(!existsSync(join(runDir, "lock")), "lock file left behind");
    });
  }

  test("loader: the rollback hangs too: gives up 3 s after the deadline, the next apply converges", async () => {
    const runDir = await warmRunDir("grace");
    const pids = join(runDir, "tc-pids");
    // The apply batch is applied for real and then hangs; the rollback batch hangs before applying.
    const tc = fakeTc(
      pids,
      `  *" -j "*) exec ${REAL_TC} "$@";;\n  *" -force "*) hang;;\n  *" -batch "*) ${REAL_TC} "$@"; hang;;\n  *) exec ${REAL_TC} "$@";;`,
    );
    const env = envFor(runDir, policyFile("hookTimeout: 2s\n"));
    const r = await runEntry("loader", ["hookexit", "start", "begin", "-"], {
      path: binDir({ ip: { link: REAL_IP! }, tc: { script: tc } }),
      env,
      input: xml,
    });
    assert.equal(r.code, 0, r.stderr);
    assert.ok(r.ms >= 4_900 && r.ms < 7_500, `exited after ${Math.round(r.ms)} ms, want ~5000 (2 s + 3 s)`);
    assert.match(r.stderr, /HOOK_TIMEOUT: guest=hookexit: giving up after 3 s more, killed .*-force -batch/);
    await assertGone(pids);
    assert.ok(!existsSync(join(runDir, "lock")), "lock file left behind");
    const left = await kernelState();
    assert.match(left.qdiscs, /htb 7651:/, "the interrupted batch's changes are documented as left in place");

    // The next hook run with a working tc converges, and stopping the guest removes everything.
    const path = binDir({ ip: { link: REAL_IP! }, tc: { link: REAL_TC! } });
    const again = await runEntry("loader", ["hookexit", "started", "begin", "-"], { path, env, input: xml });
    assert.equal(again.code, 0, again.stderr);
    assert.doesNotMatch(again.stderr, /ERROR/);
    assert.equal((await kernelState()).ifbs.length, 1);
    const stop = await runEntry("loader", ["hookexit", "stopped", "end", "-"], { path, env, input: xml });
    assert.equal(stop.code, 0, stop.stderr);
    const end = await kernelState();
    assert.deepEqual(end.ifbs, []);
    assert.doesNotMatch(end.qdiscs, /7651:/);
  });
});
