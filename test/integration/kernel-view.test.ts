import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { BatchSession } from "../../src/adapters/batch-session.js";
import { onChildSpawn } from "../../src/adapters/exec.js";
import { observe } from "../../src/adapters/kernel.js";
import { type KernelWatch, watchKernel } from "../../src/adapters/kernel-watch.js";
import { loadRecords, loadRecordsOf } from "../../src/adapters/state.js";
import { KernelView } from "../../src/agent/kernel-view.js";
import type { LocalService } from "../../src/agent/service.js";
import type { Principal } from "../../src/agent/types.js";
import { parseDomainXml } from "../../src/core/domain-xml.js";
import { resolveDomain } from "../../src/core/resolve.js";
import { run } from "../../src/lab/exec.js";
import type { MemorySource } from "../../src/lab/memory-source.js";
import type { Lab } from "../../src/lab/topology.js";
import { captureLog, type LogLine } from "../helpers/capture-log.js";
import { labService } from "../helpers/lab-service.js";
import {
  closeLab,
  domainXml,
  type Harness,
  openLab,
  policy,
  SKIP_NOT_ROOT,
  uuidFor,
} from "../helpers/netns.js";

// The agent's kernel view (src/agent/kernel-view.ts) on real tc in a namespace lab: what it reads for one
// domain equals what observe() reads; live changes go through its open tc and ip, not a process each; a cache
// entry the kernel watch has not yet corrected makes the change fail in the kernel and be made again on a full
// read; a kernel event drops the entry.

const OP: Principal = { name: "test-operator", role: "operator", via: "token" };

/** `rate` of the tap's HTB class 7651:1, from tc's text ("rate 20Mbit"). */
async function classRate(ns: string, dev: string): Promise<string | undefined> {
  const r = await run("tc", ["-n", ns, "class", "show", "dev", dev]);
  return /class htb 7651:1 .*?\brate (\S+)/.exec(r.stdout)?.[1];
}

