import { type Leaf, type LeafKey, leafKey } from "../recipe.js";
import type { ObservedQdisc } from "./normalise.js";

// The handles and priorities virtqos puts into the kernel. They are how virtqos recognises its own qdiscs,
// classes and filters on a device it shares with other tools, so a cleanup never touches anyone else's: every
// place that writes or reads one of these numbers takes it from here.

/** Root HTB handle major on taps and IFBs: nobody else picks 0x7651 ("vQ"), unlike 1: which libvirt uses. */
export const ROOT_MAJOR = "7651";
export const ROOT_HANDLE = `${ROOT_MAJOR}:`;
/** A class of virtqos's root HTB: `7651:<minor in hex>`. */
export const classidOf = (minor: number): string => `${ROOT_MAJOR}:${minorHex(minor)}`;
/** tc writes class minors (and u32 node ids) in hex without a prefix. */
export const minorHex = (minor: number): string => minor.toString(16);

/** The single shaping class of a per-interface tree. */
export const IFACE_CLASSID = classidOf(1);

/** The parent the kernel gives an `ingress` or `clsact` qdisc: the ingress/egress hooks live there. */
export const HOOK_PARENT = "ffff:fff1";
/** The handle an `ingress` qdisc must be given (clsact takes it implicitly). */
export const INGRESS_HANDLE = "ffff:";
/** The handle the kernel gives its default root qdiscs (noqueue, pfifo_fast, ...): replaceable. */
export const KERNEL_DEFAULT_HANDLE = "0:";

/** tc filter priorities 64000-64099 are virtqos's; a filter outside the range is someone else's. */
export const PRIO_MIN = 64000;
export const PRIO_MAX = 64099;
/** Ingress-hook redirects (and the police filter that replaces one): the guest's upload, a macvtap's download. */
export const PRIO_REDIRECT = 64000;
/**
 * Egress-hook redirects use their own priority: u32 filters on one clsact share a hash-table namespace,
 * and a dump of either hook lists every u32 node of the same priority, whichever hook it hangs on.
 */
export const PRIO_REDIRECT_EGRESS = 64001;
/** A group tree's classification filters, on its root qdisc 7651:. */
export const GROUP_FILTER_PRIO = 64010;

/**
 * Leaf qdisc handles. Two schemes, because the two kinds of tree differ in how many leaves they hold:
 *
 * - A per-interface tree has one leaf, so one handle per leaf kind is enough (7652: to 7656:). A handle per
 *   kind, not one handle, because `qdisc replace` cannot change a qdisc's kind in place but grafts a qdisc with
 *   a new handle: switching fq_codel to bfifo is then one replace.
 * - A group tree has a leaf per member class, so the handle carries the class minor as well:
 *   `(kind index << 12) | minor`, which is unique per class and kind as long as minors fit 12 bits (they do:
 *   member minors stop at 0xffe).
 *
 * A TBF with a child qdisc (the GSO-splitting stage in front of fq_codel) is a kind of its own ("tbf+fq_codel":
 * 7656:, group index 4), not the TBF FIFO's handle: replacing a TBF under the same handle changes it in place
 * and keeps its child, so going from one to the other would keep the wrong queue. Its child hangs on TBF's one
 * class (`<tbf handle>1`) with a handle of its own: 7657: in a per-interface tree, index 5 in a group tree.
 *
 * Folding one scheme into the other would change the handle of every leaf already in the kernel, so the first
 * apply after an upgrade would re-graft every guest's leaf and drop what it had queued.
 */
export const IFACE_LEAF_HANDLES: Record<LeafKey, string> = {
  bfifo: "7652:",
  sfq: "7653:",
  fq_codel: "7654:",
  tbf: "7655:",
  "tbf+fq_codel": "7656:",
};
/** The child qdisc under a per-interface tree's TBF (a "tbf+..." leaf). */
export const IFACE_LEAF_CHILD_HANDLE = "7657:";
const GROUP_LEAF_KIND_INDEX: Record<LeafKey, number> = {
  bfifo: 0,
  tbf: 1,
  sfq: 2,
  fq_codel: 3,
  "tbf+fq_codel": 4,
};
/** The kind index of the child qdisc under a group leaf's TBF. */
const GROUP_LEAF_CHILD_INDEX = 5;
const groupHandle = (index: number, minor: number): string => `${minorHex((index << 12) | minor)}:`;
export const groupLeafHandle = (key: LeafKey, minor: number): string =>
  groupHandle(GROUP_LEAF_KIND_INDEX[key], minor);

/** A leaf's handle and, for a TBF with a child qdisc, the child's. */
export interface LeafHandles {
  leafHandle: string;
  leafChildHandle?: string;
}

const hasChild = (leaf: Leaf): boolean => leaf.kind === "tbf" && leaf.child !== undefined;

/** The handles of a per-interface tree's leaf. */
export function ifaceLeafHandles(leaf: Leaf): LeafHandles {
  const leafHandle = IFACE_LEAF_HANDLES[leafKey(leaf)];
  return hasChild(leaf) ? { leafHandle, leafChildHandle: IFACE_LEAF_CHILD_HANDLE } : { leafHandle };
}

/** The handles of a group tree's leaf under the class with `minor`. */
export function groupLeafHandles(leaf: Leaf, minor: number): LeafHandles {
  const leafHandle = groupLeafHandle(leafKey(leaf), minor);
  return hasChild(leaf)
    ? { leafHandle, leafChildHandle: groupHandle(GROUP_LEAF_CHILD_INDEX, minor) }
    : { leafHandle };
}

/** Where a TBF's child qdisc hangs: TBF's one class, minor 1 (`7656:` -> `7656:1`). */
export const tbfChildParent = (tbfHandle: string): string => `${tbfHandle}1`;

/**
 * A group tree's u32 tables. 800: is the table u32 creates by itself on the root; its first node (800::800, the
 * kernel numbers a table's nodes from 800 up) hashes every frame into 100:, which holds the members' filters.
 */
export const U32_ROOT_TABLE = "800:";
export const U32_ROOT_LINK_NODE = "800::800";
export const GROUP_HASH_TABLE = "100:";
/** One bucket per value of a MAC's last byte. */
export const GROUP_HASH_BUCKETS = 256;

export const isOurPrio = (prio: number): boolean => prio >= PRIO_MIN && prio <= PRIO_MAX;

export const isOurRoot = (q: ObservedQdisc | undefined): boolean =>
  q?.kind === "htb" && q.handle === ROOT_HANDLE;

/** Kernel-assigned default root qdiscs (handle 0:) may be replaced; any other root qdisc is someone's. */
export function isDefaultRoot(q: ObservedQdisc | undefined): boolean {
  return !q || q.handle === KERNEL_DEFAULT_HANDLE || q.kind === "noqueue";
}
