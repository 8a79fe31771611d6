import { groupCeil, groupRate } from "./groups.js";
import type { DesiredInterface, Direction, DomainRecord, MemberLimit } from "./model.js";
import { fnv1a64, ROOT_HANDLE, ROOT_MAJOR } from "./names.js";
import type { ObservedLink } from "./normalise.js";
import type { LeafChoice, PolicyGroup } from "./policy.js";
import { type Capabilities, chooseLeaf, htbClass, type Leaf } from "./recipe.js";
import { formatRate } from "./units.js";

// Groups share one HTB tree per direction, on an IFB owned by the top-level group. Every member's tap
// redirects that direction's traffic into it (download from the tap's egress hook, upload from its ingress
// hook; swapped on a macvtap), whatever the interface type, and the tree classifies by the guest's MAC.
//
//   IFB vqd<hash(group)> (download) / vqu<hash(group)> (upload)
//   7651:  root HTB, default 7651:2
//   └── 7651:1      top group: rate = average, ceil = peak|average          (seed 001: host, 1000 Mbit/s)
//       ├── 7651:2  unclassified frames (broadcast, unknown MACs): small rate, may borrow
//       ├── 7651:1f child group: rate = floor|average, ceil = peak|average  (seed 001: cliff+rob, 30 Mbit/s)
//       │   ├── 7651:1a2 member: rate = floor, ceil = own ceiling|group's   (cliff, 15 Mbit/s guaranteed)
//       │   │   └── 11a2: leaf qdisc (tbf/bfifo/sfq/fq_codel, handle = kind<<12 | minor)
//       │   └── 7651:3c0 member ...                                         (rob, 15 Mbit/s guaranteed)
//       └── 7651:2b child group ...                                         (jason alone, 30 Mbit/s)
//
// Classification is one u32 hash on the last byte of the guest's MAC (destination MAC for download,
// source MAC for upload) into 256 buckets, then an exact MAC match inside the bucket: the cost per packet
// does not grow with the group (a linear filter chain per member would). Spare capacity is lent among
// siblings in proportion to their HTB quantum, which is set from the floor, so borrowing follows guarantees.

export const GROUP_FILTER_PRIO = 64010;
const HASH_TABLE = "100:";
const DEFAULT_MINOR = 2;
const CHILD_MINORS: [number, number] = [0x10, 0xff];
/** Member minors fit the 12-bit u32 node id, so a member's filter handle is bucket:minor. */
const MEMBER_MINORS: [number, number] = [0x100, 0xffe];
/** HTB needs a positive rate: a member with no floor gets this token guarantee (1 kB/s) and borrows the rest. */
const NO_FLOOR_RATE_BITS = 8000;
const LEAF_KIND_INDEX: Record<Leaf["kind"], number> = { bfifo: 0, tbf: 1, sfq: 2, fq_codel: 3 };

export interface TreeFilter {
  handle: string;
  /** Everything after `filter add dev D parent 7651: prio P protocol all`. */
  spec: string;
  flowid?: string;
  link?: string;
  divisor?: number;
}

export interface TreeMember {
  key: string;
  mac: string;
  domainName: string;
  path: string[];
  limit: MemberLimit & { minor: number };
}

export interface Admission {
  members: Map<string, TreeMember[]>;
  /** key|direction -> minor of admitted members from `desired`. */
  admitted: Map<string, number>;
  problems: { code: string; iface: string; message: string; fix: string }[];
  /** Trees whose top-level group left the policy while out-of-scope guests still use them: left untouched. */
  frozen: Set<string>;
}

export const treeKey = (tree: string, d: Direction) => `${tree}|${d}`;
export const minorHex = (minor: number) => minor.toString(16);

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
 * whose floor would push the floors of its group above the group's rate is refused its guarantee.
 */
