import { parseIfbAlias } from "../names.js";
import type { Capabilities, ChildLeaf, Leaf } from "../recipe.js";
import { GROUP_FILTER_PRIO, HOOK_PARENT, isOurPrio, isOurRoot, tbfChildParent } from "../tc/handles.js";
import type { ObservedDevice, ObservedQdisc } from "../tc/normalise.js";
import { bucketBytesShownAs, tbfShownAs } from "../tc/ticks.js";
import { type Tree, type TreeFilter, treeFilterFromObserved } from "../tc/tree.js";
import { emptyDevice } from "./devices.js";
import { diffHooks } from "./hooks.js";
import { diffTree } from "./tree.js";
import type { Hook, HookFilter, HookWant, Observed, Op } from "./types.js";

// Restore: the ops that take devices back to a state observed earlier. A failed batch is rolled back with
// them, and so is a transaction. Only virtqos's own objects are put back: its trees (classes, leaves and a
// group tree's classification filters), its hook filters, the hook qdiscs and IFBs it created.

/** Where a filter sits among a tree's u32 objects: a table before what links to it or lives in it. */
const FILTER_ORDER: Record<TreeFilter["kind"], number> = { "hash-table": 0, "hash-link": 1, member: 2 };

/** The tree virtqos had on a device, read back from the kernel, so a failed apply can be rolled back to it. */
export function treeFromObserved(obs: ObservedDevice | undefined): Tree | undefined {
  const root = obs?.qdiscs.find((q) => q.parent === "root");
  if (!obs || !isOurRoot(root)) return undefined;
  const classes: Tree["classes"] = [];
  for (const c of obs.classes) {
    const leafQ = obs.qdiscs.find((q) => q.parent === c.classid);
    const leaf = leafFromObserved(leafQ);
    // A TBF's child qdisc (fq_codel behind the GSO-splitting TBF), on TBF's class. The default bfifo a TBF
    // creates for itself is not listed by the kernel: a TBF without a visible child is the TBF FIFO.
    const childQ =
      leaf?.kind === "tbf" && leafQ
        ? obs.qdiscs.find((q) => q.parent === tbfChildParent(leafQ.handle))
        : undefined;
    const child = childLeafFromObserved(childQ);
    if (leaf?.kind === "tbf" && child) leaf.child = child;
    const rateBytesPerSec = Math.round(c.rateBitsPerSec / 8);
    const ceilBytesPerSec = Math.round(c.ceilBitsPerSec / 8);
    classes.push({
      classid: c.classid,
      parent: c.parent,
      htb: {
        rateBytesPerSec,
        ceilBytesPerSec,
        burstBytes: bucketBytesShownAs(rateBytesPerSec, c.burstBytes),
        cburstBytes: bucketBytesShownAs(ceilBytesPerSec, c.cburstBytes),
        quantumBytes: c.quantumBytes ?? 1514,
      },
      // Only where there was one: inner classes (group trees) have none, and HTB refuses one there.
      ...(leaf && leafQ ? { leaf, leafHandle: leafQ.handle } : {}),
      ...(child && childQ ? { leafChildHandle: childQ.handle } : {}),
    });
  }
  // The kernel lists classes in its own order; a class must exist before its children are created.
  const depth = (classid: string): number => {
    let n = 0;
    for (let p = classes.find((c) => c.classid === classid)?.parent; p && n < 8; n++)
      p = classes.find((c) => c.classid === p)?.parent;
    return n;
  };
  classes.sort((a, b) => depth(a.classid) - depth(b.classid));
  const filters = obs.filters
    .filter((f) => f.hook === "class" && f.prio === GROUP_FILTER_PRIO)
    .flatMap((f) => {
      const t = treeFilterFromObserved(f);
      return t ? [t] : [];
    })
    .sort(
      (a, b) =>
        FILTER_ORDER[a.kind] - FILTER_ORDER[b.kind] ||
        (a.kind === "member" && b.kind === "member" ? a.node - b.node : 0),
    );
  return {
    defaultMinor: Number.parseInt(String(root?.options.default ?? "0x1"), 16) || 1,
    classes,
    filters,
  };
}

