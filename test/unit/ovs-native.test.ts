import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { Runner } from "../../src/adapters/exec.js";
import { createLogger } from "../../src/adapters/log.js";
import { ovsReadArgs, parseOvsState } from "../../src/adapters/ovs.js";
import { finishOvsNative, prepareOvsNative } from "../../src/app/ovs-native.js";
import { desiredFromRecords } from "../../src/app/status.js";
import type { DesiredInterface, DomainRecord } from "../../src/core/model.js";
import {
  assignOvsNative,
  emptyOvsState,
  type OvsState,
  ovsHandBack,
  ovsPolicingFor,
  ovsQosFor,
  ovsTakenOverView,
  ovsTakeOvers,
  ovsVsctlArgs,
  ovsWants,
  planOvs,
  refuseBeforePlan,
  refuseOvs,
  takeOverCandidate,
  takeOverNote,
} from "../../src/core/ovs-native.js";
import { plan } from "../../src/core/plan.js";
import { emptyPolicy, parsePolicy } from "../../src/core/policy.js";
import { PRODUCTION, THIS_KERNEL } from "../helpers/caps.js";
import { device, iface, limit, MAC, observed, UUID } from "../helpers/plan-fixtures.js";
import { policyProblems, problemAt } from "../helpers/policy-problems.js";

// `ovs: native` (src/core/ovs-native.ts): policy in, the exact ovs-vsctl argument arrays out.

const OWNER = `${UUID}/${MAC}`;
const TAG = `external_ids:virtqos-owner="${OWNER}"`;
const DB = "unix:/run/vqnat/db.sock";
const inScope = (u: string) => u === UUID;
/** JSON round trip: drops keys whose value is undefined, so results compare by content. */
const plain = <T>(x: T): T => JSON.parse(JSON.stringify(x));

/** An OVS port of domain web1, both directions limited, marked for OVS by the policy. */
function native(mbitIn: number | undefined, mbitOut: number | undefined, caps = PRODUCTION, extra = {}) {
  const d: DesiredInterface = iface({
    ovs: true,
    ...(mbitIn !== undefined ? { inbound: limit(mbitIn) } : {}),
    ...(mbitOut !== undefined ? { outbound: limit(mbitOut) } : {}),
    ...extra,
  });
  const notes = assignOvsNative([d], "native", caps);
  return { d, notes };
}

/** OVSDB with port vnet1 (no QoS, no policing) and the bridge's own port. */
function stateWithPort(): OvsState {
  const s = emptyOvsState();
  s.ports.set("vnet1", { uuid: "p-vnet1" });
  s.ports.set("br0", { uuid: "p-br0" });
  for (const n of ["vnet1", "br0"])
    s.interfaces.set(n, { uuid: `i-${n}`, policingRateKbitPerSec: 0, policingBurstKbit: 0, externalIds: {} });
  return s;
}

/** OVSDB after the 10 Mbit/s both ways of the first test was applied. */
function stateApplied(mbitIn = 10, mbitOut = 10): OvsState {
  const s = stateWithPort();
  s.ports.set("vnet1", { uuid: "p-vnet1", qos: "q-1" });
  s.qos.set("q-1", {
    type: "linux-htb",
    otherConfig: { "max-rate": String(mbitIn * 1e6) },
    queues: { "0": "u-1" },
    externalIds: { "virtqos-owner": OWNER },
  });
  s.queues.set("u-1", {
    otherConfig: { "max-rate": String(mbitIn * 1e6) },
    externalIds: { "virtqos-owner": OWNER },
  });
  s.interfaces.set("vnet1", {
    uuid: "i-vnet1",
    policingRateKbitPerSec: mbitOut * 1000,
    policingBurstKbit: mbitOut * 1000,
    externalIds: { "virtqos-owner": OWNER },
  });
  return s;
}

describe("policy: ovs", () => {
  test("default tc; `ovs: native` parsed", () => {
    assert.equal(emptyPolicy().ovs, "tc");
    assert.equal(parsePolicy("leaf: auto\n", "p.yaml").ovs, "tc");
    assert.equal(parsePolicy("ovs: native\n", "p.yaml").ovs, "native");
    assert.equal(parsePolicy("ovs: tc\n", "p.yaml").ovs, "tc");
  });

  test("another value: an error naming the field, the line and the fix", () => {
    const p = problemAt(policyProblems("strict: false\novs: openvswitch\n", "p.yaml"), "ovs");
    assert.equal(p.line, 2);
    assert.match(p.message, /"openvswitch".*must be "tc" or "native"/);
    assert.match(p.fix, /ovs: tc.*ovs: native/);
  });
});

