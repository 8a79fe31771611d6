import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { groupIfbName, interfaceIfbName } from "../../src/core/names.js";
import { recordIfb } from "../../src/core/plan/records.js";
import { hookFor, interfaceWants } from "../../src/core/plan/wants.js";
import { NO_IFB, PRODUCTION, THIS_KERNEL } from "../helpers/caps.js";
import { iface, limit, link, links, MAC, UUID } from "../helpers/plan-fixtures.js";

const TAP = links(link("vnet1"), link("macvtap1"));
const wants = (d = [iface()], caps = THIS_KERNEL, admitted = new Map<string, number>()) =>
  interfaceWants(d, TAP, admitted, caps, "auto");

describe("hookFor", () => {
  test("download on the tap's root and upload on its ingress; swapped on a macvtap", () => {
    assert.equal(hookFor("inbound", false), "root");
    assert.equal(hookFor("outbound", false), "ingress");
    assert.equal(hookFor("inbound", true), "ingress");
    assert.equal(hookFor("outbound", true), "root");
  });
});

describe("interfaceWants", () => {
  test("a tap: its tree on the root for download, an IFB for upload with the redirect into it", () => {
    const w = wants([iface({ inbound: limit(30), outbound: limit(10) })]);
    const ifb = interfaceIfbName(UUID, MAC);
    const dev = w.devices.get("vnet1");
    assert.equal(dev?.tree?.classes[0].htb.rateBytesPerSec, 30e6 / 8);
    assert.deepEqual(dev?.treeTag, { iface: `${UUID}/${MAC}`, direction: "inbound" });
    assert.deepEqual(
      dev?.filters.map((f) => [f.hook, f.prio, f.filter]),
      [["ingress", 64000, { action: "redirect", toDev: ifb }]],
    );
    assert.deepEqual([...w.ifbs.keys()], [ifb]);
    assert.equal(w.ifbs.get(ifb)?.tree.classes[0].htb.rateBytesPerSec, 10e6 / 8);
    assert.equal(w.ifbs.get(ifb)?.alias, `virtqos/1,iface,${UUID},${MAC},vnet1`);
    const rec = w.records.get(UUID)?.interfaces[0];
    assert.ok(rec);
    assert.ok(!("ifb" in rec) && !("swapped" in rec), "derivable fields are not recorded");
    assert.equal(recordIfb(UUID, rec), ifb);
    assert.equal(rec.inbound?.rateBitsPerSec, 30e6);
    assert.deepEqual([w.problems, w.notes], [[], []]);
  });

  test("a macvtap: download through the IFB, upload on its root", () => {
    const w = wants([
      iface({ dev: "macvtap1", type: "direct", swapped: true, inbound: limit(30), outbound: limit(10) }),
    ]);
    const ifb = interfaceIfbName(UUID, MAC);
    assert.equal(w.devices.get("macvtap1")?.tree?.classes[0].htb.rateBytesPerSec, 10e6 / 8);
    assert.equal(w.ifbs.get(ifb)?.tree.classes[0].htb.rateBytesPerSec, 30e6 / 8);
    const rec = w.records.get(UUID)?.interfaces[0];
    assert.equal(rec && recordIfb(UUID, rec), ifb);
  });

  test("police: a police filter on the ingress hook, no IFB; refused where the kernel lacks police", () => {
    const d = iface({ outbound: limit(20, { mode: "police" }) });
    const w = wants([d], PRODUCTION);
    assert.equal(w.ifbs.size, 0);
    assert.deepEqual(w.devices.get("vnet1")?.filters[0].filter, {
      action: "police",
      rateBytesPerSec: 2_500_000,
      burstBytes: 2_560_000,
    });
    const refused = wants([d], THIS_KERNEL);
    assert.deepEqual(
      refused.problems.map((p) => p.code),
      ["POLICE_UNAVAILABLE"],
    );
    assert.equal(refused.devices.get("vnet1")?.filters.length, 0);
  });

  test("no IFB in this kernel: upload refused, download still wanted", () => {
    const w = wants([iface({ inbound: limit(30), outbound: limit(10) })], NO_IFB);
    assert.deepEqual(
      w.problems.map((p) => p.code),
      ["IFB_UNAVAILABLE"],
    );
    assert.ok(w.devices.get("vnet1")?.tree);
    // The problem names the interface: finishRecords moves it to `refused` (plan-records.test.ts).
    assert.deepEqual(
      w.problems.map((p) => p.iface),
      [`${UUID}/${MAC}`],
    );
  });

  test("a group member: redirects into the group's IFBs (egress 64001 for download), no tree of its own", () => {
    const group = {
      tree: "web",
      path: ["web"],
      via: "select.domains",
      inbound: { floorBitsPerSec: 10e6, ceilBitsPerSec: 30e6 },
      outbound: { floorBitsPerSec: 10e6, ceilBitsPerSec: 30e6 },
    };
    const key = `${UUID}/${MAC}`;
    const admitted = new Map([
      [`${key}|inbound`, 0x1a2],
      [`${key}|outbound`, 0x1a2],
    ]);
    const w = wants([iface({ group })], THIS_KERNEL, admitted);
    const dev = w.devices.get("vnet1");
    assert.equal(dev?.tree, undefined);
    assert.deepEqual(
      dev?.filters.map((f) => [f.hook, f.prio, f.filter]),
      [
        ["egress", 64001, { action: "redirect", toDev: groupIfbName("web", "inbound") }],
        ["ingress", 64000, { action: "redirect", toDev: groupIfbName("web", "outbound") }],
      ],
    );
    assert.equal(w.records.get(UUID)?.interfaces[0].group?.inbound?.minor, 0x1a2);
    // Not admitted: the group's ceiling as its own limit.
    const alone = wants([iface({ group })]);
    assert.equal(alone.devices.get("vnet1")?.tree?.classes[0].htb.ceilBytesPerSec, 30e6 / 8);
    assert.equal(alone.records.get(UUID)?.interfaces[0].group, undefined);
  });

  test("notes: not enforceable (recorded), no limits, no device yet; a burst deeper than tc can express", () => {
    const w = wants([
      iface({ key: "a", dev: undefined, type: "vhostuser", notEnforceable: "no netdev", inbound: limit(1) }),
      iface({ key: "b" }),
      iface({ key: "c", dev: "vnet9", inbound: limit(1) }),
      iface({ key: "d", inbound: limit(1, { burstBytes: 2 ** 31 }) }),
    ]);
    assert.deepEqual(
      w.notes.map((n) => [n.iface, n.level, n.code]),
      [
        ["a", "warning", "NOT_ENFORCEABLE"],
        ["b", "warning", "NO_LIMITS"],
        ["c", "info", "DEVICE_ABSENT"],
        ["d", "warning", "BURST_ADJUSTED"],
      ],
    );
    assert.match(w.notes[3].message, /inbound burst lowered from/);
    assert.deepEqual(
      w.records.get(UUID)?.interfaces.map((i) => i.notEnforceable ?? i.dev),
      ["no netdev", "vnet1"],
    );
  });
});
