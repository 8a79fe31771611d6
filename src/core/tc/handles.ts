import type { Leaf } from "../recipe.js";
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
 * - A per-interface tree has one leaf, so one handle per leaf kind is enough (7652: to 7655:). A handle per
 *   kind, not one handle, because `qdisc replace` cannot change a qdisc's kind in place but grafts a qdisc with
 *   a new handle: switching fq_codel to bfifo is then one replace.
 * - A group tree has a leaf per member class, so the handle carries the class minor as well:
 *   `(kind index << 12) | minor`, which is unique per class and kind as long as minors fit 12 bits (they do:
 *   member minors stop at 0xffe).
 *
 * Folding one scheme into the other would change the handle of every leaf already in the kernel, so the first
 * apply after an upgrade would re-graft every guest's leaf and drop what it had queued.
 */
export const IFACE_LEAF_HANDLES: Record<Leaf["kind"], string> = {
  bfifo: "7652:",
  sfq: "7653:",
  fq_codel: "7654:",
  tbf: "7655:",
};
const GROUP_LEAF_KIND_INDEX: Record<Leaf["kind"], number> = { bfifo: 0, tbf: 1, sfq: 2, fq_codel: 3 };
export const groupLeafHandle = (kind: Leaf["kind"], minor: number): string =>
  `${minorHex((GROUP_LEAF_KIND_INDEX[kind] << 12) | minor)}:`;

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