describe("which directions Open vSwitch enforces", () => {
  test("native, kernel with police: both directions, no notes", () => {
    const { d, notes } = native(10, 10);
    assert.deepEqual(d.ovsNative, ["inbound", "outbound"]);
    assert.deepEqual(notes, []);
  });

  test("ovs: tc, or a port that is not an OVS port: nothing", () => {
    const d = iface({ ovs: true, inbound: limit(10) });
    assert.deepEqual(assignOvsNative([d], "tc", PRODUCTION), []);
    assert.equal(d.ovsNative, undefined);
    const plain = iface({ inbound: limit(10) });
    assignOvsNative([plain], "native", PRODUCTION);
    assert.equal(plain.ovsNative, undefined);
  });

  test("no police action: upload stays on virtqos's IFB, with a warning", () => {
    const { d, notes } = native(10, 10, THIS_KERNEL);
    assert.deepEqual(d.ovsNative, ["inbound"]);
    assert.deepEqual(
      notes.map((n) => [n.code, n.level, n.direction]),
      [["OVS_NATIVE_FALLBACK", "warning", "outbound"]],
    );
    assert.match(notes[0].message, /police action/);
  });

  test("a group member's grouped direction stays on the group tree; a peak is reported", () => {
    const group = {
      tree: "web",
      path: ["web"],
      via: "member",
      inbound: { floorBitsPerSec: 5e6, ceilBitsPerSec: 20e6 },
    };
    const { d, notes } = native(undefined, 10, PRODUCTION, {
      group,
      outbound: limit(10, { ceilBitsPerSec: 20e6 }),
    });
    assert.deepEqual(d.ovsNative, ["outbound"]);
    assert.deepEqual(
      notes.map((n) => [n.code, n.direction]),
      [
        ["OVS_NATIVE_FALLBACK", "inbound"],
        ["OVS_NATIVE_ADJUSTED", "outbound"],
      ],
    );
  });
});

describe("units", () => {
  test("10 Mbit/s: max-rate=10000000 bit/s, ingress_policing_rate=10000 kbit/s", () => {
    assert.deepEqual(ovsQosFor(limit(10)), {
      maxRateBitsPerSec: 10_000_000,
      queue: { maxRateBitsPerSec: 10_000_000 },
    });
    // The bucket: libvirt's rule (average read as KiB: 1250 KiB = 1,280,000 bytes) in OVS's 128-byte units.
    assert.deepEqual(ovsPolicingFor(limit(10)), {
      rateKbitPerSec: 10_000,
      burstKbit: 10_000,
      bucketBytes: 1_280_000,
    });
  });

  test("floor = min-rate, burst in bits", () => {
    assert.deepEqual(ovsQosFor(limit(30, { floorBitsPerSec: 15e6, burstBytes: 262_144 })), {
      maxRateBitsPerSec: 30_000_000,
      queue: { maxRateBitsPerSec: 30_000_000, minRateBitsPerSec: 15_000_000, burstBits: 2_097_152 },
    });
  });

  test("1 Mbit/s and 100 Mbit/s policing; a small bucket raised to a GSO packet", () => {
    assert.deepEqual(ovsPolicingFor(limit(1)), {
      rateKbitPerSec: 1000,
      burstKbit: 1000,
      bucketBytes: 128_000,
    });
    assert.deepEqual(ovsPolicingFor(limit(100)), {
      rateKbitPerSec: 100_000,
      burstKbit: 100_000,
      bucketBytes: 12_800_000,
    });
    // 8 kbit/s, burst 2 KiB: the bucket is one 64 KiB GSO packet plus a frame, 67,050 bytes = 524 x 128 rounded up.
    assert.deepEqual(ovsPolicingFor(limit(0.008, { burstBytes: 2048 })), {
      rateKbitPerSec: 8,
      burstKbit: 524,
      bucketBytes: 67_050,
    });
  });

  test("a rate that is not a whole kbit/s is rounded, with a warning", () => {
    const { d } = native(undefined, undefined, PRODUCTION, { outbound: limit(8.388608) }); // 1MiB/s
    const { wants, notes } = ovsWants([d]);
    assert.equal(wants[0].policing?.rateKbitPerSec, 8389);
    assert.deepEqual(
      notes.map((n) => n.code),
      ["OVS_NATIVE_ADJUSTED"],
    );
  });
});

