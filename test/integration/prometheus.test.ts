/**
 * A real Prometheus server scrapes the agent. The agent is assembled as src/agent/main.ts assembles it (the
 * service, its Metrics reading collectStatus, the drift repairer fed by the kernel watch, the API on TCP with
 * bearer tokens), on a namespace lab instead of libvirt; Debian's `prometheus` scrapes its /metrics every second
 * with a reader token from the token store (`authorization: { credentials_file }`). What Prometheus stored is
 * read back through its HTTP API (/api/v1/targets, /api/v1/query) and must be what virtqos configured: the rate
 * of both directions in bits/s, in force = 1, and a drift repair counted once it happened.
 *   node --import tsx --test test/integration/prometheus.test.ts
 * Needs root (the lab) and the prometheus binary (scripts/setup.sh installs it; CI runs that): without it this
 * file FAILS rather than skips.
 */

import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import type { AddressInfo } from "node:net";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import type { FastifyInstance } from "fastify";
import { createLogger } from "../../src/adapters/log.js";
import { listenTcp } from "../../src/agent/api/listen.js";
import { buildApi } from "../../src/agent/api/server.js";
import { TokenStore } from "../../src/agent/auth.js";
import { Metrics } from "../../src/agent/metrics.js";
import { type DriftWatch, Repairer, type RepairReport, startDriftWatch } from "../../src/agent/repair.js";
import type { LocalService } from "../../src/agent/service.js";
import type { Authenticator } from "../../src/agent/types.js";
import { collectStatus } from "../../src/app/status.js";
import { emptyPolicy } from "../../src/core/policy.js";
import { run, sleep } from "../../src/lab/exec.js";
import { createLab, type Lab } from "../../src/lab/topology.js";
import { labService } from "../helpers/lab-service.js";
import { closeLab, domainXml, type Harness, harness, SKIP_NOT_ROOT, uuidFor } from "../helpers/netns.js";

const PROMETHEUS = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"].find((p) => existsSync(p));
const MISSING =
  "the prometheus binary is missing: run `bash scripts/setup.sh` (it installs Debian's prometheus package; CI does)";

/** The guest's limits, libvirt units (kB/s): 10 Mbit/s download, 20 Mbit/s upload. */
const INBOUND_KBPS = 1250;
const OUTBOUND_KBPS = 2500;

// Not skipped when the binary is missing: a missing prometheus must show as a failure.
test("the prometheus binary is installed", () => {
  assert.ok(PROMETHEUS, MISSING);
});

interface PromSample {
  metric: Record<string, string>;
  value: [number, string];
}

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((resolve, reject) => {
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => resolve());
  });
  const { port } = srv.address() as AddressInfo;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

/** Waits until `fn` returns something other than undefined; fails with `what` and the last value seen. */
async function until<T>(
  what: string,
  fn: () => Promise<T | undefined>,
  ms: number,
  last?: () => string,
): Promise<T> {
  const deadline = Date.now() + ms;
  let error = "";
  for (;;) {
    try {
      const v = await fn();
      if (v !== undefined) return v;
    } catch (e) {
      error = (e as Error).message;
    }
    if (Date.now() > deadline) {
      assert.fail(
        `${what}: not within ${ms} ms${error ? ` (last error: ${error})` : ""}${last ? `; ${last()}` : ""}`,
      );
    }
    await sleep(250);
  }
}

