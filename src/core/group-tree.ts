import { admit, type GroupSpec, groupCeil, groupRate } from "./admission.js";
import type { DesiredInterface, Direction, DomainRecord, MemberLimit } from "./model.js";
import { fnv1a64 } from "./names.js";
import type { LeafChoice } from "./policy/types.js";
import { type Capabilities, chooseLeaf, FRAME_BYTES, htbClass } from "./recipe.js";
import {
  classidOf,
  GROUP_HASH_BUCKETS,
  GROUP_HASH_TABLE,
  groupLeafHandles,
  ROOT_HANDLE,
} from "./tc/handles.js";
import type { ObservedLink } from "./tc/normalise.js";
import { macBucket, type Tree, type TreeFilter } from "./tc/tree.js";
import { formatRate } from "./units.js";

// Groups share one HTB tree per direction, on an IFB owned by the top-level group. Every member's tap
// redirects that direction's traffic into it (download from the tap's egress hook, upload from its ingress
// hook; swapped on a macvtap), whatever the interface type, and the tree classifies by the guest's MAC.
//
// With the README's example policy (groups host > web, solo):
//
//   IFB vqd<hash(group)> (download) / vqu<hash(group)> (upload)
//   7651:  root HTB, default 7651:2
//   └── 7651:1      top group: rate = average, ceil = peak|average          (host, 1000 Mbit/s)
//       ├── 7651:2  unclassified frames (broadcast, unknown MACs): small rate, may borrow
//       ├── 7651:1f child group: rate = floor|average, ceil = peak|average  (web: cliff+rob, 30 Mbit/s)
//       │   ├── 7651:1a2 member: rate = floor, ceil = own ceiling|group's   (cliff, 15 Mbit/s guaranteed)
//       │   │   └── 41a2: leaf, handle = kind<<12 | minor (0 bfifo, 1 tbf, 2 sfq, 3 fq_codel, 4 tbf+fq_codel)
//       │   │       └── 51a2: fq_codel under the GSO-splitting tbf 41a2: (parent 41a2:1), with fq_codel
//       │   └── 7651:3c0 member ...                                         (rob, 15 Mbit/s guaranteed)
//       └── 7651:2b child group ...                                         (solo: jason, 30 Mbit/s)
//
// Classification is one u32 hash on the last byte of the guest's MAC (destination MAC for download,
// source MAC for upload) into 256 buckets, then an exact MAC match inside the bucket: the cost per packet
// does not grow with the group (a linear filter chain per member would). Spare capacity is lent among
// siblings in proportion to their HTB quantum, which is set from the floor, so borrowing follows guarantees.

const DEFAULT_MINOR = 2;
const CHILD_MINORS: [number, number] = [0x10, 0xff];
/** Member minors fit the 12-bit u32 node id, so a member's filter handle is bucket:minor. */
const MEMBER_MINORS: [number, number] = [0x100, 0xffe];
/** HTB needs a positive rate: a member with no floor gets this token guarantee (1 kB/s) and borrows the rest. */
const NO_FLOOR_RATE_BITS = 8000;

export interface TreeMember {
  key: string;
  mac: string;
  /** The member's tap, where known: its MTU bounds the frames the member's leaf must pass. */
  dev?: string;
  domainName: string;
  path: string[];
  limit: MemberLimit & { minor: number };
}

export interface Admission {
  members: Map<string, TreeMember[]>;
  /** key|direction -> minor of admitted members from `desired`. */
  admitted: Map<string, number>;
  /** GROUP_ADMISSION errors: members shaped on their own, without their guarantee. */
  problems: import("./errors.js").Diagnostic[];
  /** Trees whose top-level group left the policy while out-of-scope guests still use them: left untouched. */
  frozen: Set<string>;
}

export const treeKey = (tree: string, d: Direction) => `${tree}|${d}`;
/** One group (top or child) in one direction: the unit admission counts floors in. */
const groupKey = (tree: string, path: string[], d: Direction) => `${treeKey(tree, d)}|${path.join("/")}`;

// Where `virtqos status` still imports it from.
export { minorHex } from "./tc/handles.js";

function pick(seed: string, [lo, hi]: [number, number], used: Set<number>): number {
  const span = hi - lo + 1;
  const start = Number(BigInt(`0x${fnv1a64(seed)}`) % BigInt(span));
  for (let i = 0; i < span; i++) {
    const m = lo + ((start + i) % span);
    if (!used.has(m)) return m;
  }
  throw new Error(`no free HTB minor in ${lo}-${hi}`);
}