describe("ovs-vsctl argument arrays", () => {
  test("create: one transaction, QoS + queue 0 + policing, all tagged", () => {
    const { d } = native(10, 10);
    const { wants } = ovsWants([d]);
    const p = planOvs(wants, stateWithPort(), { inScope, sweep: true });
    assert.deepEqual(p.problems, []);
    assert.deepEqual(p.beforeTc, []);
    assert.deepEqual(ovsVsctlArgs(p.afterTc, { db: DB }), [
      `--db=${DB}`,
      "--timeout=10",
      "--no-wait",
      "--",
      "set",
      "port",
      "vnet1",
      "qos=@vq0",
      "--",
      "--id=@vq0",
      "create",
      "qos",
      "type=linux-htb",
      "other_config:max-rate=10000000",
      "queues:0=@vq0q0",
      TAG,
      "--",
      "--id=@vq0q0",
      "create",
      "queue",
      "other_config:max-rate=10000000",
      TAG,
      "--",
      "set",
      "interface",
      "vnet1",
      "ingress_policing_rate=10000",
      "ingress_policing_burst=10000",
      TAG,
    ]);
    assert.deepEqual([...p.changed], [OWNER]);
  });

  test("applied already: nothing to do", () => {
    const { d } = native(10, 10);
    const p = planOvs(ovsWants([d]).wants, stateApplied(), { inScope, sweep: true });
    assert.deepEqual([p.beforeTc, p.afterTc, p.problems], [[], [], []]);
  });

  test("changed limits: the same rows changed in place", () => {
    const { d } = native(20, 5, PRODUCTION, {
      inbound: limit(20, { floorBitsPerSec: 2e6, burstBytes: 65_536 }),
    });
    const p = planOvs(ovsWants([d]).wants, stateApplied(), { inScope, sweep: true });
    assert.deepEqual(p.afterTc, [
      ["set", "qos", "q-1", "type=linux-htb", 'other_config={max-rate="20000000"}'],
      ["set", "queue", "u-1", 'other_config={burst="524288",max-rate="20000000",min-rate="2000000"}'],
      ["set", "interface", "vnet1", "ingress_policing_rate=5000", "ingress_policing_burst=5000", TAG],
    ]);
  });

  test("limits cleared, port still there: QoS cleared and destroyed, policing reset, tag removed", () => {
    const d = iface({ ovs: true });
    const p = planOvs(ovsWants([d]).wants, stateApplied(), { inScope, sweep: true });
    assert.deepEqual(ovsVsctlArgs(p.afterTc), [
      "--timeout=10",
      "--no-wait",
      "--",
      "clear",
      "port",
      "vnet1",
      "qos",
      "--",
      "destroy",
      "qos",
      "q-1",
      "--",
      "destroy",
      "queue",
      "u-1",
      "--",
      "set",
      "interface",
      "vnet1",
      "ingress_policing_rate=0",
      "ingress_policing_burst=0",
      "--",
      "remove",
      "interface",
      "vnet1",
      "external_ids",
      "virtqos-owner",
    ]);
  });

  test("guest stopped (libvirt deleted the port): the tagged rows it left are destroyed", () => {
    const s = stateApplied();
    s.ports.delete("vnet1");
    s.interfaces.delete("vnet1");
    const p = planOvs([], s, { inScope, sweep: false });
    assert.deepEqual(p.afterTc, [
      ["destroy", "qos", "q-1"],
      ["destroy", "queue", "u-1"],
    ]);
  });

  test("another domain's rows are left alone unless nothing uses them and the plan sweeps", () => {
    const s = stateApplied();
    const other = "00000000-0000-0000-0000-00000000beef/52:54:00:00:00:09";
    s.qos.set("q-9", {
      type: "linux-htb",
      otherConfig: {},
      queues: {},
      externalIds: { "virtqos-owner": other },
    });
    s.queues.set("u-9", { otherConfig: {}, externalIds: { "virtqos-owner": other } });
    const { d } = native(10, 10);
    const wants = ovsWants([d]).wants;
    assert.deepEqual(planOvs(wants, s, { inScope, sweep: false }).afterTc, []);
    assert.deepEqual(planOvs(wants, s, { inScope, sweep: true }).afterTc, [
      ["destroy", "qos", "q-9"],
      ["destroy", "queue", "u-9"],
    ]);
    // In use by a port: kept even when sweeping.
    s.ports.set("vnet9", { uuid: "p-vnet9", qos: "q-9" });
    s.qos.set("q-9", {
      type: "linux-htb",
      otherConfig: {},
      queues: { "0": "u-9" },
      externalIds: { "virtqos-owner": other },
    });
    assert.deepEqual(planOvs(wants, s, { inScope, sweep: true }).afterTc, []);
  });

  test("a QoS virtqos did not create (libvirt's <bandwidth>): refused, nothing changed", () => {
    const s = stateWithPort();
    s.ports.set("vnet1", { uuid: "p-vnet1", qos: "q-lv" });
    s.qos.set("q-lv", {
      type: "linux-htb",
      otherConfig: { "max-rate": "8000000" },
      queues: {},
      externalIds: {},
    });
    const { d } = native(10, 10);
    const p = planOvs(ovsWants([d]).wants, s, { inScope, sweep: true });
    assert.deepEqual([p.beforeTc, p.afterTc], [[], []]);
    assert.deepEqual(
      p.problems.map((x) => [x.code, x.iface, x.direction]),
      [["OVS_QOS_FOREIGN", OWNER, "inbound"]],
    );
    assert.match(p.problems[0].message, /ovs-vsctl clear port vnet1 qos/);
  });

  test("foreign ingress policing: refused", () => {
    const s = stateWithPort();
    s.interfaces.set("vnet1", {
      uuid: "i-vnet1",
      policingRateKbitPerSec: 2500,
      policingBurstKbit: 0,
      externalIds: {},
    });
    const { d } = native(10, 10);
    const p = planOvs(ovsWants([d]).wants, s, { inScope, sweep: true });
    assert.deepEqual(p.afterTc, []);
    assert.deepEqual(
      p.problems.map((x) => x.code),
      ["OVS_QOS_FOREIGN"],
    );
  });

  test("a held interface (its tc part failed) keeps its rows", () => {
    const p = planOvs([], stateApplied(), { inScope, sweep: true, hold: new Set([OWNER]) });
    assert.deepEqual([p.beforeTc, p.afterTc], [[], []]);
  });

  test("the port is not in OVSDB: a note, nothing else", () => {
    const { d } = native(10, 10);
    const p = planOvs(ovsWants([d]).wants, emptyOvsState(), { inScope, sweep: true });
    assert.deepEqual(p.afterTc, []);
    assert.deepEqual(
      p.notes.map((n) => n.code),
      ["OVS_PORT_ABSENT"],
    );
  });

  test("a port handed back to tc: its release comes first, waiting for ovs-vswitchd", () => {
    const d = iface({ ovs: true, inbound: limit(10) }); // ovs: tc now
    const p = planOvs(ovsWants([d]).wants, stateApplied(), {
      inScope,
      sweep: true,
      tcDevs: new Set(["vnet1"]),
    });
    assert.deepEqual(p.beforeTc, [
      ["clear", "port", "vnet1", "qos"],
      ["destroy", "qos", "q-1"],
      ["destroy", "queue", "u-1"],
      ["set", "interface", "vnet1", "ingress_policing_rate=0", "ingress_policing_burst=0"],
      ["remove", "interface", "vnet1", "external_ids", "virtqos-owner"],
    ]);
    assert.deepEqual(p.afterTc, []);
    assert.deepEqual(ovsVsctlArgs(p.beforeTc, { wait: true }).slice(0, 2), ["--timeout=10", "--"]);
  });
});

