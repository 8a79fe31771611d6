import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  isVirtqosTcObject,
  MessageReader,
  parseLinkLine,
  parseTcLine,
} from "../../src/adapters/kernel-watch.js";
import { parseMonitorLine, showCell } from "../../src/adapters/ovsdb-watch.js";
import {
  type Batch,
  Coalescer,
  DriftPolicy,
  driftKey,
  OvsSettler,
  type Settled,
  type Timers,
} from "../../src/agent/drift.js";

// The drift policy and the coalescer against a hand-driven clock, and the watches' line parsers against
// lines captured from iproute2 6.1 and ovsdb-client 3.1 (the formats are in the adapters' header comments).

const S = 1000;

function clock(start = 1_000_000) {
  let t = start;
  return {
    now: () => t,
    advance: (ms: number) => {
      t += ms;
    },
  };
}

/** Timers that fire only when the test advances the clock. */
function fakeTimers() {
  let t = 0;
  let seq = 0;
  const pending = new Map<number, { at: number; fn: () => void }>();
  const timers: Timers = {
    now: () => t,
    setTimeout: (fn, ms) => {
      pending.set(++seq, { at: t + ms, fn });
      return seq;
    },
    clearTimeout: (h) => {
      pending.delete(h as number);
    },
  };
  const advance = (ms: number) => {
    const end = t + ms;
    for (;;) {
      const next = [...pending.entries()].filter(([, p]) => p.at <= end).sort((a, b) => a[1].at - b[1].at)[0];
      if (!next) break;
      pending.delete(next[0]);
      t = next[1].at;
      next[1].fn();
    }
    t = end;
  };
  return { timers, advance, pending };
}

