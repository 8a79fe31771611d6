// 7. The agent: live change latency (request to kernel changed) through its unix socket, 1000 sequential
// changes on a host of 1000 shaped taps (250 domains x 4 interfaces), next to the same change made by a
// process of its own per change (what `virtqos set --direct` does: start, read, change, exit); and read
// throughput of GET /v1/domains/{d}/interfaces with concurrent keep-alive clients.
import { rmSync } from "node:fs";
import { Agent, request } from "node:http";
import { join } from "node:path";
import { AuditStore } from "../src/adapters/audit.js";
import { processRunner } from "../src/adapters/exec.js";
import { createLogger } from "../src/adapters/log.js";
import { probeCapabilities } from "../src/adapters/probe.js";
import { listenUnix, socketAuthenticator } from "../src/agent/api/listen.js";
import { buildApi } from "../src/agent/api/server.js";
import { KernelView } from "../src/agent/kernel-view.js";
import { Repairer, startDriftWatch } from "../src/agent/repair.js";
import { LocalService } from "../src/agent/service.js";
import { reconcile } from "../src/app/engine.js";
import { parseDomainXml } from "../src/core/domain-xml.js";
import { emptyPolicy } from "../src/core/policy.js";
import { MemorySource } from "../src/lab/memory-source.js";
import {
  atMost,
  type BenchOptions,
  type BenchResult,
  deleteNamespace,
  info,
  median,
  nowMs,
  onCleanup,
  round,
  tmpfsRunDir,
} from "./common.js";
import { scaleDomainXml, tapNamespace } from "./scale.js";

const DOMAINS = 250;

function percentile(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
}

function call(
  socketPath: string,
  agent: Agent,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = request(
      {
        socketPath,
        agent,
        method,
        path,
        headers: data
          ? { "content-type": "application/json", "content-length": Buffer.byteLength(data) }
          : {},
      },
      (res) => {
        let text = "";
        res.setEncoding("utf8").on("data", (c: string) => {
          text += c;
        });
        res.on("end", () => resolve({ status: res.statusCode ?? 0, text }));
      },
    );
    req.on("error", reject);
    if (data) req.write(data);
    req.end();
  });
}