describe("the planner with OVS-enforced directions", () => {
  const links = () => observed([device("vnet1")]);

  test("both directions by OVS: no tc objects, the record says OVS", () => {
    const { d } = native(10, 10);
    const p = plan([d], links(), PRODUCTION, { leaf: "auto", scope: [UUID], sweep: true });
    assert.deepEqual(p.ops, []);
    assert.deepEqual(p.notes, []);
    assert.deepEqual(plain(p.records[0].interfaces), [
      {
        mac: MAC,
        dev: "vnet1",
        ifindex: 15,
        type: "bridge",
        ovs: { inbound: limit(10), outbound: limit(10) },
      },
    ]);
  });

  test("no police action: download by OVS, upload through virtqos's IFB", () => {
    const { d } = native(10, 10, THIS_KERNEL);
    const p = plan([d], links(), THIS_KERNEL, { leaf: "auto", scope: [UUID], sweep: true });
    assert.ok(!p.ops.some((o) => o.op === "root-replace" && o.dev === "vnet1"), "no tc root on the OVS port");
    assert.ok(p.ops.some((o) => o.op === "filter-add" && o.dev === "vnet1" && o.hook === "ingress"));
    assert.deepEqual(p.records[0].interfaces[0].ovs, { inbound: limit(10) });
    assert.deepEqual(p.records[0].interfaces[0].outbound, limit(10));
  });

  test("OVS's htb 1: on the port is not in the way of a tc upload redirect", () => {
    const { d } = native(10, 10, THIS_KERNEL);
    const ovsRoot = { kind: "htb", handle: "1:", parent: "root", options: {} };
    const p = plan([d], observed([device("vnet1", { qdiscs: [ovsRoot] })]), THIS_KERNEL, {
      leaf: "auto",
      scope: [UUID],
      sweep: true,
    });
    assert.deepEqual(p.problems, []);
  });

  test("records round trip: status and the agent see OVS's directions as OVS's", () => {
    const { d } = native(10, 10);
    const p = plan([d], links(), PRODUCTION, { leaf: "auto", scope: [UUID], sweep: true });
    const [back] = desiredFromRecords(p.records);
    assert.deepEqual(back.ovsNative, ["inbound", "outbound"]);
    const again = plan([back], { ...links(), records: p.records }, PRODUCTION, {
      leaf: "auto",
      scope: [UUID],
      sweep: false,
    });
    assert.deepEqual(again.ops, []);
  });

  test("handed back to tc: OVS's htb is not a foreign root for the plan", () => {
    const record: DomainRecord = {
      domainName: "web1",
      domainUuid: UUID,
      interfaces: [{ mac: MAC, dev: "vnet1", type: "bridge", ovs: { inbound: limit(10) } }],
    };
    const ovsRoot = { kind: "htb", handle: "1:", parent: "root", options: {} };
    const obs = { ...observed([device("vnet1", { qdiscs: [ovsRoot] })]), records: [record] };
    const d = iface({ ovs: true, inbound: limit(10) }); // ovs: tc now
    const raw = plan([d], obs, PRODUCTION, { leaf: "auto", scope: [UUID], sweep: true });
    assert.deepEqual(
      raw.problems.map((x) => x.code),
      ["ROOT_QDISC_FOREIGN"],
    );
    const view = ovsHandBack(obs, [d]);
    assert.deepEqual([...view.devs], ["vnet1"]);
    const p = plan([d], view.observed, PRODUCTION, { leaf: "auto", scope: [UUID], sweep: true });
    assert.deepEqual(p.problems, []);
    assert.equal(p.ops[0].op, "root-replace");
  });

  test("refused before planning (another tool's QoS on the port): nothing changes, not even its tc objects", () => {
    const { d } = native(10, 10);
    const s = stateWithPort();
    s.ports.set("vnet1", { uuid: "p-vnet1", qos: "q-noop" });
    s.qos.set("q-noop", { type: "linux-noop", otherConfig: {}, queues: {}, externalIds: {} });
    refuseBeforePlan([d], s);
    assert.equal(d.problem?.code, "OVS_QOS_FOREIGN");
    assert.equal(d.ovsNative, undefined);
    // The tap still carries what ovs: tc had put there: it stays (no root-del, no filter-del, no IFB removed).
    const record: DomainRecord = {
      domainName: "web1",
      domainUuid: UUID,
      interfaces: [{ mac: MAC, dev: "vnet1", type: "bridge", inbound: limit(10), outbound: limit(10) }],
    };
    const ours = { kind: "htb", handle: "7651:", parent: "root", options: { default: "0x1" } };
    const obs = { ...observed([device("vnet1", { qdiscs: [ours] })]), records: [record] };
    const p = plan([d], obs, PRODUCTION, { leaf: "auto", scope: [UUID], sweep: true });
    assert.deepEqual(p.ops, []);
    assert.deepEqual(
      p.problems.map((x) => x.code),
      ["OVS_QOS_FOREIGN"],
    );
    assert.deepEqual(
      p.records[0].refused?.map((r) => r.code),
      ["OVS_QOS_FOREIGN"],
    );
    // No OVSDB at all: the same, with OVSDB_FAILED.
    const e = native(10, 10).d;
    refuseBeforePlan([e], undefined, "ovs-vsctl is not installed or not on PATH");
    assert.equal(e.problem?.code, "OVSDB_FAILED");
  });

  test("refused by OVS: the record keeps it as refused", () => {
    const { d } = native(10, 10);
    const p = plan([d], links(), PRODUCTION, { leaf: "auto", scope: [UUID], sweep: true });
    refuseOvs(p.records, p.forget, new Map([[OWNER, { code: "OVS_QOS_FOREIGN", message: "x" }]]));
    assert.deepEqual(p.records[0].interfaces, []);
    assert.deepEqual(p.records[0].refused, [
      {
        mac: MAC,
        dev: "vnet1",
        code: "OVS_QOS_FOREIGN",
        message: "x",
        inbound: limit(10),
        outbound: limit(10),
      },
    ]);
  });
});