describe("DriftPolicy", () => {
  test("a first drift and a first relapse are repaired at once", () => {
    const c = clock();
    const p = new DriftPolicy({ now: c.now });
    const k = driftKey("vnet0", "root");
    assert.equal(k, "vnet0|root");
    assert.deepEqual(p.drift(k, "root qdisc deleted"), {
      action: "repair",
      key: k,
      contested: false,
      newlyContested: false,
    });
    p.repaired(k);
    c.advance(10 * S);
    assert.equal(p.drift(k, "root qdisc deleted").action, "repair");
    p.repaired(k);
    assert.deepEqual(p.contested(), []);
  });

  test("findings before the repair are the same drift, not relapses", () => {
    const c = clock();
    const p = new DriftPolicy({ now: c.now });
    p.drift("d|root", "a");
    p.repaired("d|root");
    // One relapse noticed three times (three events, three checks) before its repair.
    for (let i = 0; i < 3; i++) assert.equal(p.drift("d|root", "b").action, "repair");
    p.repaired("d|root");
    assert.equal(p.isContested("d|root"), false);
  });

  test("two relapses within 60 s make it contested, reported with reasons; repairs back off 1, 2, 4 ... 60 s", () => {
    const c = clock();
    const p = new DriftPolicy({ now: c.now });
    const k = "vnet0|root";
    p.drift(k, "root qdisc deleted");
    p.repaired(k);
    c.advance(5 * S);
    assert.equal(p.drift(k, "root qdisc deleted").action, "repair");
    p.repaired(k);
    c.advance(100);
    const d = p.drift(k, "root qdisc replaced by htb 1:");
    assert.equal(d.action, "later");
    assert.equal(d.contested, true);
    assert.equal(d.newlyContested, true);
    assert.equal(d.action === "later" && d.at, c.now() - 100 + 1 * S);
    const [report] = p.contested();
    assert.equal(report.key, k);
    assert.equal(report.since, c.now());
    assert.equal(report.drifts, 1);
    assert.equal(report.backoffMs, 1 * S);
    assert.equal(report.nextRepairAt, c.now() + 900);
    assert.deepEqual(report.reasons, ["root qdisc deleted", "root qdisc replaced by htb 1:"]);

    // The other party wins every time, right after each repair: the waits double up to 60 s.
    const waits: number[] = [];
    let lastRepair = c.now() - 100;
    for (let i = 0; i < 9; i++) {
      const next = p.nextDue();
      assert.ok(next !== undefined);
      c.advance(next - c.now());
      assert.deepEqual(p.due(), [k]);
      assert.deepEqual(p.due(), [], "a due repair is handed out once");
      waits.push(c.now() - lastRepair);
      p.repaired(k);
      lastRepair = c.now();
      c.advance(50);
      const again = p.drift(k, "root qdisc deleted");
      assert.equal(again.action, "later");
      assert.equal(again.newlyContested, false);
    }
    assert.deepEqual(
      waits.map((w) => w / S),
      [1, 2, 4, 8, 16, 32, 60, 60, 60],
    );
    assert.equal(p.contested()[0].drifts, 10);
  });

  test("a drift long after the last repair of a contested object is repaired at once, still contested", () => {
    const c = clock();
    const p = new DriftPolicy({ now: c.now });
    const k = "t|root";
    for (let i = 0; i < 3; i++) {
      p.drift(k, "x");
      p.repaired(k);
      c.advance(S);
    }
    assert.equal(p.isContested(k), true);
    c.advance(90 * S);
    const d = p.drift(k, "x");
    assert.equal(d.action, "repair");
    assert.equal(d.contested, true);
  });

  test("relapses further apart than 60 s never contest", () => {
    const c = clock();
    const p = new DriftPolicy({ now: c.now });
    for (let i = 0; i < 10; i++) {
      assert.equal(p.drift("a|root", "x").action, "repair");
      p.repaired("a|root");
      c.advance(61 * S);
    }
    assert.deepEqual(p.contested(), []);
  });

  test("5 min without drift ends the contest, and the back-off starts over", () => {
    const c = clock();
    const p = new DriftPolicy({ now: c.now });
    const k = "b|redirect";
    for (let i = 0; i < 3; i++) {
      p.drift(k, "redirect filter deleted");
      p.repaired(k);
      c.advance(S);
    }
    assert.equal(p.isContested(k), true);
    c.advance(4 * 60 * S);
    assert.equal(p.isContested(k), true, "4 min is not enough");
    c.advance(60 * S);
    assert.equal(p.isContested(k), false);
    assert.deepEqual(p.contested(), []);
    // A new relapse is a first one again.
    assert.equal(p.drift(k, "x").action, "repair");
    p.repaired(k);
    assert.equal(p.drift(k, "x").action, "repair");
  });

  test("continued drift keeps it contested past 5 min", () => {
    const c = clock();
    const p = new DriftPolicy({ now: c.now });
    const k = "c|root";
    for (let i = 0; i < 3; i++) {
      p.drift(k, "x");
      p.repaired(k);
      c.advance(S);
    }
    for (let i = 0; i < 10; i++) {
      c.advance(60 * S);
      p.drift(k, "x");
      p.repaired(k);
    }
    assert.equal(p.isContested(k), true);
  });

  test("a failed repair is retried with back-off, without making anything contested", () => {
    const c = clock();
    const p = new DriftPolicy({ now: c.now });
    const k = "d|ifb";
    p.drift(k, "IFB deleted");
    const r1 = p.repaired(k, false);
    assert.equal(r1?.action, "later");
    assert.equal(r1?.action === "later" && r1.at, c.now() + 1 * S);
    // The events its own failed attempt caused: the same drift, still waiting.
    assert.equal(p.drift(k, "IFB deleted").action, "later");
    c.advance(S);
    assert.deepEqual(p.due(), [k]);
    const r2 = p.repaired(k, false);
    assert.equal(r2?.action === "later" && r2.at, c.now() + 2 * S);
    c.advance(2 * S);
    assert.deepEqual(p.due(), [k]);
    assert.equal(p.repaired(k, true), undefined);
    assert.equal(p.isContested(k), false);
    assert.equal(p.nextDue(), undefined);
  });

  test("objects are independent, forget() drops one, idle ones are not kept", () => {
    const c = clock();
    const p = new DriftPolicy({ now: c.now });
    for (let i = 0; i < 3; i++) {
      p.drift("x|root", "r");
      p.repaired("x|root");
      p.drift("y|root", "r");
      p.repaired("y|root");
      c.advance(S);
    }
    p.drift("z|root", "r");
    p.repaired("z|root");
    assert.deepEqual(
      p.contested().map((o) => o.key),
      ["x|root", "y|root"],
    );
    p.forget("x|root");
    assert.deepEqual(
      p.contested().map((o) => o.key),
      ["y|root"],
    );
    c.advance(6 * 60 * S);
    assert.equal(p.size(), 0);
  });
});

