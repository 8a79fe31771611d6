import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  classidOf,
  GROUP_FILTER_PRIO,
  groupLeafHandle,
  groupLeafHandles,
  HOOK_PARENT,
  IFACE_CLASSID,
  IFACE_LEAF_CHILD_HANDLE,
  IFACE_LEAF_HANDLES,
  ifaceLeafHandles,
  isDefaultRoot,
  isOurPrio,
  isOurRoot,
  PRIO_MAX,
  PRIO_MIN,
  PRIO_REDIRECT,
  PRIO_REDIRECT_EGRESS,
  ROOT_HANDLE,
  ROOT_MAJOR,
  tbfChildParent,
} from "../../src/core/tc/handles.js";

describe("tc handles and priorities", () => {
  test("virtqos's numbers", () => {
    assert.equal(ROOT_MAJOR, "7651");
    assert.equal(ROOT_HANDLE, "7651:");
    assert.equal(IFACE_CLASSID, "7651:1");
    assert.equal(classidOf(0x1a2), "7651:1a2");
    assert.equal(HOOK_PARENT, "ffff:fff1");
    assert.equal(PRIO_REDIRECT, 64000);
    assert.equal(PRIO_REDIRECT_EGRESS, 64001);
    assert.equal(GROUP_FILTER_PRIO, 64010);
  });

  test("every priority virtqos writes is in its range, and the range fits tc's 16 bits", () => {
    for (const p of [PRIO_REDIRECT, PRIO_REDIRECT_EGRESS, GROUP_FILTER_PRIO])
      assert.ok(isOurPrio(p), String(p));
    assert.ok(!isOurPrio(PRIO_MIN - 1) && !isOurPrio(PRIO_MAX + 1));
    assert.ok(!isOurPrio(49152), "libvirt's <bandwidth> filter is someone else's");
    assert.ok(PRIO_MAX <= 0xffff);
  });

  test("per-interface leaves: one handle per kind, none of them the root's", () => {
    const handles = Object.values(IFACE_LEAF_HANDLES);
    assert.deepEqual(handles, ["7652:", "7653:", "7654:", "7655:", "7656:"]);
    assert.ok(!handles.includes(ROOT_HANDLE));
    assert.ok(!handles.includes(IFACE_LEAF_CHILD_HANDLE));
  });

  test("a tbf with a child is its own kind; the child hangs on the tbf's class", () => {
    const tbf = { kind: "tbf", rateBytesPerSec: 2_500_000, burstBytes: 3028, limitBytes: 25_000 } as const;
    const split = { ...tbf, child: { kind: "fq_codel" } } as const;
    assert.deepEqual(ifaceLeafHandles(tbf), { leafHandle: "7655:" });
    assert.deepEqual(ifaceLeafHandles(split), { leafHandle: "7656:", leafChildHandle: "7657:" });
    assert.deepEqual(ifaceLeafHandles({ kind: "fq_codel" }), { leafHandle: "7654:" });
    assert.deepEqual(groupLeafHandles(tbf, 0x1a2), { leafHandle: "11a2:" });
    assert.deepEqual(groupLeafHandles(split, 0x1a2), { leafHandle: "41a2:", leafChildHandle: "51a2:" });
    assert.equal(tbfChildParent("7656:"), "7656:1");
    assert.equal(tbfChildParent("41a2:"), "41a2:1");
  });

  test("group leaves: kind in the top 4 bits, the class minor below, unique per class and kind", () => {
    assert.equal(groupLeafHandle("bfifo", 2), "2:");
    assert.equal(groupLeafHandle("tbf", 0x1a2), "11a2:");
    assert.equal(groupLeafHandle("sfq", 0xffe), "2ffe:");
    assert.equal(groupLeafHandle("fq_codel", 0x100), "3100:");
    assert.equal(groupLeafHandle("tbf+fq_codel", 0xffe), "4ffe:");
    const seen = new Set<string>();
    const split = {
      kind: "tbf",
      rateBytesPerSec: 2_500_000,
      burstBytes: 3028,
      limitBytes: 25_000,
      child: { kind: "fq_codel" },
    } as const;
    for (const minor of [2, 0x100, 0x1a2, 0xffe]) {
      for (const kind of ["bfifo", "tbf", "sfq", "fq_codel", "tbf+fq_codel"] as const)
        seen.add(groupLeafHandle(kind, minor));
      seen.add(groupLeafHandles(split, minor).leafChildHandle ?? "");
    }
    assert.equal(seen.size, 24);
    for (const h of seen) assert.notEqual(h, ROOT_HANDLE);
  });

  test("whose root qdisc: virtqos's HTB 7651:, the kernel's default (replaceable), or someone's", () => {
    const q = (kind: string, handle: string) => ({ kind, handle, parent: "root", options: {} });
    assert.ok(isOurRoot(q("htb", "7651:")));
    assert.ok(!isOurRoot(q("htb", "1:")));
    assert.ok(!isOurRoot(undefined));
    assert.ok(isDefaultRoot(undefined));
    assert.ok(isDefaultRoot(q("noqueue", "0:")));
    assert.ok(isDefaultRoot(q("pfifo_fast", "0:")));
    assert.ok(!isDefaultRoot(q("htb", "1:")));
  });
});
