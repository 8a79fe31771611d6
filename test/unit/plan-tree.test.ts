import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { Op, Tree, TreeFilter } from "../../src/core/plan/index.js";
import { diffTree, sameClass, sameLeaf } from "../../src/core/plan/tree.js";
import { htbClass } from "../../src/core/recipe.js";
import { FakeKernel } from "../helpers/fake-kernel.js";
import { device } from "../helpers/plan-fixtures.js";

const cls = (mbit: number) => htbClass({ rateBitsPerSec: mbit * 1e6, ceilBitsPerSec: mbit * 1e6 });
const bfifo = { kind: "bfifo", limitBytes: 75_000 } as const;
const member = (node: number, mac: string, flowid = `7651:${node.toString(16)}`): TreeFilter => ({
  kind: "member",
  table: "100:",
  bucket: Number.parseInt(mac.slice(-2), 16),
  node,
  field: "dst",
  mac,
  flowid,
});
/** A small group tree: top 7651:1, two child groups, members under them with their MAC filters. */
function groupTree(members: { minor: number; mac: string; parent: string }[]): Tree {
  return {
    defaultMinor: 2,
    classes: [
      { classid: "7651:1", parent: "7651:", htb: cls(100) },
      { classid: "7651:10", parent: "7651:1", htb: cls(30) },
      { classid: "7651:20", parent: "7651:1", htb: cls(30) },
      ...members.map((m) => ({
        classid: `7651:${m.minor.toString(16)}`,
        parent: m.parent,
        htb: cls(10),
        leaf: bfifo,
        leafHandle: `${m.minor.toString(16)}:`,
      })),
    ],
    filters: [
      { kind: "hash-table", table: "100:", buckets: 256 },
      { kind: "hash-link", table: "100:", field: "dst" },
      ...members.map((m) => member(m.minor, m.mac)),
    ],
  };
}
const describeOp = (o: Op) =>
  o.op === "class-del" || o.op === "class-replace"
    ? `${o.op} ${o.classid}`
    : o.op === "tree-filter-del"
      ? `${o.op} ${o.handle}`
      : o.op === "tree-filter-add"
        ? `${o.op} ${o.filter.kind}${o.filter.kind === "member" ? ` ${o.filter.node.toString(16)}` : ""}`
        : o.op === "leaf-replace"
          ? `${o.op} ${o.parent}`
          : o.op;

/** A fake kernel holding `tree` on ifb0, and the ops that bring it to `next` (applied, then checked converged). */
function change(tree: Tree, next: Tree): string[] {
  const k = new FakeKernel();
  k.addLink("ifb0", { kind: "ifb" });
  const first = diffTree("ifb0", tree, device("ifb0"), {});
  assert.ok("ops" in first);
  k.apply(first.ops);
  const res = diffTree("ifb0", next, k.observe().devices.get("ifb0")!, {});
  assert.ok("ops" in res);
  k.apply(res.ops);
  const again = diffTree("ifb0", next, k.observe().devices.get("ifb0")!, {});
  assert.deepEqual(again, { ops: [] }, "converged");
  return res.ops.map(describeOp);
}