describe("reading OVSDB", () => {
  test("the read: one ovs-vsctl, four tables", () => {
    assert.deepEqual(ovsReadArgs(DB), [
      `--db=${DB}`,
      "--timeout=10",
      "--format=json",
      "--data=json",
      "--",
      "--columns=_uuid,name,qos",
      "list",
      "Port",
      "--",
      "--columns=_uuid,name,ingress_policing_rate,ingress_policing_burst,external_ids",
      "list",
      "Interface",
      "--",
      "--columns=_uuid,type,other_config,queues,external_ids",
      "list",
      "QoS",
      "--",
      "--columns=_uuid,other_config,external_ids",
      "list",
      "Queue",
    ]);
  });

  test("ovs-vsctl 3.1.0's output parsed", () => {
    // Printed by ovs-vsctl (Open vSwitch) 3.1.0 for ovsReadArgs() against a private ovsdb-server.
    const out = [
      '{"data":[[["uuid","e22e903d-2482-4e38-b51d-b42af565d0ad"],"vqnat-t0",["uuid","e919e22e-6ce6-4a97-a500-73f6a5cfc98f"]],[["uuid","2415212b-4cf9-4d89-b3c7-a92510afe634"],"vqnat-br",["set",[]]]],"headings":["_uuid","name","qos"]}',
      '{"data":[[["uuid","998b75e4-ce60-403d-b2fa-54d023b1eda3"],"vqnat-br",0,0,["map",[]]],[["uuid","b04a763b-722e-468d-a4f8-5ce7e3501a15"],"vqnat-t0",10000,10000,["map",[["virtqos-owner","x/y"]]]]],"headings":["_uuid","name","ingress_policing_rate","ingress_policing_burst","external_ids"]}',
      '{"data":[[["uuid","e919e22e-6ce6-4a97-a500-73f6a5cfc98f"],"linux-htb",["map",[["max-rate","20000000"]]],["map",[[0,["uuid","7a83c681-0594-43a8-a9ca-fc53bae79d90"]]]],["map",[["virtqos-owner","x/y"]]]]],"headings":["_uuid","type","other_config","queues","external_ids"]}',
      '{"data":[[["uuid","7a83c681-0594-43a8-a9ca-fc53bae79d90"],["map",[["burst","80000"],["max-rate","20000000"]]],["map",[["virtqos-owner","x/y"]]]]],"headings":["_uuid","other_config","external_ids"]}',
      "",
    ].join("\n");
    const s = parseOvsState(out);
    assert.deepEqual(s.ports.get("vqnat-t0"), {
      uuid: "e22e903d-2482-4e38-b51d-b42af565d0ad",
      qos: "e919e22e-6ce6-4a97-a500-73f6a5cfc98f",
    });
    assert.equal(s.ports.get("vqnat-br")?.qos, undefined);
    assert.deepEqual(s.interfaces.get("vqnat-t0"), {
      uuid: "b04a763b-722e-468d-a4f8-5ce7e3501a15",
      policingRateKbitPerSec: 10000,
      policingBurstKbit: 10000,
      externalIds: { "virtqos-owner": "x/y" },
    });
    assert.deepEqual(s.qos.get("e919e22e-6ce6-4a97-a500-73f6a5cfc98f"), {
      type: "linux-htb",
      otherConfig: { "max-rate": "20000000" },
      queues: { "0": "7a83c681-0594-43a8-a9ca-fc53bae79d90" },
      externalIds: { "virtqos-owner": "x/y" },
    });
    assert.deepEqual(s.queues.get("7a83c681-0594-43a8-a9ca-fc53bae79d90"), {
      otherConfig: { burst: "80000", "max-rate": "20000000" },
      externalIds: { "virtqos-owner": "x/y" },
    });
  });
});