export function admitMembers(
  desired: DesiredInterface[],
  records: DomainRecord[],
  links: Map<string, ObservedLink>,
  groups: PolicyGroup[],
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
  const floors = new Map<string, number>();
  const add = (tk: string, m: TreeMember) => {
    const list = result.members.get(tk) ?? [];
    list.push(m);
    result.members.set(tk, list);
    const u = used.get(tk) ?? new Set<number>();
    u.add(m.limit.minor);
    used.set(tk, u);
    const fk = `${tk}|${m.path.join("/")}`;
    floors.set(fk, (floors.get(fk) ?? 0) + m.limit.floorBitsPerSec);
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
          domainName: r.domainName,
          path: i.group.path,
          limit: { ...m, minor: m.minor },
        });
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
  for (const c of candidates) {
    const tk = treeKey(c.path[0], c.dir);
    const own = defs.get(c.path[c.path.length - 1]);
    const rate = own ? groupRate(own, c.dir) : undefined;
    const fk = `${tk}|${c.path.join("/")}`;
    const sum = floors.get(fk) ?? 0;
    if (rate !== undefined && sum + c.m.floorBitsPerSec > rate) {
      result.problems.push({
        code: "GROUP_ADMISSION",
        iface: c.d.key,
        message: `${c.d.domainName} ${c.d.mac}: ${c.dir} floor ${formatRate(c.m.floorBitsPerSec)} does not fit in group "${c.path.at(-1)}": members already hold ${formatRate(sum)} of its ${formatRate(rate)}; shaped with its own limits, without a guarantee`,
        fix: "lower the floors in the group, raise the group's average, or move the guest to another group",
      });
      continue;
    }
    // A recorded minor is reused only while still free (a member that crashed may have lost it meanwhile).
    const taken = used.get(tk) ?? new Set<number>();
    const minor = c.prev !== undefined && !taken.has(c.prev) ? c.prev : pick(c.d.key, MEMBER_MINORS, taken);
    add(tk, {
      key: c.d.key,
      mac: c.d.mac,
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
  top: PolicyGroup,
  groups: PolicyGroup[],
  members: TreeMember[],
  d: Direction,
  caps: Capabilities,
  leafChoice: LeafChoice,
) {
  const topCeil = groupCeil(top, d) ?? 0;
  const topRate = groupRate(top, d) ?? topCeil;
  const cls = (rate: number, ceil: number, burst?: number) =>
    htbClass({ rateBitsPerSec: Math.max(rate, NO_FLOOR_RATE_BITS), ceilBitsPerSec: ceil, burstBytes: burst });
  const classes: {
    classid: string;
    parent: string;
    htb: ReturnType<typeof htbClass>;
    leaf?: Leaf;
    leafHandle?: string;
  }[] = [];
  const topId = `${ROOT_MAJOR}:1`;
  classes.push({ classid: topId, parent: ROOT_HANDLE, htb: cls(topRate, topCeil) });
  const defaultLeaf = chooseLeaf(
    htbClass({ rateBitsPerSec: topCeil, ceilBitsPerSec: topCeil }).ceilBytesPerSec,
    caps,
    leafChoice,
  ).leaf;
  classes.push({
    classid: `${ROOT_MAJOR}:${minorHex(DEFAULT_MINOR)}`,
    parent: topId,
    // A token guarantee only: it borrows what members leave, and adds nothing to the floors admission counts.
    htb: cls(NO_FLOOR_RATE_BITS, topCeil),
    leaf: defaultLeaf,
    leafHandle: `${minorHex((LEAF_KIND_INDEX[defaultLeaf.kind] << 12) | DEFAULT_MINOR)}:`,
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
    const id = `${ROOT_MAJOR}:${minorHex(minor)}`;
    childIds.set(child.name, id);
    classes.push({ classid: id, parent: topId, htb: cls(rate, Math.min(ceil, topCeil)) });
  }
  const filters: TreeFilter[] = [
    { handle: HASH_TABLE, spec: `handle ${HASH_TABLE} u32 divisor 256`, divisor: 256 },
    {
      handle: "800::800",
      // The last MAC byte, from a 4-byte-aligned word (u32 refuses others): destination MAC ends at byte -9
      // from the network header (word -12, low byte), source MAC at byte -3 (word -4, second byte).
      spec: `u32 ht 800:: match u32 0 0 hashkey mask ${d === "inbound" ? "0x000000ff at -12" : "0x00ff0000 at -4"} link ${HASH_TABLE}`,
      link: HASH_TABLE,
    },
  ];
  for (const m of [...members].sort((a, b) => a.limit.minor - b.limit.minor)) {
    const parent = m.path.length > 1 ? childIds.get(m.path[1]) : topId;
    if (!parent) continue;
    const id = `${ROOT_MAJOR}:${minorHex(m.limit.minor)}`;
    const htb = cls(m.limit.floorBitsPerSec, m.limit.ceilBitsPerSec, m.limit.burstBytes);
    const leaf = chooseLeaf(htb.ceilBytesPerSec, caps, leafChoice, true).leaf;
    classes.push({
      classid: id,
      parent,
      htb,
      leaf,
      leafHandle: `${minorHex((LEAF_KIND_INDEX[leaf.kind] << 12) | m.limit.minor)}:`,
    });
    const bucket = Number.parseInt(m.mac.split(":")[5], 16).toString(16);
    const handle = `100:${bucket}:${minorHex(m.limit.minor)}`;
    filters.push({
      handle,
      spec: `handle ${handle} u32 ht 100:${bucket}: match ether ${d === "inbound" ? "dst" : "src"} ${m.mac} flowid ${id}`,
      flowid: id,
    });
  }
  return { defaultMinor: DEFAULT_MINOR, classes, filters };
}