describe("a real Prometheus server scrapes the agent's /metrics", { skip: SKIP_NOT_ROOT }, () => {
  let lab: Lab | undefined;
  let h: Harness | undefined;
  let dir: string | undefined;
  let service: LocalService;
  let api: FastifyInstance | undefined;
  let drift: DriftWatch | undefined;
  let prom: ChildProcess | undefined;
  let promExit: Promise<void> | undefined;
  const promLog: string[] = [];
  let agentPort = 0;
  let promBase = "";
  const repairs: RepairReport[] = [];
  const uuid = uuidFor("prom1");
  const pol = emptyPolicy();
  const log = createLogger({ level: "info", target: "silent" });

  const promTail = () => `prometheus said: ${promLog.join("").split("\n").slice(-15).join("\n")}`;

  async function promApi<T>(path: string): Promise<T> {
    const r = await fetch(`${promBase}${path}`);
    const body = (await r.json()) as { status: string; data: T; error?: string };
    assert.equal(body.status, "success", `${path}: ${body.error ?? r.status}`);
    return body.data;
  }

  async function query(q: string): Promise<PromSample[]> {
    const data = await promApi<{ resultType: string; result: PromSample[] }>(
      `/api/v1/query?query=${encodeURIComponent(q)}`,
    );
    assert.equal(data.resultType, "vector", q);
    return data.result;
  }

  /** The value Prometheus has for the one series `q` selects, once it has exactly one. */
  const oneValue = async (q: string): Promise<number | undefined> => {
    const r = await query(q);
    return r.length === 1 ? Number(r[0].value[1]) : undefined;
  };

  before(async () => {
    assert.ok(PROMETHEUS, MISSING);
    // A lab of our own: vqprom + 2 random base-36 characters (a taken name: another try).
    for (let attempt = 0; !lab; attempt++) {
      const id = `vqprom${Math.floor(Math.random() * 1296)
        .toString(36)
        .padStart(2, "0")}`;
      try {
        lab = await createLab({ id, guests: [{ name: "prom1" }] });
      } catch (e) {
        if (attempt >= 5 || !/File exists/i.test((e as Error).message)) throw e;
      }
    }
    h = await harness(lab);
    dir = mkdtempSync(join(tmpdir(), "vqprom-"));
    const stateDir = join(dir, "state");
    const [g] = lab.guests;

    // The agent, wired as startAgent() wires it, with the lab's domains instead of libvirt's.
    const harnessNow = h;
    let svc: LocalService | undefined;
    const metrics = new Metrics({
      rows: () => collectStatus(harnessNow.runner, harnessNow.runDir, harnessNow.caps, pol),
      health: () => (svc as LocalService).health(),
      log,
    });
    const { service: s, source } = labService(h, stateDir, pol, { metrics });
    svc = s;
    service = s;
    source.add(
      "prom1",
      uuid,
      domainXml("prom1", uuid, [
        {
          guest: g,
          bridge: lab.bridge,
          inbound: { average: INBOUND_KBPS },
          outbound: { average: OUTBOUND_KBPS },
        },
      ]),
    );
    await service.reapply(uuid);
    assert.equal(service.health().lastReconcile?.ok, true, "prom1 shaped");
    const repairer = new Repairer({
      service,
      runner: h.runner,
      runDir: h.runDir,
      stateDir,
      policy: async () => pol,
      caps: h.caps,
      log,
      metrics,
      onRepair: (r) => repairs.push(r),
    });
    drift = startDriftWatch({ repairer, log, netns: lab.hostNs, ovsdb: false, checkIntervalMs: 0 });
    await drift.ready;

    // TCP needs a token: a reader's, from the token store, handed to Prometheus in a file.
    const store = new TokenStore(join(dir, "tokens.yaml"));
    const { token } = store.add("prometheus", "reader");
    const tokenFile = join(dir, "prometheus.token");
    writeFileSync(tokenFile, token, { mode: 0o600 });
    const auth: Authenticator = { authenticate: (headers) => store.authenticate(headers) };
    api = buildApi({ service, auth, log });
    agentPort = (await listenTcp(api, { host: "127.0.0.1", port: 0 })).port;
    const anonymous = await fetch(`http://127.0.0.1:${agentPort}/metrics`);
    assert.equal(anonymous.status, 401, "no token, no metrics");

    const config = join(dir, "prometheus.yml");
    // JSON is YAML.
    writeFileSync(
      config,
      JSON.stringify(
        {
          global: { scrape_interval: "1s", scrape_timeout: "1s", evaluation_interval: "1s" },
          scrape_configs: [
            {
              job_name: "virtqos",
              metrics_path: "/metrics",
              authorization: { type: "Bearer", credentials_file: tokenFile },
              static_configs: [{ targets: [`127.0.0.1:${agentPort}`] }],
            },
          ],
        },
        null,
        2,
      ),
    );
    // A free port may be taken between the check and Prometheus's bind: then again with another.
    for (let attempt = 0; ; attempt++) {
      const port = await freePort();
      promBase = `http://127.0.0.1:${port}`;
      promLog.length = 0;
      const child = spawn(
        PROMETHEUS as string,
        [
          `--config.file=${config}`,
          `--storage.tsdb.path=${join(dir, `data-${attempt}`)}`,
          `--web.listen-address=127.0.0.1:${port}`,
        ],
        { stdio: ["ignore", "pipe", "pipe"] },
      );
      prom = child;
      const keep = (b: Buffer) => {
        promLog.push(b.toString("utf8"));
        if (promLog.length > 200) promLog.splice(0, promLog.length - 200);
      };
      child.stdout?.on("data", keep);
      child.stderr?.on("data", keep);
      let exited = false;
      promExit = new Promise<void>((resolve) => {
        child.once("exit", () => {
          exited = true;
          resolve();
        });
        child.once("error", (e) => {
          promLog.push(`spawn: ${e.message}`);
          exited = true;
          resolve();
        });
      });
      const ready = await until(
        "Prometheus ready (/-/ready)",
        async () => {
          if (exited) return "exited";
          const r = await fetch(`${promBase}/-/ready`);
          return r.status === 200 ? "ready" : undefined;
        },
        30_000,
        promTail,
      );
      if (ready === "ready") break;
      const why = promTail();
      if (attempt >= 2 || !/address already in use/i.test(why))
        assert.fail(`prometheus exited at start: ${why}`);
    }
  });

  after(async () => {
    if (prom && prom.exitCode === null && prom.signalCode === null) {
      prom.kill("SIGTERM");
      const stopped = await Promise.race([promExit?.then(() => true), sleep(10_000).then(() => false)]);
      if (!stopped) {
        prom.kill("SIGKILL");
        await promExit;
      }
    }
    await api?.close();
    await drift?.close();
    await closeLab(lab, h);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("the target is up: Prometheus scrapes /metrics with the bearer token", async (t) => {
    const t0 = performance.now();
    const target = await until(
      "the virtqos target up in /api/v1/targets",
      async () => {
        const data = await promApi<{
          activeTargets: {
            labels: Record<string, string>;
            health: string;
            lastError: string;
            scrapeUrl: string;
          }[];
        }>("/api/v1/targets?state=active");
        const tg = data.activeTargets.find((x) => x.labels.job === "virtqos");
        return tg?.health === "up" ? tg : undefined;
      },
      30_000,
      promTail,
    );
    t.diagnostic(`target up ${(performance.now() - t0).toFixed(0)} ms after Prometheus was ready`);
    assert.equal(target.scrapeUrl, `http://127.0.0.1:${agentPort}/metrics`);
    assert.equal(target.lastError, "");
    assert.equal(await until("up{job=virtqos}", () => oneValue('up{job="virtqos"}'), 10_000), 1);
  });

  test("the configured rates of both directions (bits/s) and in_force 1, as virtqos configured them", async () => {
    assert.ok(h && lab);
    const [g] = lab.guests;
    const rows = await collectStatus(h.runner, h.runDir, h.caps, pol);
    const configured = Object.fromEntries(rows.map((r) => [r.direction, r.configured.rateBitsPerSec]));
    // What virtqos configured: libvirt's kB/s x 8000, in its state record and the kernel.
    assert.deepEqual(configured, { inbound: INBOUND_KBPS * 8000, outbound: OUTBOUND_KBPS * 8000 });
    assert.ok(rows.every((r) => r.matches));
    for (const direction of ["inbound", "outbound"] as const) {
      const sel = `{domain="prom1",direction="${direction}"}`;
      const rate = await until(
        `rate ${direction}`,
        () => oneValue(`virtqos_limit_rate_bits_per_second${sel}`),
        10_000,
      );
      assert.equal(rate, configured[direction], `${direction} rate`);
      const [series] = await query(`virtqos_limit_rate_bits_per_second${sel}`);
      assert.equal(series.metric.domain_uuid, uuid);
      assert.equal(series.metric.dev, g.tap);
      assert.equal(series.metric.mac, g.mac);
      assert.equal(series.metric.source, "bandwidth");
      assert.equal(series.metric.job, "virtqos");
      assert.equal(await oneValue(`virtqos_limit_ceil_bits_per_second${sel}`), configured[direction]);
      assert.equal(await oneValue(`virtqos_in_force${sel}`), 1, `${direction} in force`);
    }
    assert.equal(await oneValue("virtqos_contested_objects"), 0);
    assert.equal(await oneValue('virtqos_libvirt_connected{job="virtqos"}'), 1);
  });

  test("a drift repair: Prometheus sees the counter go to 1 and in_force back at 1", async (t) => {
    assert.ok(lab);
    const [g] = lab.guests;
    const counter = 'virtqos_drift_repairs_total{cause="tc qdisc del"}';
    assert.deepEqual(await query(counter), [], "no repair yet");
    const before = repairs.length;
    await run("tc", ["-n", lab.hostNs, "qdisc", "del", "dev", g.tap, "root"]);
    const report = await until(
      "the repair",
      async () => repairs.slice(before).find((r) => r.domainUuid === uuid),
      10_000,
    );
    assert.ok(report.ok, JSON.stringify(report));
    assert.equal(report.cause, "tc qdisc del");
    const t0 = performance.now();
    const seen = await until(
      `${counter} = 1 in Prometheus`,
      async () => ((await oneValue(counter)) === 1 ? 1 : undefined),
      15_000,
    );
    t.diagnostic(`Prometheus had the repair ${(performance.now() - t0).toFixed(0)} ms after it finished`);
    assert.equal(seen, 1);
    assert.equal(await oneValue(`sum(virtqos_drift_repairs_total{job="virtqos"})`), 1, "no other repair");
    for (const direction of ["inbound", "outbound"]) {
      const sel = `{domain="prom1",direction="${direction}"}`;
      assert.equal(
        await until(
          `in_force ${direction} = 1`,
          async () => ((await oneValue(`virtqos_in_force${sel}`)) === 1 ? 1 : undefined),
          15_000,
        ),
        1,
      );
      assert.equal(
        await oneValue(`virtqos_limit_rate_bits_per_second${sel}`),
        (direction === "inbound" ? INBOUND_KBPS : OUTBOUND_KBPS) * 8000,
        `${direction}: the same rate after the repair`,
      );
    }
  });
});