describe("DriftPolicy: drifts explained by Open vSwitch", () => {
  test("OVS-explained relapses never make an object contested, however many", () => {
    const c = clock();
    const p = new DriftPolicy({ now: c.now });
    const k = "vnet3|ingress redirect";
    // Guest start, another port added, ovs-vswitchd restarted: OVS re-creates the port's ingress qdisc
    // several times per reconfiguration, and every repair in between is undone by the next pass.
    for (let i = 0; i < 20; i++) {
      const d = p.drift(k, "missing ingress redirect (ovs add-port)", { explained: true });
      assert.deepEqual(
        d,
        { action: "repair", key: k, contested: false, newlyContested: false },
        `drift ${i}`,
      );
      p.repaired(k);
      c.advance(300);
    }
    assert.deepEqual(p.contested(), []);
    assert.equal(p.isContested(k), false);
  });

  test("unexplained relapses still do; explained ones between them neither count nor reset them", () => {
    const c = clock();
    const p = new DriftPolicy({ now: c.now });
    const k = "vnet3|root qdisc";
    p.drift(k, "missing root qdisc (tc qdisc del)");
    p.repaired(k);
    c.advance(S);
    p.drift(k, "missing root qdisc (ovs add-port)", { explained: true });
    p.repaired(k);
    c.advance(S);
    assert.equal(p.drift(k, "missing root qdisc (tc qdisc del)").newlyContested, false, "relapse 1");
    p.repaired(k);
    c.advance(S);
    p.drift(k, "missing root qdisc (ovs-vswitchd restart)", { explained: true });
    p.repaired(k);
    c.advance(100);
    const d = p.drift(k, "missing root qdisc (tc qdisc del)");
    assert.equal(d.newlyContested, true, "relapse 2: another tool keeps changing it");
    assert.equal(d.action, "later");
    const [o] = p.contested();
    assert.equal(o.key, k);
    assert.equal(o.drifts, 1);
  });

  test("a contested object: an explained drift keeps the back-off, is not counted, does not prolong the contest", () => {
    const c = clock();
    const p = new DriftPolicy({ now: c.now });
    const k = "vnet3|root qdisc";
    for (let i = 0; i < 3; i++) {
      p.drift(k, "x");
      p.repaired(k);
      c.advance(S);
    }
    assert.equal(p.isContested(k), true);
    const lastCounted = p.contested()[0].lastDriftAt;
    const drifts = p.contested()[0].drifts;
    c.advance(2 * S);
    const d = p.drift(k, "missing root qdisc (ovs add-port)", { explained: true });
    assert.equal(d.contested, true);
    assert.equal(d.newlyContested, false);
    // The other party is still around: its repairs keep their pace.
    assert.equal(d.action, "repair", "the back-off since the last repair has passed");
    p.repaired(k);
    c.advance(100);
    assert.equal(p.drift(k, "y", { explained: true }).action, "later", "within the back-off");
    const [o] = p.contested();
    assert.equal(o.drifts, drifts, "explained drifts are not counted");
    assert.equal(
      o.lastDriftAt,
      lastCounted,
      "the contest's calm period runs from the last unexplained drift",
    );
    // Explained drifts every minute do not keep it contested: 5 min after the last unexplained one it ends.
    for (let i = 0; i < 5; i++) {
      c.advance(60 * S);
      p.drift(k, "z", { explained: true });
      p.repaired(k);
    }
    assert.equal(p.isContested(k), false);
  });
});