function leafFromObserved(q: ObservedQdisc | undefined): Leaf | undefined {
  switch (q?.kind) {
    case "bfifo":
      return { kind: "bfifo", limitBytes: Number(q.options.limit) };
    case "sfq":
      return { kind: "sfq", limitPackets: Number(q.options.limit) };
    case "fq_codel":
      return { kind: "fq_codel" };
    case "tbf": {
      const burstBytes = Number(q.options.burst ?? 3028);
      const rateBytesPerSec = Number(q.options.rate);
      const latUs = Number(q.options.lat);
      const exact = tbfShownAs(rateBytesPerSec, burstBytes, latUs);
      if (exact) return { kind: "tbf", rateBytesPerSec, ...exact };
      // tc shows the queue limit only as "lat", the µs the queue holds at `rate` beyond the burst.
      const limitBytes = Math.round((latUs / 1e6) * rateBytesPerSec + burstBytes);
      return { kind: "tbf", rateBytesPerSec, burstBytes, limitBytes };
    }
    default:
      return undefined;
  }
}

/** The qdisc under a TBF leaf, where it is one virtqos puts there. */
function childLeafFromObserved(q: ObservedQdisc | undefined): ChildLeaf | undefined {
  return q?.kind === "fq_codel" ? { kind: "fq_codel" } : undefined;
}

/** virtqos's filters on a device's hooks, as observed, to be wanted again. */
function hookWantsFromObserved(obs: ObservedDevice | undefined): HookWant[] {
  return (obs?.filters ?? [])
    .filter((f) => f.hook !== "class" && isOurPrio(f.prio))
    .flatMap((f) => {
      const rateBytesPerSec = Math.round((f.police?.rateBitsPerSec ?? 0) / 8);
      const filter: HookFilter | undefined = f.redirectDev
        ? { action: "redirect", toDev: f.redirectDev }
        : f.police
          ? {
              action: "police",
              rateBytesPerSec,
              burstBytes: bucketBytesShownAs(rateBytesPerSec, f.police.burstBytes),
            }
          : undefined;
      return filter ? [{ hook: f.hook as Hook, prio: f.prio, filter, tag: {} }] : [];
    });
}

/**
 * Operations that take `devs` from how `after` has them back to how `before` had them: virtqos's own trees
 * and filters as they were, hook qdiscs and IFBs created since removed, virtqos IFBs deleted since created
 * again (with their alias, then their tree, before any redirect into them).
 */
export function planRestore(
  before: Observed,
  after: Observed,
  devs: Iterable<string>,
  caps: Capabilities,
): Op[] {
  const pre: Op[] = [];
  const recreated: Op[] = [];
  const ops: Op[] = [];
  const post: Op[] = [];
  // IFBs first, as plan() does: a tree is complete before a redirect feeds it, and a member's class and filter
  // go before its tap stops redirecting.
  const isIfb = (dev: string) =>
    parseIfbAlias(before.links.get(dev)?.alias ?? after.links.get(dev)?.alias) !== undefined;
  const ordered = [...devs];
  for (const dev of [...ordered.filter(isIfb), ...ordered.filter((d) => !isIfb(d))]) {
    const b = before.devices.get(dev);
    const beforeLink = before.links.get(dev);
    const a = after.devices.get(dev);
    if (!after.links.has(dev) || !a) {
      // Only an IFB of virtqos's comes back: a tap that went away went with its guest.
      const alias = beforeLink?.alias;
      if (after.links.has(dev) || !alias || !parseIfbAlias(alias)) continue;
      pre.push({ op: "ifb-add", dev, alias });
      if (beforeLink.up) pre.push({ op: "link-up", dev });
      const tree = diffTree(dev, treeFromObserved(b), emptyDevice(dev), {});
      if ("ops" in tree) recreated.push(...tree.ops);
      continue;
    }
    if (!beforeLink) {
      if (parseIfbAlias(after.links.get(dev)?.alias)) post.push({ op: "ifb-del", dev });
      continue;
    }
    const tree = diffTree(dev, treeFromObserved(b), a, {});
    if ("ops" in tree) ops.push(...tree.ops);
    const hadHook = b?.qdiscs.some((q) => q.parent === HOOK_PARENT) ?? false;
    const hooks = diffHooks(dev, hookWantsFromObserved(b), a, caps, !hadHook, false);
    if ("ops" in hooks) ops.push(...hooks.before, ...hooks.ops, ...hooks.after);
  }
  return [...pre, ...recreated, ...ops, ...post];
}