// ------------------------------------------------------------------------------------ ovs: tc takes a port over

/** OVSDB as libvirt's `<bandwidth>` leaves port vnet1: an untagged linux-htb QoS, queue 0 min-rate only, policing. */
function stateLibvirt(): OvsState {
  const s = stateWithPort();
  s.ports.set("vnet1", { uuid: "p-vnet1", qos: "q-lv" });
  s.qos.set("q-lv", { type: "linux-htb", otherConfig: {}, queues: { "0": "u-lv" }, externalIds: {} });
  s.queues.set("u-lv", { otherConfig: { "min-rate": "10000000" }, externalIds: {} });
  s.interfaces.set("vnet1", {
    uuid: "i-vnet1",
    policingRateKbitPerSec: 10_000,
    policingBurstKbit: 10_000,
    externalIds: {},
  });
  return s;
}

/** ovs-vsctl's `--format=json --data=json` output of the four lists, for a fake runner. */
function vsctlJson(s: OvsState): string {
  const map = (m: Record<string, string>) => ["map", Object.entries(m)];
  const doc = (headings: string[], data: unknown[][]) => JSON.stringify({ data, headings });
  return [
    doc(
      ["_uuid", "name", "qos"],
      [...s.ports].map(([n, p]) => [["uuid", p.uuid], n, p.qos ? ["uuid", p.qos] : ["set", []]]),
    ),
    doc(
      ["_uuid", "name", "ingress_policing_rate", "ingress_policing_burst", "external_ids"],
      [...s.interfaces].map(([n, i]) => [
        ["uuid", i.uuid],
        n,
        i.policingRateKbitPerSec,
        i.policingBurstKbit,
        map(i.externalIds),
      ]),
    ),
    doc(
      ["_uuid", "type", "other_config", "queues", "external_ids"],
      [...s.qos].map(([u, q]) => [
        ["uuid", u],
        q.type,
        map(q.otherConfig),
        ["map", Object.entries(q.queues).map(([k, v]) => [Number(k), ["uuid", v]])],
        map(q.externalIds),
      ]),
    ),
    doc(
      ["_uuid", "other_config", "external_ids"],
      [...s.queues].map(([u, q]) => [["uuid", u], map(q.otherConfig), map(q.externalIds)]),
    ),
  ].join("\n");
}