describe("OvsSettler: waiting out Open vSwitch's reconfigurations", () => {
  type Cause = "ovs add-port" | "ovs-vswitchd restart" | "ovs qos change";
  const RANK: Cause[] = ["ovs-vswitchd restart", "ovs add-port", "ovs qos change"];

  function settler(o: { settleMs?: number; capMs?: number; hintMs?: number; leadMs?: number } = {}) {
    const ft = fakeTimers();
    const out: (Settled<Cause, string> & { at: number })[] = [];
    const s = new OvsSettler<Cause, string>((x) => out.push({ ...x, at: ft.timers.now() }), {
      ...o,
      rank: (c) => RANK.indexOf(c),
      timers: ft.timers,
    });
    return { s, out, ...ft };
  }

  test("held until neither OVSDB nor the port's qdiscs changed for 300 ms; explained by the add-port", () => {
    const { s, out, advance } = settler();
    // The timeline of a port added next to a policed port (ms): OVSDB shows the new port, and ovs-vswitchd
    // re-creates the policed port's ingress qdisc three times, 300-700 ms apart.
    s.ovsEvent("ovs add-port"); // 0: the new Port row (explains changes on every OVS port)
    s.kernelChange("vnet0"); // 0: ingress qdisc re-created
    advance(50);
    s.hold("vnet0", "tc qdisc del", 0); // the coalesced events
    assert.equal(s.holding("vnet0"), true);
    advance(200);
    s.kernelChange("vnet0"); // 250
    s.kernelChange("vnet9"); // another port's change does not hold this one
    advance(249);
    assert.equal(out.length, 0, "not 300 ms quiet yet");
    s.ovsEvent(); // 499: OVSDB not quiet (an event without a cause: a port deleted elsewhere)
    advance(250);
    s.kernelChange("vnet0"); // 749
    advance(299);
    assert.equal(out.length, 0);
    advance(1);
    assert.equal(out.length, 1);
    const [r] = out;
    assert.equal(r.at, 1049, "300 ms after the port's last change");
    assert.equal(r.port, "vnet0");
    assert.deepEqual(r.items, ["tc qdisc del"]);
    assert.equal(r.since, 0);
    assert.equal(r.explained?.cause, "ovs add-port");
    assert.equal(r.capped, false);
    assert.equal(s.holding("vnet0"), false);
  });

  test("the cap: a port OVS keeps changing is handed over 2 s after its first change, then held again", () => {
    const { s, out, advance } = settler();
    s.ovsEvent("ovs-vswitchd restart");
    s.hold("vnet1", "a", 0);
    for (let t = 0; t < 3000; t += 100) {
      s.kernelChange("vnet1");
      if (t === 500) s.hold("vnet1", "b", 500); // more events: the same hold, its cap from the first
      advance(100);
    }
    assert.equal(out.length, 1, "one hand-over at the cap");
    assert.equal(out[0].at, 2000);
    assert.deepEqual(out[0].items, ["a", "b"]);
    assert.equal(out[0].capped, true);
    assert.equal(out[0].explained?.cause, "ovs-vswitchd restart");
    // A check that finds the port wrong now holds again only up to the same cap: not at all.
    assert.equal(s.wouldHold("vnet1", 0), false);
    // A change seen later starts a new hold, with a cap of its own.
    assert.equal(s.wouldHold("vnet1", 2900), true);
  });

  test("the kernel change before the OVSDB event: held for it, attributed to OVS", () => {
    const { s, out, advance } = settler();
    // ovs-vswitchd re-creates the port's ingress qdisc 120 ms before OVSDB shows the new port.
    s.kernelChange("vnet0"); // 0
    advance(50);
    s.hold("vnet0", "tc qdisc del", 0);
    advance(70);
    s.ovsEvent("ovs add-port"); // 120
    advance(299);
    assert.equal(out.length, 0);
    advance(1);
    assert.equal(out.length, 1);
    assert.equal(out[0].at, 420, "300 ms after OVSDB's event");
    assert.equal(out[0].explained?.cause, "ovs add-port");
  });

  test("no OVS event: held 500 ms for one, then handed over unexplained (a tc qdisc del by someone)", () => {
    const { s, out, advance } = settler();
    s.kernelChange("vnet0");
    advance(50);
    s.hold("vnet0", "tc qdisc del", 0);
    advance(449);
    assert.equal(out.length, 0);
    advance(1);
    assert.equal(out.length, 1);
    assert.equal(out[0].at, 500);
    assert.equal(out[0].explained, undefined);
    // An OVS event afterwards does not explain what was handed over before it...
    advance(100);
    s.ovsEvent("ovs add-port");
    assert.equal(s.explain("vnet0", 0, 550), undefined);
    // ... but does explain a change within 5 s after it, and not after that.
    assert.equal(s.explain("vnet0", 600 + 4900)?.cause, "ovs add-port");
    advance(6000);
    assert.equal(s.explain("vnet0", 600 + 5100), undefined);
  });

  test("an OVS event about one port explains changes on that port only; a restart outranks an add-port", () => {
    const { s, advance } = settler();
    s.ovsEvent("ovs qos change", "vnet0");
    assert.equal(s.explain("vnet0", 0)?.cause, "ovs qos change");
    assert.equal(s.explain("vnet1", 0), undefined);
    advance(10);
    s.ovsEvent("ovs add-port");
    assert.equal(s.explain("vnet1", 10)?.cause, "ovs add-port");
    assert.equal(s.explain("vnet0", 10)?.cause, "ovs add-port", "the better cause");
    advance(10);
    s.ovsEvent("ovs-vswitchd restart");
    advance(10);
    s.ovsEvent("ovs add-port");
    assert.equal(s.explain("vnet0", 30)?.cause, "ovs-vswitchd restart");
  });

  test("wouldHold: a drift found on a port OVS is still changing waits; one on a settled port does not", () => {
    const { s, out, advance, pending } = settler();
    s.ovsEvent("ovs add-port");
    advance(1000);
    assert.equal(s.wouldHold("vnet0", 1000), false, "explained, OVSDB and the port quiet for 1 s");
    s.kernelChange("vnet0");
    advance(100);
    assert.equal(s.wouldHold("vnet0", 1100), true, "changed 100 ms ago");
    advance(200);
    assert.equal(s.wouldHold("vnet0", 1100), false);
    s.hold("vnet0", "x", 1300);
    assert.equal(out.length, 1, "handed over at once: settled and explained");
    s.clear();
    assert.equal(pending.size, 0);
  });

  test("clear() drops what is held; flushAll() hands it over now", () => {
    const { s, out, advance, pending } = settler();
    s.hold("a", "x", 0);
    s.clear();
    advance(5000);
    assert.equal(out.length, 0);
    assert.equal(pending.size, 0);
    s.hold("b", "y", 5000);
    s.flushAll();
    assert.deepEqual(
      out.map((o) => [o.port, o.items]),
      [["b", ["y"]]],
    );
    assert.equal(pending.size, 0);
  });
});

