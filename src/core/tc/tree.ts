import type { HtbClass, Leaf } from "../recipe.js";
import { minorHex, U32_ROOT_LINK_NODE, U32_ROOT_TABLE } from "./handles.js";
import type { ObservedFilter } from "./normalise.js";

// A shaping tree virtqos owns on one device, as data: its root HTB, classes (leaf classes with their leaf qdisc)
// and, for group trees, the u32 filters on the root that classify frames into member classes. The planner
// builds trees (iface-tree.ts, group-tree.ts) and reads them back from the kernel (plan/restore.ts); only
// render() turns them into tc text.

export interface TreeClass {
  classid: string;
  parent: string;
  htb: HtbClass;
  leaf?: Leaf;
  leafHandle?: string;
  /** A TBF leaf's child qdisc (`leaf.child`): its handle, on TBF's class `<leafHandle>1`. */
  leafChildHandle?: string;
}

export interface Tree {
  defaultMinor: number;
  classes: TreeClass[];
  /** Classification filters on the root (group trees); identity is the u32 handle. */
  filters?: TreeFilter[];
}

/** The Ethernet address a group tree classifies by: the guest's MAC is the destination of its download. */
export type MacField = "dst" | "src";

export type TreeFilter =
  /** The hash table that holds the members' filters, `buckets` wide. */
  | { kind: "hash-table"; table: string; buckets: number }
  /** The node on u32's own root table that hashes every frame into `table` by the last byte of its `field` MAC. */
  | { kind: "hash-link"; table: string; field: MacField }
  /** One member: frames whose `field` MAC is `mac` go to class `flowid`; `node` is unique within the bucket. */
  | {
      kind: "member";
      table: string;
      bucket: number;
      node: number;
      field: MacField;
      mac: string;
      flowid: string;
    };

/**
 * Where the hash key sits: the last byte of the MAC, read from a 4-byte-aligned word (u32 refuses others),
 * offsets from the network header. The destination MAC ends at byte -9 (word -12, low byte), the source MAC
 * at byte -3 (word -4, second byte).
 */
const HASH_KEYS: Record<MacField, { mask: number; offsetBytes: number }> = {
  dst: { mask: 0x000000ff, offsetBytes: -12 },
  src: { mask: 0x00ff0000, offsetBytes: -4 },
};
/** Where each MAC starts, in bytes from the network header (the Ethernet header is the 14 bytes before it). */
const MAC_OFFSET_BYTES: Record<MacField, number> = { dst: -14, src: -8 };

/** The bucket a MAC hashes to: its last byte. */
export const macBucket = (mac: string): number => Number.parseInt(mac.split(":")[5], 16);

/**
 * A u32 handle however it is spelled, for comparing: tc prints bucket 0 as nothing ("100::1a4") where virtqos
 * writes it ("100:0:1a4"), and a table without its node ("100:"). Unparsable text is its own key.
 */
export function u32HandleKey(handle: string): string {
  const m = /^([0-9a-f]+):([0-9a-f]*)(?::([0-9a-f]*))?$/.exec(handle);
  if (!m) return handle;
  const part = (x: string | undefined) => Number.parseInt(x || "0", 16).toString(16);
  return `${part(m[1])}:${part(m[2])}:${part(m[3])}`;
}

/** The u32 handle the kernel gives the filter: what `tc filter del ... handle` names. */
export function treeFilterHandle(f: TreeFilter): string {
  switch (f.kind) {
    case "hash-table":
      return f.table;
    case "hash-link":
      return U32_ROOT_LINK_NODE;
    case "member":
      return `${f.table}${minorHex(f.bucket)}:${minorHex(f.node)}`;
  }
}

/** The class a filter sends frames to, if it does. */
export const treeFilterFlowid = (f: TreeFilter): string | undefined =>
  f.kind === "member" ? f.flowid : undefined;

/** Everything after `filter add dev D parent 7651: prio P protocol all`. */
export function renderTreeFilter(f: TreeFilter): string {
  switch (f.kind) {
    case "hash-table":
      return `handle ${f.table} u32 divisor ${f.buckets}`;
    case "hash-link": {
      const key = HASH_KEYS[f.field];
      return `u32 ht ${U32_ROOT_TABLE}: match u32 0 0 hashkey mask 0x${key.mask.toString(16).padStart(8, "0")} at ${key.offsetBytes} link ${f.table}`;
    }
    case "member":
      return `handle ${treeFilterHandle(f)} u32 ht ${f.table}${minorHex(f.bucket)}: match ether ${f.field} ${f.mac} flowid ${f.flowid}`;
  }
}