const TAKE_OVER = [
  ["clear", "port", "vnet1", "qos"],
  ["destroy", "qos", "q-lv"],
  ["destroy", "queue", "u-lv"],
  ["set", "interface", "vnet1", "ingress_policing_rate=0", "ingress_policing_burst=0"],
];

describe("ovs: tc takes a port with libvirt's QoS and policing over", () => {
  const tcIface = () => iface({ ovs: true, inbound: limit(10), outbound: limit(10) });
  const ovsRoot = { kind: "htb", handle: "1:", parent: "root", options: {} };

  test("untagged QoS + policing: cleared, rows destroyed, policing 0, in that order", () => {
    const d = tcIface();
    assert.equal(takeOverCandidate(d, "tc"), true);
    const [t, ...rest] = ovsTakeOvers([d], stateLibvirt());
    assert.deepEqual(rest, []);
    assert.deepEqual(t.commands, TAKE_OVER);
    assert.deepEqual(ovsVsctlArgs(t.commands, { wait: true }), [
      "--timeout=10",
      "--",
      ...TAKE_OVER.flatMap((c, i) => (i ? ["--", ...c] : c)),
    ]);
    const note = takeOverNote(t);
    assert.deepEqual([note.code, note.level, note.dev], ["OVS_QOS_TAKEN_OVER", "warning", "vnet1"]);
    assert.match(
      note.message,
      /port vnet1 .*QoS q-lv \(type linux-htb, queue 0 min-rate=10000000; row destroyed\)/,
    );
    assert.match(note.message, /ingress_policing_rate=10000 .*guarantee \(min-rate\), not a limit/);
  });

  test("a QoS another port uses too: only this port's reference is cleared", () => {
    const s = stateLibvirt();
    s.ports.set("vnet9", { uuid: "p-vnet9", qos: "q-lv" });
    const [t] = ovsTakeOvers([tcIface()], s);
    assert.deepEqual(t.commands, [TAKE_OVER[0], TAKE_OVER[3]]);
    assert.match(takeOverNote(t).message, /row left: another port uses it/);
  });

  test("only the QoS, only the policing", () => {
    const q = stateLibvirt();
    q.interfaces.set("vnet1", {
      uuid: "i-vnet1",
      policingRateKbitPerSec: 0,
      policingBurstKbit: 0,
      externalIds: {},
    });
    assert.deepEqual(ovsTakeOvers([tcIface()], q)[0].commands, TAKE_OVER.slice(0, 3));
    const p = stateLibvirt();
    p.ports.set("vnet1", { uuid: "p-vnet1" });
    assert.deepEqual(ovsTakeOvers([tcIface()], p)[0].commands, [TAKE_OVER[3]]);
  });

  test("virtqos's own (tagged) rows are never taken over; a free port neither", () => {
    assert.deepEqual(ovsTakeOvers([tcIface()], stateApplied()), []);
    assert.deepEqual(ovsTakeOvers([tcIface()], stateWithPort()), []);
  });

  test("ovs: native is unchanged: no candidate, the foreign QoS is still refused", () => {
    const { d } = native(10, 10);
    assert.equal(takeOverCandidate(d, "native"), false);
    assert.equal(takeOverCandidate(tcIface(), "native"), false);
    assert.equal(takeOverCandidate(iface({ inbound: limit(10) }), "tc"), false, "not an OVS port");
    assert.equal(takeOverCandidate(iface({ ovs: true }), "tc"), false, "nothing to shape");
    const p = planOvs(ovsWants([d]).wants, stateLibvirt(), { inScope, sweep: true });
    assert.deepEqual(
      p.problems.map((x) => x.code),
      ["OVS_QOS_FOREIGN"],
    );
  });

  test("the plan sees the port as ovs-vswitchd leaves it after the takeover", () => {
    const d = tcIface();
    const obs = observed([device("vnet1", { qdiscs: [ovsRoot] })]);
    const raw = plan([d], obs, PRODUCTION, { leaf: "auto", scope: [UUID], sweep: true });
    assert.deepEqual(
      raw.problems.map((x) => x.code),
      ["ROOT_QDISC_FOREIGN"],
    );
    const view = ovsTakenOverView(obs, ovsTakeOvers([d], stateLibvirt()));
    const p = plan([d], view, PRODUCTION, { leaf: "auto", scope: [UUID], sweep: true });
    assert.deepEqual(p.problems, []);
    assert.ok(p.ops.some((o) => o.op === "root-replace" && o.dev === "vnet1"));
  });

  /** prepareOvsNative + plan + finishOvsNative, with OVSDB read from a fake ovs-vsctl. */
  async function engineBlocks(policyText: string, s: OvsState, d: DesiredInterface) {
    const calls: string[][] = [];
    const runner: Runner = {
      async run(cmd, args) {
        calls.push([cmd, ...args]);
        return { code: 0, stdout: args.includes("list") ? vsctlJson(s) : "", stderr: "" };
      },
    };
    const ctx = { runner, log: createLogger({ level: "error", target: "silent" }) };
    const req = { policy: parsePolicy(policyText, "p.yaml"), scope: [UUID] };
    const obs = observed([device("vnet1", { qdiscs: [ovsRoot] })]);
    const prep = await prepareOvsNative(ctx, req, [d], obs, PRODUCTION);
    const p = plan([d], prep.view, PRODUCTION, { leaf: "auto", scope: [UUID], sweep: true });
    const step = finishOvsNative(ctx, req, [d], p, prep);
    return { calls, p, step };
  }

  test("engine blocks, ovs: tc: one waiting ovs-vsctl before the tc batch, then virtqos's tree", async () => {
    const saved = process.env.VIRTQOS_OVSDB;
    delete process.env.VIRTQOS_OVSDB;
    try {
      const { calls, p, step } = await engineBlocks("ovs: tc\n", stateLibvirt(), tcIface());
      assert.deepEqual(p.problems, []);
      assert.ok(p.ops.some((o) => o.op === "root-replace" && o.dev === "vnet1"));
      assert.deepEqual(
        p.notes.filter((n) => n.code === "OVS_QOS_TAKEN_OVER").map((n) => n.dev),
        ["vnet1"],
      );
      const first = ["--timeout=10", "--", ...TAKE_OVER.flatMap((c, i) => (i ? ["--", ...c] : c))];
      assert.deepEqual(step?.argv, [first]);
      assert.ok(!first.includes("--no-wait"), "waits for ovs-vswitchd");
      assert.equal(calls.length, 1, "a plan only reads OVSDB");
      await step?.applyFirst();
      assert.deepEqual(calls[1], ["ovs-vsctl", ...first]);
      assert.equal(await step?.apply(), true);
      assert.equal(calls.length, 2);
    } finally {
      if (saved !== undefined) process.env.VIRTQOS_OVSDB = saved;
    }
  });

  test("engine blocks, ovs: tc, virtqos's own tagged rows: no takeover (they are its own, handed back)", async () => {
    const { p } = await engineBlocks("ovs: tc\n", stateApplied(), tcIface());
    assert.ok(!p.notes.some((n) => n.code === "OVS_QOS_TAKEN_OVER"));
  });

  test("engine blocks, ovs: native: still OVS_QOS_FOREIGN, nothing run", async () => {
    const { d } = native(10, 10);
    delete d.ovsNative; // prepareOvsNative assigns it from the policy
    const { p, step } = await engineBlocks("ovs: native\n", stateLibvirt(), d);
    assert.deepEqual(
      p.problems.map((x) => x.code),
      ["OVS_QOS_FOREIGN"],
    );
    assert.ok(!p.notes.some((n) => n.code === "OVS_QOS_TAKEN_OVER"));
    assert.deepEqual(step?.argv ?? [], []);
  });
});
