/**
 * The agent's Prometheus metrics (src/agent/metrics.ts) on real tc in a namespace lab: two shaped guests (one
 * with its own limits, one a group member with a floor), the interface metrics read through collectStatus
 * against the lab's run dir, the agent's health from a real LocalService. The exposition is checked by the
 * real `promtool check metrics`, the counters against real traffic, and the Grafana dashboard's queries by
 * `promtool check rules`. A synthetic 1000-tap scrape is timed and sized (reported as diagnostics).
 *   node --import tsx --test test/integration/metrics.test.ts
 * Needs promtool (Debian package `prometheus`), iperf3 and root for the lab.
 */

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { createLogger } from "../../src/adapters/log.js";
import { Metrics, renderInterfaces } from "../../src/agent/metrics.js";
import { LocalService } from "../../src/agent/service.js";
import type { Health } from "../../src/agent/types.js";
import { collectStatus, type StatusRow } from "../../src/app/status.js";
import { runTransfers } from "../../src/lab/iperf.js";
import { MemorySource } from "../../src/lab/memory-source.js";
import type { Lab } from "../../src/lab/topology.js";
import {
  applyXml,
  closeLab,
  domainXml,
  type Harness,
  openLab,
  policy,
  SKIP_NOT_ROOT,
  uuidFor,
} from "../helpers/netns.js";
import { WEB_MEMBER_BETA } from "../helpers/seed-policies.js";

const DASHBOARD = fileURLToPath(new URL("../../docs/grafana/virtqos-dashboard.json", import.meta.url));
const PROMTOOL = ["/usr/bin/promtool", "/usr/local/bin/promtool"].find((p) => existsSync(p));
const SKIP_NO_PROMTOOL = PROMTOOL ? false : "promtool is missing: apt-get install -y prometheus";

function promtool(args: string[], input = ""): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(PROMTOOL ?? "promtool", args, { stdio: ["pipe", "pipe", "pipe"] });
    const chunks: Buffer[] = [];
    child.stdout.on("data", (b: Buffer) => chunks.push(b));
    child.stderr.on("data", (b: Buffer) => chunks.push(b));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, output: Buffer.concat(chunks).toString("utf8") }));
    child.stdin.end(input);
  });
}

/**
 * promtool's unit lint wants bytes, but limits are set, read and compared in bits per second everywhere in
 * virtqos (libvirt, tc, the policy file), so those names keep bits (docs/observability.md). Nothing else may
 * be flagged.
 */
const ACCEPTED_LINT =
  /^virtqos_limit_(rate|ceil|floor)_bits_per_second use base unit "bytes" instead of "bits"$/;