describe("diffTree", () => {
  test("a foreign root qdisc is someone else's: refused, with the tc line that removes it", () => {
    const res = diffTree(
      "vnet1",
      groupTree([]),
      device("vnet1", { qdiscs: [{ kind: "htb", handle: "1:", parent: "root", options: {} }] }),
      {},
    );
    assert.ok("problem" in res);
    assert.equal(res.problem.code, "ROOT_QDISC_FOREIGN");
    assert.match(res.problem.message, /tc qdisc del dev vnet1 root/);
  });

  test("from nothing: root, then classes (parents first) and leaves, then the table, link and members", () => {
    const res = diffTree(
      "ifb0",
      groupTree([{ minor: 0x1a2, mac: "52:54:00:00:00:01", parent: "7651:10" }]),
      device("ifb0"),
      {},
    );
    assert.ok("ops" in res);
    assert.deepEqual(res.ops.map(describeOp), [
      "root-replace",
      "class-replace 7651:1",
      "class-replace 7651:10",
      "class-replace 7651:20",
      "class-replace 7651:1a2",
      "leaf-replace 7651:1a2",
      "tree-filter-add hash-table",
      "tree-filter-add hash-link",
      "tree-filter-add member 1a2",
    ]);
  });

  test("no want: the root goes (taking everything under it), if it is virtqos's", () => {
    assert.deepEqual(diffTree("vnet1", undefined, device("vnet1"), {}), { ops: [] });
    const ours = device("vnet1", { qdiscs: [{ kind: "htb", handle: "7651:", parent: "root", options: {} }] });
    assert.deepEqual(diffTree("vnet1", undefined, ours, {}), { ops: [{ op: "root-del", dev: "vnet1" }] });
  });

  test("a member leaves: its filter before its class", () => {
    const a = { minor: 0x1a2, mac: "52:54:00:00:00:01", parent: "7651:10" };
    const b = { minor: 0x3c0, mac: "52:54:00:00:02:1f", parent: "7651:10" };
    assert.deepEqual(change(groupTree([a, b]), groupTree([a])), [
      "tree-filter-del 100:1f:3c0",
      "class-del 7651:3c0",
    ]);
  });

  test("a member moves to the other child group: its class is made again, its filter taken off meanwhile", () => {
    const a = { minor: 0x1a2, mac: "52:54:00:00:00:01", parent: "7651:10" };
    assert.deepEqual(change(groupTree([a]), groupTree([{ ...a, parent: "7651:20" }])), [
      "tree-filter-del 100:1:1a2",
      "class-del 7651:1a2",
      "class-replace 7651:1a2",
      "leaf-replace 7651:1a2",
      "tree-filter-add member 1a2",
    ]);
  });

  test("another guest's MAC under the same handle (a minor reused in the same bucket): the filter is replaced", () => {
    const a = { minor: 0x1a2, mac: "52:54:00:00:00:01", parent: "7651:10" };
    assert.deepEqual(change(groupTree([a]), groupTree([{ ...a, mac: "52:54:00:00:77:01" }])), [
      "tree-filter-del 100:1:1a2",
      "tree-filter-add member 1a2",
    ]);
  });

  test("a MAC ending in 00 (tc prints its handle 100::1a4) is not re-added on every apply", () => {
    const z = { minor: 0x1a4, mac: "52:54:00:00:03:00", parent: "7651:10" };
    assert.deepEqual(change(groupTree([z]), groupTree([z])), []);
  });

  test("stale classes go children first, after the filters that point to them", () => {
    const a = { minor: 0x1a2, mac: "52:54:00:00:00:01", parent: "7651:10" };
    const without = groupTree([]);
    const smaller: Tree = { ...without, classes: without.classes.filter((c) => c.classid !== "7651:10") };
    assert.deepEqual(change(groupTree([a]), smaller), [
      "tree-filter-del 100:1:1a2",
      "class-del 7651:1a2",
      "class-del 7651:10",
    ]);
  });
});

describe("sameClass / sameLeaf", () => {
  test("compared as tc shows them: rates as printed, sizes within tc's rounding", () => {
    const h = cls(30);
    const o = {
      classid: "7651:1",
      parent: "7651:",
      rateText: "30Mbit",
      ceilText: "30Mbit",
      rateBitsPerSec: 30e6,
      ceilBitsPerSec: 30e6,
      burstBytes: h.burstBytes - 7,
      cburstBytes: h.cburstBytes,
      quantumBytes: h.quantumBytes,
    };
    assert.ok(sameClass(o, h));
    assert.ok(!sameClass({ ...o, ceilText: "40Mbit" }, h));
    assert.ok(!sameClass({ ...o, quantumBytes: 1514 }, h));
  });

  test("a leaf of another kind or handle is another leaf", () => {
    const q = { kind: "bfifo", handle: "7652:", parent: "7651:1", options: { limit: 75_000 } };
    assert.ok(sameLeaf(q, bfifo, "7652:"));
    assert.ok(!sameLeaf(q, bfifo, "7655:"));
    assert.ok(!sameLeaf(q, { kind: "bfifo", limitBytes: 1 }, "7652:"));
    assert.ok(!sameLeaf(q, { kind: "fq_codel" }, "7652:"));
  });
});