/**
 * The tree filter an observed u32 filter is, when it has one of the three forms virtqos writes; undefined for
 * anything else (or when this iproute2 prints less than it takes to tell).
 */
export function treeFilterFromObserved(o: ObservedFilter): TreeFilter | undefined {
  if (o.kind !== "u32" || !o.handle) return undefined;
  if (o.divisor !== undefined && /^[0-9a-f]+:$/.test(o.handle))
    return { kind: "hash-table", table: o.handle, buckets: o.divisor };
  if (o.link && o.hashKey && o.handle === U32_ROOT_LINK_NODE) {
    const { mask, offsetBytes } = o.hashKey;
    const field = (Object.keys(HASH_KEYS) as MacField[]).find(
      (k) => HASH_KEYS[k].mask === mask && HASH_KEYS[k].offsetBytes === offsetBytes,
    );
    return field && { kind: "hash-link", table: o.link, field };
  }
  const node = /^([0-9a-f]+:)([0-9a-f]*):([0-9a-f]+)$/.exec(o.handle);
  const matched = node && o.flowid ? macFromKeys(o.matches) : undefined;
  if (!node || !o.flowid || !matched) return undefined;
  return {
    kind: "member",
    table: node[1],
    bucket: Number.parseInt(node[2] || "0", 16),
    node: Number.parseInt(node[3], 16),
    field: matched.field,
    mac: matched.mac,
    flowid: o.flowid,
  };
}

/**
 * Whether an observed filter is `want`. Compared as data where the observed filter reads back as one of ours;
 * otherwise by what every iproute2 prints (the class it points to, the table it links to, its divisor).
 */
export function sameTreeFilter(o: ObservedFilter, want: TreeFilter): boolean {
  const back = treeFilterFromObserved(o);
  if (back) return JSON.stringify(back) === JSON.stringify(canonical(want));
  return (
    o.flowid === treeFilterFlowid(want) &&
    o.link === (want.kind === "hash-link" ? want.table : undefined) &&
    o.divisor === (want.kind === "hash-table" ? want.buckets : undefined)
  );
}

/** Field order and MAC spelling as treeFilterFromObserved produces them, so two equal filters print equal. */
function canonical(f: TreeFilter): TreeFilter {
  switch (f.kind) {
    case "hash-table":
      return { kind: f.kind, table: f.table, buckets: f.buckets };
    case "hash-link":
      return { kind: f.kind, table: f.table, field: f.field };
    case "member":
      return {
        kind: f.kind,
        table: f.table,
        bucket: f.bucket,
        node: f.node,
        field: f.field,
        mac: f.mac.toLowerCase(),
        flowid: f.flowid,
      };
  }
}

/**
 * `match ether dst|src MAC` as the kernel keeps it: 4-byte keys (`value/mask@offset`, hex) covering exactly the
 * six bytes of one of the two MACs.
 */
function macFromKeys(keys: string[]): { field: MacField; mac: string } | undefined {
  const bytes = new Map<number, number>();
  for (const k of keys) {
    const m = /^([0-9a-f]+)\/([0-9a-f]+)@(-?\d+)$/.exec(k);
    if (!m) return undefined;
    const value = Number.parseInt(m[1], 16);
    const mask = Number.parseInt(m[2], 16);
    const at = Number(m[3]);
    for (let i = 0; i < 4; i++) {
      const shift = 24 - 8 * i;
      const byteMask = (mask >>> shift) & 0xff;
      if (byteMask === 0) continue;
      if (byteMask !== 0xff) return undefined;
      bytes.set(at + i, (value >>> shift) & 0xff);
    }
  }
  if (bytes.size !== 6) return undefined;
  for (const field of ["dst", "src"] as const) {
    const start = MAC_OFFSET_BYTES[field];
    const mac: string[] = [];
    for (let i = 0; i < 6; i++) {
      const b = bytes.get(start + i);
      if (b === undefined) break;
      mac.push(b.toString(16).padStart(2, "0"));
    }
    if (mac.length === 6) return { field, mac: mac.join(":") };
  }
  return undefined;
}