/**
 * Decide who is in each group tree. Members already in the kernel (recorded for other domains, or for this
 * domain earlier) are kept with their class minors, so a join or leave touches only that member. A new member
 * whose floor would push the floors of its group above the group's rate is refused its guarantee (admit(), the
 * same rule the policy check applies to the floors the file promises).
 */
export function admitMembers(
  desired: DesiredInterface[],
  records: DomainRecord[],
  links: Map<string, ObservedLink>,
  groups: readonly GroupSpec[],
  inScope: (uuid: string) => boolean,
): Admission {
  const defs = new Map(groups.map((g) => [g.name, g]));
  const result: Admission = {
    members: new Map(),
    admitted: new Map(),
    problems: [],
    frozen: new Set(),
  };
  const used = new Map<string, Set<number>>();
  /** Per group and direction: the floors its recorded members already hold. */
  const held = new Map<string, number>();
  const add = (tk: string, m: TreeMember) => {
    const list = result.members.get(tk) ?? [];
    list.push(m);
    result.members.set(tk, list);
    const u = used.get(tk) ?? new Set<number>();
    u.add(m.limit.minor);
    used.set(tk, u);
  };
  const previous = new Map<string, number>();
  for (const r of records) {
    const mine = inScope(r.domainUuid);
    for (const i of r.interfaces) {
      if (!i.group) continue;
      const link = i.dev ? links.get(i.dev) : undefined;
      const alive = link && (i.ifindex === undefined || i.ifindex === link.ifindex);
      for (const d of ["inbound", "outbound"] as const) {
        const m = i.group[d];
        if (m?.minor === undefined) continue;
        const key = `${r.domainUuid}/${i.mac}`;
        if (mine) {
          previous.set(`${key}|${d}|${i.group.tree}`, m.minor);
          continue;
        }
        if (!alive) continue; // the sweep: a member whose tap is gone leaves the tree
        const tk = treeKey(i.group.tree, d);
        // A group (top or child) gone from the policy while guests still use it: leave that tree alone.
        if (!i.group.path.every((g) => defs.has(g))) result.frozen.add(tk);
        add(tk, {
          key,
          mac: i.mac,
          dev: i.dev,
          domainName: r.domainName,
          path: i.group.path,
          limit: { ...m, minor: m.minor },
        });
        const gk = groupKey(i.group.tree, i.group.path, d);
        held.set(gk, (held.get(gk) ?? 0) + m.floorBitsPerSec);
      }
    }
  }
  const candidates = desired.flatMap((d) =>
    (["inbound", "outbound"] as const).flatMap((dir) => {
      const m = d.group?.[dir];
      if (!m || !d.group || d.notEnforceable || !d.dev || !links.has(d.dev)) return [];
      const prev = previous.get(`${d.key}|${dir}|${d.group.tree}`);
      return [{ d, dir, m, path: d.group.path, prev }];
    }),
  );
  // Members that were already admitted keep their place before newcomers are considered.
  candidates.sort((a, b) => Number(a.prev === undefined) - Number(b.prev === undefined));
  const byGroup = new Map<string, typeof candidates>();
  for (const c of candidates) {
    const gk = groupKey(c.path[0], c.path, c.dir);
    const list = byGroup.get(gk) ?? [];
    list.push(c);
    byGroup.set(gk, list);
  }
  const refused = new Map<(typeof candidates)[number], { held: number; rate: number }>();
  for (const [gk, list] of byGroup) {
    const { path, dir } = list[0];
    const own = defs.get(path[path.length - 1]);
    const rate = own ? groupRate(own, dir) : undefined;
    const verdict = admit(rate, held.get(gk) ?? 0, list, (c) => c.m.floorBitsPerSec);
    for (const r of verdict.refused) refused.set(r.claim, { held: r.heldBitsPerSec, rate: rate! });
  }
  for (const c of candidates) {
    const refusal = refused.get(c);
    if (refusal) {
      result.problems.push({
        code: "GROUP_ADMISSION",
        level: "error",
        iface: c.d.key,
        direction: c.dir,
        message: `${c.d.domainName} ${c.d.mac}: ${c.dir} floor ${formatRate(c.m.floorBitsPerSec)} does not fit in group "${c.path.at(-1)}": members already hold ${formatRate(refusal.held)} of its ${formatRate(refusal.rate)}; shaped with its own limits, without a guarantee`,
      });
      continue;
    }
    const tk = treeKey(c.path[0], c.dir);
    // A recorded minor is reused only while still free (a member that crashed may have lost it meanwhile).
    const taken = used.get(tk) ?? new Set<number>();
    const minor = c.prev !== undefined && !taken.has(c.prev) ? c.prev : pick(c.d.key, MEMBER_MINORS, taken);
    add(tk, {
      key: c.d.key,
      mac: c.d.mac,
      dev: c.d.dev,
      domainName: c.d.domainName,
      path: c.path,
      limit: { ...c.m, minor },
    });
    result.admitted.set(`${c.d.key}|${c.dir}`, minor);
  }
  return result;
}