async function until(what: string, ok: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("the agent's kernel view (namespace lab, real tc)", { skip: SKIP_NOT_ROOT }, () => {
  let lab: Lab;
  let h: Harness;
  let stateDir: string;
  let source: MemorySource;
  let service: LocalService;
  let view: KernelView;
  let watch: KernelWatch;
  const logLines: LogLine[] = [];
  const uuids = [uuidFor("kv1"), uuidFor("kv2")];
  const pol = policy(`
domains:
  - name: kv1
    inbound: { average: 10mbit }
    outbound: { average: 10mbit }
  - name: kv2
    inbound: { average: 10mbit }
    outbound: { average: 10mbit }
`);

  before(async () => {
    ({ lab, h } = await openLab({ guests: [{ name: "kv1" }, { name: "kv2" }] }));
    stateDir = mkdtempSync(join(tmpdir(), "virtqos-kview-"));
    view = new KernelView({ runner: h.runner, netns: lab.hostNs });
    ({ service, source } = labService(h, stateDir, pol, { kernelView: view, log: captureLog(logLines) }));
    for (const [i, g] of lab.guests.entries()) {
      source.add(g.name, uuids[i], domainXml(g.name, uuids[i], [{ guest: g, bridge: lab.bridge }]));
      await service.reapply(uuids[i]);
    }
    watch = watchKernel({
      netns: lab.hostNs,
      onEvent: (e) => view.onKernelEvent(e),
      onResync: () => view.onResync(),
    });
    await watch.ready;
    view.enableCache();
  });
  after(async () => {
    await watch?.close();
    view?.close();
    await closeLab(lab, h);
    if (stateDir) rmSync(stateDir, { recursive: true, force: true });
  });

  test("what it reads for one domain equals what observe() reads", async () => {
    const g = lab.guests[0];
    const info = parseDomainXml(domainXml(g.name, uuids[0], [{ guest: g, bridge: lab.bridge }]));
    const desired = resolveDomain(info, pol).interfaces;
    const fast = await view.observeScoped({ desired, scopeUuids: [uuids[0]], runDir: h.runDir });
    assert.ok(fast, "the view read the domain");
    const full = await observe(h.runner, {
      devs: [g.tap],
      records: loadRecords(h.runDir),
      scopeUuids: [uuids[0]],
    });
    assert.deepEqual(fast.records, loadRecordsOf(h.runDir, [uuids[0]]));
    assert.ok(fast.devices.size >= 2, `the tap and its IFB: ${[...fast.devices.keys()].join(", ")}`);
    for (const [dev, d] of fast.devices) {
      assert.deepEqual(d, full.devices.get(dev), `${dev} as observe() reads it`);
      assert.deepEqual(fast.links.get(dev), full.links.get(dev), `${dev}'s link`);
    }
    // The other guest's devices are not read at all.
    assert.ok(!fast.links.has(lab.guests[1].tap));
  });

  test("live changes go through the open tc and ip: no process per change, classes changed in place", async () => {
    const tap = lab.guests[0].tap;
    await service.setInterface("kv1", "1", { inbound: { average: 1875 }, persist: "live" }, OP); // warm
    const spawned: number[] = [];
    const stop = onChildSpawn((pid) => spawned.push(pid));
    const stats = { ...view.stats };
    try {
      for (const [kBps, rate] of [
        [2500, "20Mbit"],
        [625, "5Mbit"],
        [1250, "10Mbit"],
      ] as const) {
        await service.setInterface("kv1", "1", { inbound: { average: kBps }, persist: "live" }, OP);
        assert.equal(await classRate(lab.hostNs, tap), rate);
      }
    } finally {
      stop();
    }
    assert.deepEqual(spawned, [], "no tc or ip process started for a live change");
    assert.equal(view.stats.scoped - stats.scoped, 3);
    assert.equal(view.stats.fallbacks, stats.fallbacks);
    assert.ok(view.stats.qdiscHits > stats.qdiscHits, "qdiscs came from the cache");
  });

  test("the echo of its own change is not handed to the drift repairer; a deletion always is", async () => {
    const tap = lab.guests[0].tap;
    // Past the echo window of every earlier change (before() shaped the other guest through the view too).
    await new Promise((r) => setTimeout(r, 400));
    await service.setInterface("kv1", "1", { inbound: { average: 2500 }, persist: "live" }, OP);
    const ev = (kind: "class-changed" | "qdisc-changed" | "qdisc-deleted", dev = tap) => ({
      at: Date.now(),
      kind,
      dev,
      detail: "",
    });
    assert.equal(view.onKernelEvent(ev("class-changed")), false, "its own class change");
    assert.equal(view.onKernelEvent(ev("qdisc-changed")), false, "its own leaf replace");
    assert.equal(view.onKernelEvent(ev("qdisc-deleted")), true, "a deletion is never an echo");
    assert.equal(view.onKernelEvent(ev("class-changed", lab.guests[1].tap)), true, "another device");
    await new Promise((r) => setTimeout(r, 400));
    assert.equal(view.onKernelEvent(ev("class-changed")), true, "after the echo window");
    await service.reapply(uuids[0]);
  });

  test("a rate change's leaf TBF: the cache takes its new state from the change, and agrees with the kernel", async () => {
    const tap = lab.guests[0].tap;
    await service.setInterface("kv1", "1", { inbound: { average: 1500 }, persist: "live" }, OP);
    const dumps = view.stats.dumps + view.stats.qdiscReads;
    await service.setInterface("kv1", "1", { inbound: { average: 3000 }, persist: "live" }, OP);
    // The echo of the TBF replace has arrived by now, and left the entry alone.
    await new Promise((r) => setTimeout(r, 150));
    assert.ok(view.cached(tap), "still cached after its own change's echo");
    const g = lab.guests[0];
    const info = parseDomainXml(domainXml(g.name, uuids[0], [{ guest: g, bridge: lab.bridge }]));
    const desired = resolveDomain(info, pol).interfaces;
    const fast = await view.observeScoped({ desired, scopeUuids: [uuids[0]], runDir: h.runDir });
    assert.equal(view.stats.dumps + view.stats.qdiscReads, dumps, "no qdisc read for either change");
    const full = await observe(h.runner, {
      devs: [tap],
      records: loadRecords(h.runDir),
      scopeUuids: [uuids[0]],
    });
    const tbf = (o: typeof fast) => o?.devices.get(tap)?.qdiscs.find((q) => q.kind === "tbf");
    const [cachedTbf, kernelTbf] = [tbf(fast), tbf(full)];
    assert.ok(cachedTbf && kernelTbf, "a TBF leaf on the tap");
    assert.equal(cachedTbf.options.rate, kernelTbf.options.rate, "rate (bytes/s) as the kernel has it");
    const lat = [Number(cachedTbf.options.lat), Number(kernelTbf.options.lat)];
    assert.ok(Math.abs(lat[0] - lat[1]) <= Math.max(2, lat[1] * 0.02), `lat ${lat.join(" vs ")} µs`);
    // What a plan makes of it is what it makes of the kernel's own answer.
    const { plan } = await import("../../src/core/plan.js");
    const opts = { leaf: pol.leaf, scope: [uuids[0]], sweep: false, groups: pol.groups };
    assert.ok(fast);
    assert.deepEqual(plan(desired, fast, h.caps, opts).ops, plan(desired, full, h.caps, opts).ops);
    await service.reapply(uuids[0]);
  });

  test("a stale cache entry: the kernel refuses the plan, the change is made again on a full read", async () => {
    const tap = lab.guests[1].tap;
    // A view nobody tells about kernel changes, so its cache goes stale: the root is deleted behind its back.
    const blind = new KernelView({ runner: h.runner, netns: lab.hostNs });
    const lines: LogLine[] = [];
    const { service: svc, source: src } = labService(h, stateDir, pol, {
      kernelView: blind,
      log: captureLog(lines),
    });
    try {
      const g = lab.guests[1];
      src.add(g.name, uuids[1], domainXml(g.name, uuids[1], [{ guest: g, bridge: lab.bridge }]));
      blind.enableCache();
      await svc.setInterface("kv2", "1", { inbound: { average: 2500 }, persist: "live" }, OP);
      assert.equal(await classRate(lab.hostNs, tap), "20Mbit");
      await run("tc", ["-n", lab.hostNs, "qdisc", "del", "dev", tap, "root"]);
      await svc.setInterface("kv2", "1", { inbound: { average: 625 }, persist: "live" }, OP);
      assert.equal(await classRate(lab.hostNs, tap), "5Mbit", "shaped again, at the new rate");
      assert.ok(
        lines.some((l) => /again on a full read/.test(l.msg)),
        `the fallback is logged: ${lines.map((l) => l.msg).join(" | ")}`,
      );
    } finally {
      blind.close();
    }
  });

  test("a kernel event drops the device's cached qdiscs", async () => {
    const tap = lab.guests[0].tap;
    const g = lab.guests[0];
    const desired = resolveDomain(
      parseDomainXml(domainXml(g.name, uuids[0], [{ guest: g, bridge: lab.bridge }])),
      pol,
    ).interfaces;
    await view.observeScoped({ desired, scopeUuids: [uuids[0]], runDir: h.runDir });
    assert.ok(view.cached(tap), "cached after a read");
    await run("tc", ["-n", lab.hostNs, "qdisc", "del", "dev", tap, "root"]);
    await until("the watch's event", () => !view.cached(tap));
    const o = await view.observeScoped({ desired, scopeUuids: [uuids[0]], runDir: h.runDir });
    assert.ok(o);
    assert.ok(!o.devices.get(tap)?.qdiscs.some((q) => q.handle === "7651:"), "the read shows the root gone");
    await service.reapply(uuids[0]);
  });

  test("sessions: a failing line is numbered within its request, the next request starts a fresh tc", async () => {
    const tc = new BatchSession("tc", { netns: lab.hostNs, flags: ["-d", "-j"] });
    const ip = new BatchSession("ip", { netns: lab.hostNs });
    try {
      const tap = lab.guests[0].tap;
      const ok = await tc.run([`class show dev ${tap}`, `filter show dev ${tap} ingress`]);
      assert.equal(ok.code, 0);
      assert.match(ok.stdout, /^class htb 7651:1 /m);
      assert.equal(ok.stdout.split("\n").filter((l) => l.startsWith("[")).length, 1, "one filter answer");
      const bad = await tc.run([`class show dev ${tap}`, "class show dev vqnosuch0"]);
      assert.equal(bad.code, 1);
      assert.match(bad.stderr, /Command failed -:2/);
      const again = await tc.run([`class show dev ${tap}`]);
      assert.equal(again.code, 0);
      assert.equal(tc.starts, 2, "a fresh process after the failure");
      // ip runs with -force: a missing device is an answer, not the end of the session.
      const links = await ip.run(["link show dev vqnosuch0", `link show dev ${tap}`]);
      assert.equal(links.code, 0);
      assert.equal(links.stdout.trim().split("\n").length, 1);
      assert.match(links.stdout, new RegExp(`"ifname":"${tap}"`));
      assert.equal(ip.starts, 1);
    } finally {
      tc.close();
      ip.close();
    }
  });
});
