import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { formatIfbAlias } from "../../src/core/names.js";
import { planRestore, treeFromObserved } from "../../src/core/plan/restore.js";
import type { Observed } from "../../src/core/plan/types.js";
import type { ObservedClass } from "../../src/core/tc/normalise.js";
import { THIS_KERNEL } from "../helpers/caps.js";
import { clsact, device, hookFilter, link, observed } from "../helpers/plan-fixtures.js";

const root = { kind: "htb", handle: "7651:", parent: "root", options: { default: "0x2" } };
const cls = (classid: string, parent: string): ObservedClass => ({
  classid,
  parent,
  rateText: "30Mbit",
  ceilText: "30Mbit",
  rateBitsPerSec: 30e6,
  ceilBitsPerSec: 30e6,
  burstBytes: 62_493,
  cburstBytes: 67_050,
  quantumBytes: 37_500,
});
const GROUP_IFB = device("vqdgroup", {
  qdiscs: [root, { kind: "bfifo", handle: "1a2:", parent: "7651:1a2", options: { limit: 75_000 } }],
  // As the kernel may list them: a child before its parent.
  classes: [cls("7651:1a2", "7651:10"), cls("7651:10", "7651:1"), cls("7651:1", "7651:")],
  filters: [
    hookFilter({ hook: "class", parent: "7651:", prio: 64010, handle: "100:", divisor: 256, matches: [] }),
    hookFilter({
      hook: "class",
      parent: "7651:",
      prio: 64010,
      handle: "100:1:1a2",
      flowid: "7651:1a2",
      matches: ["5254/ffff@-16", "1/ffffffff@-12"],
    }),
    hookFilter({
      hook: "class",
      parent: "7651:",
      prio: 64010,
      link: "100:",
      hashKey: { mask: 0xff, offsetBytes: -12 },
    }),
  ],
});

describe("treeFromObserved", () => {
  test("only virtqos's root tree", () => {
    assert.equal(treeFromObserved(undefined), undefined);
    assert.equal(treeFromObserved(device("vnet1")), undefined);
  });

  test("a group tree: classes parents first, leaves only where there were, the classification filters", () => {
    const t = treeFromObserved(GROUP_IFB);
    assert.equal(t?.defaultMinor, 2);
    assert.deepEqual(
      t?.classes.map((c) => [c.classid, c.leafHandle ?? "-"]),
      [
        ["7651:1", "-"],
        ["7651:10", "-"],
        ["7651:1a2", "1a2:"],
      ],
    );
    assert.deepEqual(t?.filters, [
      { kind: "hash-table", table: "100:", buckets: 256 },
      { kind: "hash-link", table: "100:", field: "dst" },
      {
        kind: "member",
        table: "100:",
        bucket: 1,
        node: 0x1a2,
        field: "dst",
        mac: "52:54:00:00:00:01",
        flowid: "7651:1a2",
      },
    ]);
  });

  test("a tbf leaf with fq_codel on its class reads back as the GSO-splitting stage, child handle and all", () => {
    const tbf = {
      kind: "tbf",
      handle: "7656:",
      parent: "7651:1",
      options: { rate: 2_500_000, burst: 3027, lat: 8789 },
    };
    const fq = { kind: "fq_codel", handle: "7657:", parent: "7656:1", options: { limit: 10240 } };
    const t = treeFromObserved(
      device("vnet1", { qdiscs: [root, fq, tbf], classes: [cls("7651:1", "7651:")] }),
    );
    const c = t?.classes[0];
    assert.equal(c?.leafHandle, "7656:");
    assert.equal(c?.leafChildHandle, "7657:");
    assert.deepEqual(c?.leaf?.kind === "tbf" && c.leaf.child, { kind: "fq_codel" });
    // The default bfifo a tbf makes for itself is not listed: a tbf alone is the TBF FIFO.
    const alone = treeFromObserved(
      device("vnet1", { qdiscs: [root, tbf], classes: [cls("7651:1", "7651:")] }),
    );
    assert.equal(alone?.classes[0].leafChildHandle, undefined);
    assert.equal(alone?.classes[0].leaf?.kind === "tbf" && alone.classes[0].leaf.child, undefined);
  });

  test("bucket sizes as tc would show them again: 62493 read, a size that shows 62493 given", () => {
    const htb = treeFromObserved(GROUP_IFB)?.classes[0].htb;
    assert.equal(htb?.cburstBytes, 67_050, "a size that shows as itself is kept");
    assert.notEqual(htb?.burstBytes, 62_493, "62493 would show as 62490");
  });
});

describe("planRestore", () => {
  const ifbLink = (name: string) =>
    link(name, { kind: "ifb", alias: formatIfbAlias({ role: "group", group: "g", direction: "inbound" }) });
  const tap = device("vnet1", {
    qdiscs: [{ kind: "noqueue", handle: "0:", parent: "root", options: {} }, clsact],
    filters: [hookFilter({ hook: "egress", prio: 64001, redirectDev: "vqdgroup" })],
  });
  const withIfb: Observed = observed([{ ...GROUP_IFB }, tap], [ifbLink("vqdgroup")]);
  const bare: Observed = observed([device("vnet1")]);

  test("an IFB and a hook qdisc created since go; the IFB after the redirect into it", () => {
    const ops = planRestore(bare, withIfb, ["vqdgroup", "vnet1"], THIS_KERNEL);
    assert.deepEqual(
      ops.map((o) => `${o.op} ${o.dev}`),
      ["filter-del vnet1", "hook-del vnet1", "ifb-del vqdgroup"],
    );
  });

  test("a virtqos IFB deleted since comes back, its whole tree before the redirect into it; a tap does not", () => {
    const ops = planRestore(withIfb, bare, ["vnet1", "vqdgroup", "vnet9"], THIS_KERNEL);
    assert.deepEqual(
      ops.map((o) => `${o.op} ${o.dev}`),
      [
        "ifb-add vqdgroup",
        "link-up vqdgroup",
        "root-replace vqdgroup",
        "class-replace vqdgroup",
        "class-replace vqdgroup",
        "class-replace vqdgroup",
        "leaf-replace vqdgroup",
        "tree-filter-add vqdgroup",
        "tree-filter-add vqdgroup",
        "tree-filter-add vqdgroup",
        "hook-add vnet1",
        "filter-add vnet1",
      ],
    );
    assert.deepEqual(ops[0], { op: "ifb-add", dev: "vqdgroup", alias: "virtqos/1,group,g,inbound" });
  });

  test("nothing changed: nothing to do", () => {
    assert.deepEqual(planRestore(withIfb, withIfb, ["vnet1", "vqdgroup"], THIS_KERNEL), []);
  });
});