/** The whole tree of one top-level group in one direction, members included. */
export function buildGroupTree(
  top: GroupSpec,
  groups: readonly GroupSpec[],
  members: TreeMember[],
  d: Direction,
  caps: Capabilities,
  leafChoice: LeafChoice,
  /** The largest frame each member's tap carries (maxFrameBytes of its MTU), by member key. */
  frameBytesOf: (m: TreeMember) => number = () => FRAME_BYTES,
): Tree {
  const topCeil = groupCeil(top, d) ?? 0;
  const topRate = groupRate(top, d) ?? topCeil;
  const cls = (rate: number, ceil: number, burst?: number) =>
    htbClass({ rateBitsPerSec: Math.max(rate, NO_FLOOR_RATE_BITS), ceilBitsPerSec: ceil, burstBytes: burst });
  const classes: Tree["classes"] = [];
  const topId = classidOf(1);
  classes.push({ classid: topId, parent: ROOT_HANDLE, htb: cls(topRate, topCeil) });
  // The default class carries whatever no member filter matched: any member's frames.
  const defaultLeaf = chooseLeaf(
    htbClass({ rateBitsPerSec: topCeil, ceilBitsPerSec: topCeil }).ceilBytesPerSec,
    caps,
    leafChoice,
    false,
    Math.max(FRAME_BYTES, ...members.map(frameBytesOf)),
  ).leaf;
  classes.push({
    classid: classidOf(DEFAULT_MINOR),
    parent: topId,
    // A token guarantee only: it borrows what members leave, and adds nothing to the floors admission counts.
    htb: cls(NO_FLOOR_RATE_BITS, topCeil),
    leaf: defaultLeaf,
    ...groupLeafHandles(defaultLeaf, DEFAULT_MINOR),
  });
  const childIds = new Map<string, string>();
  const usedChild = new Set<number>();
  for (const child of groups
    .filter((g) => g.parent === top.name)
    .sort((a, b) => a.name.localeCompare(b.name))) {
    const ceil = groupCeil(child, d);
    const rate = groupRate(child, d);
    if (ceil === undefined || rate === undefined) continue;
    const minor = pick(`group/${child.name}`, CHILD_MINORS, usedChild);
    usedChild.add(minor);
    const id = classidOf(minor);
    childIds.set(child.name, id);
    classes.push({ classid: id, parent: topId, htb: cls(rate, Math.min(ceil, topCeil)) });
  }
  // The guest's MAC is the destination of what it downloads and the source of what it uploads.
  const field = d === "inbound" ? "dst" : "src";
  const filters: TreeFilter[] = [
    { kind: "hash-table", table: GROUP_HASH_TABLE, buckets: GROUP_HASH_BUCKETS },
    { kind: "hash-link", table: GROUP_HASH_TABLE, field },
  ];
  for (const m of [...members].sort((a, b) => a.limit.minor - b.limit.minor)) {
    const parent = m.path.length > 1 ? childIds.get(m.path[1]) : topId;
    if (!parent) continue;
    const id = classidOf(m.limit.minor);
    const htb = cls(m.limit.floorBitsPerSec, m.limit.ceilBitsPerSec, m.limit.burstBytes);
    const leaf = chooseLeaf(htb.ceilBytesPerSec, caps, leafChoice, true, frameBytesOf(m)).leaf;
    classes.push({ classid: id, parent, htb, leaf, ...groupLeafHandles(leaf, m.limit.minor) });
    filters.push({
      kind: "member",
      table: GROUP_HASH_TABLE,
      bucket: macBucket(m.mac),
      // Member minors fit the 12-bit u32 node id, so the node id is the minor: unique in any bucket.
      node: m.limit.minor,
      field,
      mac: m.mac,
      flowid: id,
    });
  }
  return { defaultMinor: DEFAULT_MINOR, classes, filters };
}