async function assertPromtoolClean(text: string): Promise<void> {
  const r = await promtool(["check", "metrics"], text);
  const problems = r.output
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l && !ACCEPTED_LINT.test(l));
  assert.deepEqual(problems, [], `promtool check metrics (exit ${r.code}):\n${r.output}`);
  // 3 = lint findings (only the accepted ones, as checked above); 1 would be a parse error.
  assert.ok(r.code === 0 || r.code === 3, `promtool check metrics exited ${r.code}:\n${r.output}`);
}

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The text exposition's samples (HELP and TYPE lines skipped), label values unescaped. */
function parseExposition(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(m, `not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[l[1]] = l[2].replace(/\\(.)/g, (_, c: string) => (c === "n" ? "\n" : c));
    }
    out.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return out;
}

function pick(samples: Sample[], name: string, labels: Record<string, string> = {}): Sample[] {
  return samples.filter(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
}

/** The one sample of `name` with these labels (and maybe more). */
function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const found = pick(samples, name, labels);
  assert.equal(found.length, 1, `${name}${JSON.stringify(labels)}: ${found.length} samples`);
  return found[0].value;
}

const IFACE_KEYS = ["dev", "direction", "domain", "domain_uuid", "mac"];
const LIMIT_KEYS = [...IFACE_KEYS, "group", "source"].sort();

const POLICY = WEB_MEMBER_BETA;

describe(
  "metrics of a namespace lab (real tc, real promtool)",
  { skip: SKIP_NOT_ROOT || SKIP_NO_PROMTOOL },
  () => {
    let lab: Lab;
    let h: Harness;
    let stateDir: string;
    let service: LocalService;
    let metrics: Metrics;
    let reads = 0;
    const libvirt: Health["libvirt"] = { connected: true, uri: "test:///lab" };
    const pol = policy(POLICY);
    const uuids = { alpha: uuidFor("alpha"), beta: uuidFor("beta") };
    const status = () => collectStatus(h.runner, h.runDir, h.caps, pol);

    before(async () => {
      ({ lab, h } = await openLab({ guests: [{ name: "alpha" }, { name: "beta" }] }));
      const [a, b] = lab.guests;
      const source = new MemorySource();
      // alpha: 10 Mbit/s down; 5 Mbit/s up with a 10 Mbit/s peak (libvirt units, kB/s). beta: the group's member.
      const xml = {
        alpha: domainXml("alpha", uuids.alpha, [
          {
            guest: a,
            bridge: lab.bridge,
            inbound: { average: 1250 },
            outbound: { average: 625, peak: 1250, burst: 64 },
          },
        ]),
        beta: domainXml("beta", uuids.beta, [{ guest: b, bridge: lab.bridge }]),
      };
      for (const name of ["alpha", "beta"] as const) {
        const r = await applyXml(h, [xml[name]], pol);
        assert.equal(r.failure, undefined, r.failure?.message);
        assert.deepEqual(r.plan.problems, []);
        source.add(name, uuids[name], xml[name]);
      }
      stateDir = mkdtempSync(join(tmpdir(), "virtqos-metrics-"));
      service = new LocalService({
        source,
        runner: h.runner,
        runDir: h.runDir,
        stateDir,
        log: createLogger({ level: "info", target: "silent" }),
        policy: async () => pol,
        caps: h.caps,
        libvirtState: () => ({ ...libvirt }),
      });
      metrics = new Metrics({
        rows: () => {
          reads++;
          return status();
        },
        health: () => service.health(),
      });
    });
    after(async () => {
      await closeLab(lab, h);
      if (stateDir) rmSync(stateDir, { recursive: true, force: true });
    });

    test("the exposition passes promtool check metrics", async () => {
      const r = await metrics.render();
      assert.match(r.contentType, /^text\/plain; version=0\.0\.4/);
      await assertPromtoolClean(r.body);
    });

    test("limits, labels and in_force per guest interface and direction, as virtqos status has them", async () => {
      const s = parseExposition((await metrics.render()).body);
      const rows = await status();
      assert.equal(rows.length, 4);
      for (const row of rows) {
        const id = {
          domain: row.guest,
          domain_uuid: row.domainUuid,
          mac: row.mac,
          dev: row.dev ?? "",
          direction: row.direction,
        };
        const rate = pick(s, "virtqos_limit_rate_bits_per_second", id);
        assert.equal(rate.length, 1, `${row.guest} ${row.direction}: one rate series`);
        assert.deepEqual(Object.keys(rate[0].labels).sort(), LIMIT_KEYS);
        assert.equal(rate[0].labels.source, row.configured.source);
        assert.equal(rate[0].labels.group, row.group ?? "");
        assert.equal(rate[0].value, row.configured.rateBitsPerSec);
        assert.equal(value(s, "virtqos_limit_ceil_bits_per_second", id), row.configured.ceilBitsPerSec);
        assert.equal(value(s, "virtqos_in_force", id), 1);
        for (const name of [
          "virtqos_sent_bytes_total",
          "virtqos_sent_packets_total",
          "virtqos_dropped_packets_total",
          "virtqos_overlimits_total",
          "virtqos_in_force",
        ]) {
          const [x] = pick(s, name, id);
          assert.ok(x, `${name} for ${row.guest} ${row.direction}`);
          assert.deepEqual(Object.keys(x.labels).sort(), IFACE_KEYS, name);
        }
      }
      const alpha = (direction: string) => ({ domain: "alpha", direction });
      const beta = (direction: string) => ({ domain: "beta", direction });
      assert.equal(value(s, "virtqos_limit_rate_bits_per_second", alpha("inbound")), 10e6);
      assert.equal(value(s, "virtqos_limit_ceil_bits_per_second", alpha("inbound")), 10e6);
      assert.equal(value(s, "virtqos_limit_rate_bits_per_second", alpha("outbound")), 5e6);
      assert.equal(value(s, "virtqos_limit_ceil_bits_per_second", alpha("outbound")), 10e6);
      assert.equal(pick(s, "virtqos_limit_floor_bits_per_second", { domain: "alpha" }).length, 0, "no floor");
      for (const d of ["inbound", "outbound"]) {
        assert.equal(value(s, "virtqos_limit_rate_bits_per_second", beta(d)), 30e6);
        assert.equal(value(s, "virtqos_limit_floor_bits_per_second", beta(d)), 15e6);
        assert.equal(pick(s, "virtqos_limit_rate_bits_per_second", beta(d))[0].labels.group, "host/web");
      }
      assert.equal(
        pick(s, "virtqos_limit_rate_bits_per_second", alpha("inbound"))[0].labels.source,
        "bandwidth",
      );
      assert.equal(pick(s, "virtqos_limit_rate_bits_per_second", { dev: lab.guests[0].tap }).length, 2);
    });

    test("counters follow the kernel's: they grow with real traffic, drops and overlimits over the limit", async () => {
      const [a, b] = lab.guests;
      await new Promise((r) => setTimeout(r, 1100)); // past the cache
      const before = parseExposition((await metrics.render()).body);
      // alpha's download: UDP at twice its 10 Mbit/s, so its shaper drops; beta's upload: TCP under its group.
      const t0 = performance.now();
      await runTransfers(lab, [
        { guest: a, direction: "download", protocol: "udp", seconds: 2, udpRateBitsPerSec: 20e6 },
        { guest: b, direction: "upload", protocol: "tcp", seconds: 2 },
      ]);
      const seconds = (performance.now() - t0) / 1000;
      const afterText = (await metrics.render()).body;
      const after = parseExposition(afterText);
      const delta = (name: string, labels: Record<string, string>) =>
        value(after, name, labels) - value(before, name, labels);
      const alphaIn = { domain: "alpha", direction: "inbound" };
      const sentBits = delta("virtqos_sent_bytes_total", alphaIn) * 8;
      // At least 1.5 s worth of its limit went through, and no more than the whole run at the limit plus a burst.
      assert.ok(sentBits >= 1.5 * 10e6, `alpha inbound sent ${sentBits} bits in ${seconds.toFixed(1)} s`);
      assert.ok(
        sentBits <= seconds * 10e6 * 1.1 + 8e6,
        `alpha inbound sent ${sentBits} bits: over its limit`,
      );
      assert.ok(delta("virtqos_sent_packets_total", alphaIn) > 1000, "alpha inbound packets");
      assert.ok(delta("virtqos_dropped_packets_total", alphaIn) > 0, "alpha inbound drops at 2x its limit");
      assert.ok(delta("virtqos_overlimits_total", alphaIn) > 0, "alpha inbound overlimits");
      const betaOut = { domain: "beta", direction: "outbound" };
      assert.ok(
        delta("virtqos_sent_bytes_total", betaOut) * 8 >= 1.5 * 15e6,
        "beta outbound sent its floor's worth",
      );
      for (const s of pick(after, "virtqos_sent_bytes_total")) {
        assert.ok(value(before, s.name, s.labels) <= s.value, `${JSON.stringify(s.labels)} went back`);
      }
      await assertPromtoolClean(afterText);
    });

    test("agent metrics: recorded events, health read at scrape time, process metrics", async () => {
      metrics.driftRepaired("qdisc-deleted");
      metrics.driftRepaired("qdisc-deleted");
      metrics.driftRepaired("filter-changed");
      metrics.setContested(2);
      metrics.liveChange("api", "ok");
      metrics.liveChange("api", "ok");
      metrics.liveChange("nova", "refused");
      metrics.observeReconcile(0.03);
      metrics.observeReconcile(2);
      libvirt.connected = false;
      let s = parseExposition((await metrics.render()).body);
      assert.equal(value(s, "virtqos_drift_repairs_total", { cause: "qdisc-deleted" }), 2);
      assert.equal(value(s, "virtqos_drift_repairs_total", { cause: "filter-changed" }), 1);
      assert.equal(value(s, "virtqos_contested_objects"), 2);
      assert.equal(value(s, "virtqos_live_changes_total", { door: "api", result: "ok" }), 2);
      assert.equal(value(s, "virtqos_live_changes_total", { door: "nova", result: "refused" }), 1);
      assert.equal(
        value(s, "virtqos_live_changes_total", { door: "cli", result: "failed" }),
        0,
        "pre-set at 0",
      );
      assert.equal(value(s, "virtqos_reconcile_duration_seconds_count"), 2);
      assert.ok(Math.abs(value(s, "virtqos_reconcile_duration_seconds_sum") - 2.03) < 1e-9);
      assert.equal(value(s, "virtqos_reconcile_duration_seconds_bucket", { le: "0.05" }), 1);
      assert.equal(value(s, "virtqos_reconcile_duration_seconds_bucket", { le: "2.5" }), 2);
      assert.equal(value(s, "virtqos_libvirt_connected"), 0);
      assert.equal(value(s, "virtqos_queue_depth"), 0);
      assert.ok(value(s, "virtqos_agent_uptime_seconds") >= 0);
      assert.ok(value(s, "process_resident_memory_bytes") > 10e6, "RSS");
      assert.ok(value(s, "process_cpu_user_seconds_total") > 0, "CPU");
      assert.ok(value(s, "virtqos_status_read_duration_seconds") > 0);
      assert.equal(value(s, "virtqos_status_read_errors_total"), 0);
      libvirt.connected = true;
      metrics.setContested(0);
      s = parseExposition((await metrics.render()).body);
      assert.equal(value(s, "virtqos_libvirt_connected"), 1, "health is not cached with the interfaces");
      assert.equal(value(s, "virtqos_contested_objects"), 0);
    });

    test("one read of the kernel per second, shared by concurrent scrapes", async () => {
      let clock = 0;
      let n = 0;
      const m = new Metrics({
        rows: () => {
          n++;
          return status();
        },
        now: () => clock,
        processMetrics: false,
      });
      const bodies = await Promise.all([m.render(), m.render(), m.render(), m.render()]);
      assert.equal(n, 1, "four concurrent scrapes, one read");
      assert.ok(bodies.every((b) => b.body === bodies[0].body));
      clock += 999;
      await m.render();
      assert.equal(n, 1, "within the second: the cached read");
      clock += 2;
      await m.render();
      assert.equal(n, 2, "a second later: read again");
      assert.ok(reads >= 3, "the lab's metrics read at each scrape past the cache");
    });
  },
);

/** 1000 shaped taps, both directions limited: what the agent's status read hands to render(). */
function syntheticRows(taps: number): StatusRow[] {
  const rows: StatusRow[] = [];
  for (let i = 0; i < taps; i++) {
    const hex = i.toString(16).padStart(4, "0");
    for (const direction of ["inbound", "outbound"] as const) {
      rows.push({
        guest: `instance-${hex.padStart(8, "0")}`,
        domainUuid: `5b0f4c3e-9a1d-4e7b-8c2a-0000000${hex.padStart(5, "0")}`,
        mac: `fa:16:3e:00:${hex.slice(0, 2)}:${hex.slice(2)}`,
        dev: `tap${hex}-3c1a9e`,
        direction,
        group: i % 4 === 0 ? "host/tenant-a" : undefined,
        configured: {
          rateBitsPerSec: 100e6,
          ceilBitsPerSec: i % 2 ? 200e6 : 100e6,
          floorBitsPerSec: i % 4 === 0 ? 20e6 : undefined,
          source: i % 4 === 0 ? "group host/tenant-a (select)" : "policy",
          mode: "shape",
        },
        bytes: 123_456_789_012 + i,
        packets: 98_765_432 + i,
        drops: i,
        overlimits: 10 * i,
        matches: i % 100 !== 7,
        generation: 3,
      });
    }
  }
  return rows;
}

describe("metrics without a lab", () => {
  test("1000 shaped taps: the cost of one scrape (time, size), and promtool still passes", async (t) => {
    const rows = syntheticRows(1000);
    let served = 0;
    const m = new Metrics({
      rows: async () => {
        served++;
        return rows;
      },
      cacheMs: 0, // every scrape pays for the interface families, as each one past the cache does
      health: () => ({
        libvirt: { connected: true, uri: "qemu:///system" },
        queueDepth: 0,
        uptimeSeconds: 60,
      }),
    });
    await m.render(); // warm-up: JIT, prom-client's first collect
    const times: number[] = [];
    let body = "";
    for (let i = 0; i < 20; i++) {
      const t0 = performance.now();
      body = (await m.render()).body;
      times.push(performance.now() - t0);
    }
    times.sort((a, b) => a - b);
    const median = times[times.length >> 1];
    const bytes = Buffer.byteLength(body);
    const series = body.split("\n").filter((l) => l && !l.startsWith("#")).length;
    const gzipped = (await import("node:zlib")).gzipSync(body).length;
    t.diagnostic(
      `1000 taps (${rows.length} rows): render() median ${median.toFixed(1)} ms (min ${times[0].toFixed(1)}, max ${times.at(-1)?.toFixed(1)}), ${bytes} bytes (${gzipped} gzipped), ${series} samples`,
    );
    const renderOnly: number[] = [];
    for (let i = 0; i < 20; i++) {
      const t0 = performance.now();
      renderInterfaces(rows);
      renderOnly.push(performance.now() - t0);
    }
    renderOnly.sort((a, b) => a - b);
    t.diagnostic(`of which the interface families: median ${renderOnly[10].toFixed(1)} ms`);
    assert.equal(served, 21, "one read per scrape with cacheMs 0");
    // 8 families x 2000 rows, less the floors of the 3 in 4 taps that are not group members.
    assert.equal(pick(parseExposition(body), "virtqos_limit_floor_bits_per_second").length, 500);
    assert.equal(pick(parseExposition(body), "virtqos_in_force").length, 2000);
    // Generous: a loaded 2-CPU test machine; the point is the order of magnitude (tens of ms, not seconds).
    assert.ok(median < 1000, `a scrape of 1000 taps took ${median.toFixed(0)} ms`);
    if (PROMTOOL) await assertPromtoolClean(body);
  });

  test(
    "label values with quotes, backslashes and newlines are escaped",
    { skip: SKIP_NO_PROMTOOL },
    async () => {
      const [row] = syntheticRows(1);
      const odd = { ...row, guest: 'we"ird\\name\nx', configured: { ...row.configured, source: 'a "b"' } };
      const m = new Metrics({ rows: async () => [odd], processMetrics: false });
      const body = (await m.render()).body;
      await assertPromtoolClean(body);
      const [s] = pick(parseExposition(body), "virtqos_limit_rate_bits_per_second");
      assert.equal(s.labels.domain, odd.guest);
      assert.equal(s.labels.source, 'a "b"');
    },
  );

  test("a failed read: counted, the interface series gone, the agent's still there", async () => {
    let fail = false;
    const warnings: string[] = [];
    const log = {
      ...createLogger({ level: "info", target: "silent" }),
      warning: (m: string) => warnings.push(m),
    };
    const m = new Metrics({
      rows: async () => {
        if (fail) throw new Error("tc: Cannot find device");
        return syntheticRows(2);
      },
      cacheMs: 0,
      processMetrics: false,
      log,
    });
    let s = parseExposition((await m.render()).body);
    assert.equal(pick(s, "virtqos_in_force").length, 4);
    fail = true;
    s = parseExposition((await m.render()).body);
    assert.equal(pick(s, "virtqos_in_force").length, 0, "no stale interface numbers");
    assert.equal(value(s, "virtqos_status_read_errors_total"), 1);
    assert.equal(pick(s, "virtqos_live_changes_total").length, 18);
    assert.match(warnings.join("\n"), /Cannot find device/);
    fail = false;
    s = parseExposition((await m.render()).body);
    assert.equal(pick(s, "virtqos_in_force").length, 4, "back after the next good read");
  });

  test("the Grafana dashboard: valid JSON, its queries parse (promtool) and use only these metrics", async (t) => {
    const dash = JSON.parse(readFileSync(DASHBOARD, "utf8")) as {
      schemaVersion: number;
      uid: string;
      title: string;
      templating: { list: { name: string; query?: unknown }[] };
      panels: {
        id: number;
        type: string;
        title: string;
        gridPos: { x: number; y: number; w: number; h: number };
        targets?: { expr: string; refId: string }[];
      }[];
    };
    assert.ok(dash.schemaVersion >= 36 && dash.schemaVersion <= 41, `schemaVersion ${dash.schemaVersion}`);
    assert.ok(dash.uid && dash.title);
    const ids = dash.panels.map((p) => p.id);
    assert.equal(new Set(ids).size, ids.length, "panel ids are unique");
    for (const p of dash.panels) {
      assert.ok(p.gridPos.x + p.gridPos.w <= 24, `${p.title}: wider than the grid`);
      if (p.type !== "row") assert.ok(p.targets?.length, `${p.title}: no query`);
    }
    // Every metric a query names must be one Metrics exports.
    const m = new Metrics({
      rows: async () => syntheticRows(4),
      health: () => ({ libvirt: { connected: true, uri: "" }, queueDepth: 0, uptimeSeconds: 1 }),
    });
    // From the TYPE lines: a family with no sample yet (no drift repaired) is exported all the same.
    const exported = new Set<string>();
    for (const [, name, type] of (await m.render()).body.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
      exported.add(name);
      if (type === "histogram") for (const x of ["_bucket", "_sum", "_count"]) exported.add(`${name}${x}`);
    }
    const exprs = dash.panels.flatMap((p) =>
      (p.targets ?? []).map((x) => ({ panel: p.title, expr: x.expr })),
    );
    for (const v of dash.templating.list) {
      const q = v.query as { query?: string } | string | undefined;
      const text = typeof q === "string" ? q : q?.query;
      if (text?.startsWith("label_values(")) {
        const metric = /^label_values\(([a-z_]+)/.exec(text)?.[1];
        assert.ok(metric && exported.has(metric), `variable ${v.name}: ${text}`);
      }
    }
    for (const { panel, expr } of exprs) {
      for (const name of expr.match(/\b(virtqos|process|nodejs)_[a-z_]+/g) ?? []) {
        assert.ok(exported.has(name), `${panel}: ${name} is not exported`);
      }
      for (const d of ["inbound", "outbound"])
        assert.ok(!expr.includes(`"${d}"`), `${panel}: hard-codes ${d}`);
    }
    const directions = dash.templating.list.find((v) => v.name === "direction");
    assert.equal(directions?.query, "inbound,outbound");
    if (!PROMTOOL) {
      t.diagnostic("promtool is missing: the queries' syntax was not checked");
      return;
    }
    // PromQL syntax through promtool: each query as a recording rule, Grafana's variables substituted.
    const rules = {
      groups: [
        {
          name: "dashboard",
          rules: exprs.map((x, i) => ({
            record: `dashboard:query_${i}`,
            expr: x.expr
              .replaceAll("$__rate_interval", "1m")
              .replace(/\$(instance|domain|direction)\b/g, ".*"),
          })),
        },
      ],
    };
    const dir = mkdtempSync(join(tmpdir(), "virtqos-dashboard-"));
    try {
      const file = join(dir, "rules.json"); // JSON is YAML: promtool reads it as is
      writeFileSync(file, JSON.stringify(rules));
      const r = await promtool(["check", "rules", file]);
      assert.equal(r.code, 0, r.output);
      t.diagnostic(`${exprs.length} dashboard queries parse`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
