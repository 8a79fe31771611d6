import type { HtbClass, Leaf } from "../recipe.js";
import { GROUP_FILTER_PRIO, isDefaultRoot, isOurRoot, tbfChildParent } from "../tc/handles.js";
import {
  type ObservedClass,
  type ObservedDevice,
  type ObservedQdisc,
  printTcRate,
  sameSize,
} from "../tc/normalise.js";
import { sameTreeFilter, type Tree, treeFilterFlowid, treeFilterHandle, u32HandleKey } from "../tc/tree.js";
import type { DiffResult, Op, Tagged } from "./types.js";

// The tree diff: the ops that bring virtqos's root tree on one device (tap, macvtap or IFB) from what the
// kernel has to what is wanted, changing only what differs, in an order the kernel accepts at every step.

/** Bring virtqos's root tree on `dev` from what is observed to `want` (undefined: remove it). */
export function diffTree(dev: string, want: Tree | undefined, obs: ObservedDevice, tag: Tagged): DiffResult {
  const root = obs.qdiscs.find((q) => q.parent === "root");
  const ours = isOurRoot(root);
  if (!want) return { ops: ours ? [{ op: "root-del", dev }] : [] };
  if (!ours && !isDefaultRoot(root)) {
    return {
      problem: {
        code: "ROOT_QDISC_FOREIGN",
        level: "error",
        dev,
        message: `${dev} already has a root qdisc ${root?.kind} ${root?.handle} that virtqos did not create; to remove it: tc qdisc del dev ${dev} root`,
      },
    };
  }
  const ops: Op[] = [];
  const defaultHex = `0x${want.defaultMinor.toString(16)}`;
  if (!ours || String(root?.options.default) !== defaultHex) {
    ops.push({ op: "root-replace", dev, defaultMinor: want.defaultMinor, ...tag });
  }
  // HTB accepts `class replace` under another parent but keeps the old one: a class that moves (a member
  // moved to another child group) is deleted and created again, with its filters taken off meanwhile.
  const moved = new Set<string>();
  for (const c of want.classes) {
    const oc = ours ? obs.classes.find((x) => x.classid === c.classid) : undefined;
    if (oc && oc.parent !== c.parent) {
      moved.add(c.classid);
      ops.push({ op: "class-del", dev, classid: c.classid, ...tag });
    }
    if (!oc || moved.has(c.classid) || !sameClass(oc, c.htb)) {
      ops.push({ op: "class-replace", dev, parent: c.parent, classid: c.classid, htb: c.htb, ...tag });
    }
    if (!c.leaf || !c.leafHandle) continue;
    const ol = ours && !moved.has(c.classid) ? obs.qdiscs.find((q) => q.parent === c.classid) : undefined;
    if (!ol || !sameLeaf(ol, c.leaf, c.leafHandle)) {
      ops.push({ op: "leaf-replace", dev, parent: c.classid, handle: c.leafHandle, leaf: c.leaf, ...tag });
    }
    // A TBF's child qdisc, on TBF's class. `qdisc replace` of a TBF under the handle and kind it already has
    // changes it in place and keeps its child; any other replace grafts a new TBF with the default bfifo child.
    const child = c.leaf.kind === "tbf" ? c.leaf.child : undefined;
    if (child && c.leafChildHandle) {
      const parent = tbfChildParent(c.leafHandle);
      const kept = ol?.kind === c.leaf.kind && ol.handle === c.leafHandle;
      const oc = kept ? obs.qdiscs.find((q) => q.parent === parent) : undefined;
      if (!oc || !sameLeaf(oc, child, c.leafChildHandle)) {
        ops.push({ op: "leaf-replace", dev, parent, handle: c.leafChildHandle, leaf: child, ...tag });
      }
    }
  }
  if (ours) {
    const wanted = new Set(want.classes.map((c) => c.classid));
    // Children before parents: HTB refuses to delete a class that still has children.
    const stale = obs.classes
      .filter((c) => !wanted.has(c.classid))
      .sort((a, b) => depth(b, obs) - depth(a, obs));
    for (const c of stale) ops.push({ op: "class-del", dev, classid: c.classid, ...tag });
  }
  // Filters: stale ones go before classes change (HTB will not delete a class a filter points to),
  // new ones after the classes they point to exist.
  const have = new Map(
    (ours ? obs.filters.filter((f) => f.hook === "class" && f.prio === GROUP_FILTER_PRIO) : []).map((f) => [
      u32HandleKey(f.handle ?? ""),
      f,
    ]),
  );
  const before: Op[] = [];
  const after: Op[] = [];
  const wantFilters = want.filters ?? [];
  for (const f of wantFilters) {
    const handle = treeFilterHandle(f);
    const o = have.get(u32HandleKey(handle));
    if (o && sameTreeFilter(o, f) && !moved.has(treeFilterFlowid(f) ?? "")) continue;
    if (o) before.push({ op: "tree-filter-del", dev, prio: GROUP_FILTER_PRIO, handle, ...tag });
    after.push({ op: "tree-filter-add", dev, prio: GROUP_FILTER_PRIO, filter: f, ...tag });
  }
  const wantedHandles = new Set(wantFilters.map((f) => u32HandleKey(treeFilterHandle(f))));
  // Member filters before the hash table and link that hold them.
  const staleFilters = [...have.values()]
    .filter((f) => f.handle && !wantedHandles.has(u32HandleKey(f.handle)))
    .sort((a, b) => (b.handle ?? "").split(":").length - (a.handle ?? "").split(":").length);
  const staleDels: Op[] = staleFilters.map((f) => ({
    op: "tree-filter-del",
    dev,
    prio: GROUP_FILTER_PRIO,
    handle: f.handle!,
    ...tag,
  }));
  return { ops: [...staleDels, ...before, ...ops, ...after] };
}

function depth(c: ObservedClass, obs: ObservedDevice): number {
  let n = 0;
  let p: string | undefined = c.parent;
  while (p && !p.endsWith(":") && n < 8) {
    n++;
    p = obs.classes.find((x) => x.classid === p)?.parent;
  }
  return n;
}

export function sameClass(o: ObservedClass, h: HtbClass): boolean {
  return (
    o.rateText === printTcRate(h.rateBytesPerSec * 8) &&
    o.ceilText === printTcRate(h.ceilBytesPerSec * 8) &&
    sameSize(o.burstBytes, h.burstBytes) &&
    sameSize(o.cburstBytes, h.cburstBytes) &&
    (o.quantumBytes === undefined || o.quantumBytes === h.quantumBytes)
  );
}

/** Whether an observed qdisc is `leaf` under `handle`. A TBF's child is its own qdisc, compared on its own. */
export function sameLeaf(q: ObservedQdisc, leaf: Leaf, handle: string): boolean {
  if (q.kind !== leaf.kind || q.handle !== handle) return false;
  if (leaf.kind === "bfifo") return Number(q.options.limit) === leaf.limitBytes;
  if (leaf.kind === "sfq") return Number(q.options.limit) === leaf.limitPackets;
  if (leaf.kind === "tbf") {
    // tc shows TBF's queue limit only as "lat" (µs the queue may hold at `rate`, net of the burst).
    const latUs = ((leaf.limitBytes - leaf.burstBytes) / leaf.rateBytesPerSec) * 1e6;
    return (
      Math.abs(Number(q.options.lat) - latUs) <= Math.max(2, latUs * 0.02) &&
      printTcRate(Number(q.options.rate) * 8) === printTcRate(leaf.rateBytesPerSec * 8)
    );
  }
  return true;
}