describe("Coalescer", () => {
  test("events about one device within 50 ms become one request; another device gets its own", () => {
    const { timers, advance } = fakeTimers();
    const out: Batch<string>[] = [];
    const co = new Coalescer<string>((b) => out.push(b), { timers });
    co.push("vnet0", "qdisc-deleted");
    advance(10);
    co.push("vnet0", "class-deleted");
    co.push("vnet1", "link-changed");
    advance(30);
    co.push("vnet0", "qdisc-changed");
    advance(49);
    assert.deepEqual(
      out.map((b) => b.key),
      ["vnet1"],
    );
    advance(1);
    assert.deepEqual(
      out.map((b) => [b.key, b.items]),
      [
        ["vnet1", ["link-changed"]],
        ["vnet0", ["qdisc-deleted", "class-deleted", "qdisc-changed"]],
      ],
    );
    assert.deepEqual(co.pending(), []);
  });

  test("a device that never goes quiet is still handed over after maxWait", () => {
    const { timers, advance } = fakeTimers();
    const out: Batch<number>[] = [];
    const co = new Coalescer<number>((b) => out.push(b), {
      timers,
      quietMs: 50,
      maxWaitMs: 200,
      maxItems: 5,
    });
    for (let i = 0; i < 30; i++) {
      co.push("tap", i);
      advance(10);
    }
    assert.ok(out.length >= 1);
    assert.equal(out[0].count, 20, "cut at 200 ms");
    assert.deepEqual(out[0].items, [15, 16, 17, 18, 19], "the most recent items kept");
    co.flushAll();
    assert.equal(
      out.reduce((n, b) => n + b.count, 0),
      30,
    );
  });

  test("clear() drops pending batches without a request", () => {
    const { timers, advance, pending } = fakeTimers();
    const out: Batch<string>[] = [];
    const co = new Coalescer<string>((b) => out.push(b), { timers });
    co.push("a", "x");
    co.clear();
    advance(1000);
    assert.equal(out.length, 0);
    assert.equal(pending.size, 0);
  });
});