export async function agent(opts: BenchOptions): Promise<BenchResult[]> {
  const dirs: string[] = [];
  const namespaces: string[] = [];
  const cleanup = async () => {
    for (const ns of namespaces.splice(0)) await deleteNamespace(ns).catch(() => {});
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  };
  const unregister = onCleanup(cleanup);
  try {
    const { ns } = await tapNamespace("agent", (n) => namespaces.push(n));
    const run = tmpfsRunDir("vqbench-agent-");
    const state = tmpfsRunDir("vqbench-agent-state-");
    dirs.push(run.dir, state.dir);
    const runner = processRunner({ netns: ns });
    const caps = await probeCapabilities(runner);
    const log = createLogger({ level: "error", target: "silent" });
    const xmls = Array.from({ length: DOMAINS }, (_, d) => scaleDomainXml(d));
    const domains = xmls.map(parseDomainXml);
    const policy = emptyPolicy();
    const cold = await reconcile(
      { runner, runDir: run.dir, log, caps, stateDir: state.dir },
      { domains, policy, scope: domains.map((d) => d.uuid), sweep: true },
    );
    if (cold.failure) throw new Error(`cold apply: ${cold.failure.message}`);
    opts.log(`  shaped ${domains.length * 4} taps`);

    const source = new MemorySource();
    for (const [d, x] of xmls.entries()) source.add(domains[d].name, domains[d].uuid, x);
    const audit = AuditStore.open(join(state.dir, "audit.db"));
    // As the agent runs (src/agent/main.ts): the kernel view for live changes, kept honest by the drift
    // watch, whose repairer checks every domain an event names (our own changes included).
    const view = new KernelView({ runner, netns: ns });
    const service = new LocalService({
      source,
      runner,
      runDir: run.dir,
      stateDir: state.dir,
      log,
      policy: async () => policy,
      caps,
      audit,
      kernelView: view,
    });
    const repairer = new Repairer({
      service,
      runner,
      runDir: run.dir,
      stateDir: state.dir,
      policy: async () => policy,
      caps,
      log,
      observer: view,
    });
    const drift = startDriftWatch({
      repairer,
      log,
      netns: ns,
      ovsdb: false,
      checkIntervalMs: 0,
      kernelListener: view,
    });
    await drift.kernel.ready;
    view.enableCache();
    await drift.ready;
    const app = buildApi({ service, auth: socketAuthenticator() });
    const socketPath = join(run.dir, "api.sock");
    await listenUnix(app, socketPath);
    const keepAlive = new Agent({ keepAlive: true, maxSockets: 16 });

    // (a) live changes through the API, sequential: each answer comes after the kernel changed.
    const n = opts.quick ? 200 : 1000;
    const lat: number[] = [];
    for (let i = 0; i < n; i++) {
      const d = domains[(i * 37) % DOMAINS];
      const iface = String(1 + (i % 4));
      const kBps = 1250 + 125 * (i % 40);
      const t0 = nowMs();
      const r = await call(socketPath, keepAlive, "PATCH", `/v1/domains/${d.name}/interfaces/${iface}`, {
        inbound: { average: kBps },
        outbound: { average: kBps },
        persist: "live",
      });
      lat.push(nowMs() - t0);
      if (r.status !== 200) throw new Error(`PATCH ${d.name} ${iface}: ${r.status} ${r.text}`);
    }
    opts.log(
      `  ${n} live changes: p50 ${percentile(lat, 50).toFixed(1)} ms, p99 ${percentile(lat, 99).toFixed(1)} ms; view ${JSON.stringify(view.stats)}; drift ${JSON.stringify(repairer.stats)}`,
    );
    // The drift checks our own changes started are done before the next part measures.
    await repairer.idle();
    await service.queue.idle();
    // (b) the same change as a process of its own each time (a CLI without an agent): node starts, loads the
    // engine, reads the live store and the records, changes the kernel, exits. Run from the same code.
    const cliN = opts.quick ? 10 : 30;
    const cliLat: number[] = [];
    const { spawnSync } = await import("node:child_process");
    const script = `
      import { LocalService } from ${JSON.stringify(new URL("../src/agent/service.ts", import.meta.url).pathname)};
      import { MemorySource } from ${JSON.stringify(new URL("../src/lab/memory-source.ts", import.meta.url).pathname)};
      import { processRunner } from ${JSON.stringify(new URL("../src/adapters/exec.ts", import.meta.url).pathname)};
      import { createLogger } from ${JSON.stringify(new URL("../src/adapters/log.ts", import.meta.url).pathname)};
      import { emptyPolicy } from ${JSON.stringify(new URL("../src/core/policy.ts", import.meta.url).pathname)};
      const [ns, runDir, stateDir, name, uuid, xml, kBps] = process.argv.slice(1);
      const source = new MemorySource(); source.add(name, uuid, xml);
      const s = new LocalService({ source, runner: processRunner({ netns: ns }), runDir, stateDir,
        log: createLogger({ level: "error", target: "silent" }), policy: async () => emptyPolicy() });
      await s.setInterface(uuid, "1", { inbound: { average: Number(kBps) }, persist: "live" }, { name: "bench", role: "admin", via: "cli" });
    `;
    for (let i = 0; i < cliN; i++) {
      const d = domains[(i * 53) % DOMAINS];
      const t0 = nowMs();
      const r = spawnSync(
        process.execPath,
        [
          "--import",
          "tsx",
          "--input-type=module",
          "-e",
          script,
          ns,
          run.dir,
          state.dir,
          d.name,
          d.uuid,
          xmls[(i * 53) % DOMAINS],
          String(1250 + 125 * (i % 40)),
        ],
        { encoding: "utf8" },
      );
      cliLat.push(nowMs() - t0);
      if (r.status !== 0) throw new Error(`process per change: ${r.stderr}`);
    }

    // (c) reads: GET one domain's interfaces (configured, live, in force, kernel check, counters), 16
    // concurrent keep-alive clients for a few seconds.
    const seconds = opts.quick ? 2 : 5;
    const readLat: number[] = [];
    let reads = 0;
    const until = nowMs() + seconds * 1000;
    await Promise.all(
      Array.from({ length: 16 }, async (_, c) => {
        let i = c;
        while (nowMs() < until) {
          const d = domains[(i++ * 31) % DOMAINS];
          const t0 = nowMs();
          const r = await call(socketPath, keepAlive, "GET", `/v1/domains/${d.name}/interfaces`);
          readLat.push(nowMs() - t0);
          if (r.status !== 200) throw new Error(`GET ${d.name}: ${r.status} ${r.text}`);
          reads++;
        }
      }),
    );
    keepAlive.destroy();
    await app.close();
    await drift.close();
    view.close();
    audit.close();

    const p50 = percentile(lat, 50);
    const p99 = percentile(lat, 99);
    const cliMedian = median(cliLat);
    return [
      info(
        "agent.live_change_p50",
        "request to kernel changed, API over the unix socket",
        round(p50, 1),
        "ms",
        {
          changes: n,
          taps: DOMAINS * 4,
        },
      ),
      atMost(
        "agent.live_change_p99",
        "request to kernel changed, API over the unix socket",
        round(p99, 1),
        "ms",
        50,
        {
          changes: n,
          maxMs: round(Math.max(...lat), 1),
          view: { ...view.stats },
          driftChecks: repairer.stats.checks,
          driftRepairs: repairer.stats.repairs,
        },
      ),
      info(
        "agent.process_per_change_median",
        "the same change by a process of its own (no agent)",
        round(cliMedian, 1),
        "ms",
        {
          runs: cliN,
          p90Ms: round(percentile(cliLat, 90), 1),
          ratioToAgentP50: round(cliMedian / p50, 2),
        },
      ),
      info(
        "agent.reads_per_second",
        "GET /v1/domains/{d}/interfaces, 16 clients",
        round(reads / seconds, 1),
        "req/s",
        {
          p50Ms: round(percentile(readLat, 50), 1),
          p99Ms: round(percentile(readLat, 99), 1),
          seconds,
          note: "each read re-checks the kernel (status) and reads the taps' counters",
        },
      ),
    ];
  } finally {
    unregister();
    await cleanup();
  }
}