describe("monitor line parsers", () => {
  test("tc monitor lines, as iproute2 6.1 prints them", () => {
    assert.deepEqual(
      parseTcLine(
        "deleted qdisc htb 7651: dev vqa0 root r2q 10 default 0x1 direct_packets_stat 0 direct_qlen 1000",
      ),
      { kind: "qdisc-deleted", dev: "vqa0", tcKind: "htb", handle: "7651:", parent: "root" },
    );
    assert.deepEqual(parseTcLine("qdisc clsact ffff: dev vqa0 parent ffff:fff1 "), {
      kind: "qdisc-changed",
      dev: "vqa0",
      tcKind: "clsact",
      handle: "ffff:",
      parent: "ffff:fff1",
    });
    assert.deepEqual(
      parseTcLine("class htb 7651:1 dev vqa0 root prio 0 rate 10Mbit ceil 10Mbit burst 1600b cburst 1600b "),
      { kind: "class-changed", dev: "vqa0", tcKind: "htb", handle: "7651:1", parent: "root" },
    );
    assert.deepEqual(parseTcLine("deleted class htb 7651:2 dev vqd0 parent 7651:1 prio 0 rate 1Mbit"), {
      kind: "class-deleted",
      dev: "vqd0",
      tcKind: "htb",
      handle: "7651:2",
      parent: "7651:1",
    });
    assert.deepEqual(
      parseTcLine(
        "added filter dev vqa0 ingress protocol all pref 64000 u32 chain 0 fh 800::800 order 2048 key ht 800 bkt 0 terminal flowid not_in_hw ",
      ),
      {
        kind: "filter-changed",
        dev: "vqa0",
        parent: "ingress",
        pref: 64000,
        tcKind: "u32",
        handle: "800::800",
      },
    );
    assert.deepEqual(parseTcLine("deleted filter dev vqa0 parent 7651: protocol all pref 5 u32 chain 0 "), {
      kind: "filter-deleted",
      dev: "vqa0",
      parent: "7651:",
      pref: 5,
      tcKind: "u32",
    });
    assert.equal(
      parseTcLine("replaced filter dev x egress protocol all pref 64001 u32 chain 0")?.kind,
      "filter-changed",
    );
    assert.equal(
      parseTcLine("filter dev x egress protocol all pref 64001 u32 chain 0")?.kind,
      "filter-changed",
    );
    assert.deepEqual(parseTcLine("deleted chain dev vqa0 parent ffff: chain 0 "), {
      kind: "filter-deleted",
      dev: "vqa0",
      parent: "ffff:",
      tcKind: "chain",
    });
    // Continuation lines, actions (not per device), shared blocks, and names no kernel accepts.
    assert.equal(parseTcLine("  match 00000000/00000000 at 0"), undefined);
    assert.equal(parseTcLine("\taction order 1: mirred (Egress Redirect to device vqi1) stolen"), undefined);
    assert.equal(parseTcLine("added action mirred"), undefined);
    assert.equal(parseTcLine("added filter block 1 protocol all pref 1 u32 chain 0"), undefined);
    assert.equal(parseTcLine("qdisc htb 1: dev a\x1b[31m root"), undefined);
    assert.equal(parseTcLine("qdisc htb 1: dev abcdefghijklmnop root"), undefined);
  });

  test("ip monitor link lines", () => {
    assert.deepEqual(
      parseLinkLine("Deleted 4: vqi0123: <BROADCAST,NOARP> mtu 1500 qdisc noop state DOWN group default "),
      {
        deleted: true,
        ifindex: 4,
        dev: "vqi0123",
      },
    );
    assert.deepEqual(
      parseLinkLine(
        "2: vqa1@vqa0: <NO-CARRIER,BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state LOWERLAYERDOWN group default ",
      ),
      { deleted: false, ifindex: 2, dev: "vqa1" },
    );
    assert.deepEqual(parseLinkLine("3: vqa0@NONE: <BROADCAST,MULTICAST> mtu 1500"), {
      deleted: false,
      ifindex: 3,
      dev: "vqa0",
    });
    assert.equal(parseLinkLine("    link/ether 72:02:0e:22:a8:0f brd ff:ff:ff:ff:ff:ff"), undefined);
  });

  test("which tc objects are virtqos's", () => {
    const ev = (p: object) =>
      ({ at: 0, detail: "", dev: "x", ...p }) as Parameters<typeof isVirtqosTcObject>[0];
    assert.equal(isVirtqosTcObject(ev({ kind: "qdisc-deleted", handle: "7651:", parent: "root" })), true);
    assert.equal(isVirtqosTcObject(ev({ kind: "qdisc-changed", handle: "7654:", parent: "7651:1" })), true);
    assert.equal(isVirtqosTcObject(ev({ kind: "qdisc-deleted", handle: "1:", parent: "root" })), false);
    assert.equal(isVirtqosTcObject(ev({ kind: "filter-deleted", pref: 64000, parent: "ingress" })), true);
    assert.equal(isVirtqosTcObject(ev({ kind: "filter-deleted", pref: 49152, parent: "ingress" })), false);
    assert.equal(isVirtqosTcObject(ev({ kind: "link-deleted" })), false);
  });

  test("messages: a header and its continuation lines, across chunks", () => {
    const got: string[][] = [];
    const r = new MessageReader((lines) => got.push(lines));
    r.push(
      Buffer.from("[2026-11-29T17:59:59.046268] added filter dev a ingress pref 1\n  match 0/0 at 0\n"),
      1,
    );
    assert.equal(got.length, 1, "a chunk ending on a line boundary ends its message");
    r.push(Buffer.from("[2026-11-29T17:59:59.1] deleted qdisc htb 7651: dev a ro"), 2);
    assert.equal(got.length, 1);
    r.push(Buffer.from("ot\n[2026-11-29T17:59:59.2] qdisc htb 7651: dev a root\n"), 3);
    assert.deepEqual(got, [
      ["[2026-11-29T17:59:59.046268] added filter dev a ingress pref 1", "  match 0/0 at 0"],
      ["[2026-11-29T17:59:59.1] deleted qdisc htb 7651: dev a root"],
      ["[2026-11-29T17:59:59.2] qdisc htb 7651: dev a root"],
    ]);
  });

  test("ovsdb-client json lines", () => {
    const u = parseMonitorLine(
      '{"data":[["46077bfc-9873-481e-a01d-c1ac80ab3ad7","old",null,0,null,null,["set",[]],null],["","new","vqdwv0",1000,0,4,5,{"x":1}]],"headings":["row","action","name","ingress_policing_rate","ingress_policing_burst","ofport","ifindex","statistics"],"caption":"Interface"}',
    );
    assert.deepEqual(u, {
      table: "Interface",
      rows: [
        {
          uuid: "46077bfc-9873-481e-a01d-c1ac80ab3ad7",
          action: "old",
          cells: { ingress_policing_rate: "0" },
        },
        {
          uuid: "46077bfc-9873-481e-a01d-c1ac80ab3ad7",
          action: "new",
          cells: { name: "vqdwv0", ingress_policing_rate: "1000", ingress_policing_burst: "0", ofport: "4" },
        },
      ],
    });
    assert.equal(parseMonitorLine('{"caption":"Bridge","data":[],"headings":[]}'), undefined);
    assert.equal(parseMonitorLine("ovsdb-client: something"), undefined);
    assert.equal(
      parseMonitorLine(
        '{"caption":"Port","data":[["not-a-uuid","insert","p"]],"headings":["row","action","name"]}',
      )?.rows.length,
      0,
    );
    assert.equal(showCell(["set", []]), "none");
    assert.equal(
      showCell(["uuid", "c1474204-05d9-4a9a-908b-a7a1cd3aa918"]),
      "c1474204-05d9-4a9a-908b-a7a1cd3aa918",
    );
    assert.equal(showCell(["map", [["max-rate", "1000"]]]), "max-rate=1000");
  });
});
