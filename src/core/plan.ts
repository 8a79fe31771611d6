import { admitMembers, buildGroupTree, GROUP_FILTER_PRIO, type TreeFilter, treeKey } from "./group-tree.js";
import type { DesiredInterface, Direction, DirectionLimit, DomainRecord, GroupMembership } from "./model.js";
import {
  formatIfbAlias,
  groupIfbName,
  IFACE_CLASSID,
  interfaceIfbName,
  PRIO_MAX,
  PRIO_MIN,
  PRIO_REDIRECT,
  PRIO_REDIRECT_EGRESS,
  parseIfbAlias,
  ROOT_HANDLE,
} from "./names.js";
import {
  type ObservedClass,
  type ObservedDevice,
  type ObservedFilter,
  type ObservedLink,
  type ObservedQdisc,
  printTcRate,
  sameSize,
} from "./normalise.js";
import type { LeafChoice, PolicyGroup } from "./policy.js";
import { type Capabilities, chooseLeaf, type HtbClass, htbClass, type Leaf } from "./recipe.js";

// plan(desired, observed, capabilities) -> operations. Pure and synchronous: everything it needs was read by
// observe() before, and everything it decides is data that render() turns into tc/ip batch lines.

export interface Observed {
  links: Map<string, ObservedLink>;
  devices: Map<string, ObservedDevice>;
  records: DomainRecord[];
}

export interface PlanOptions {
  leaf: LeafChoice;
  /** Domains (UUIDs) whose state `desired` fully describes; "all" when clearing everything. */
  scope: string[] | "all";
  /** Remove virtqos objects whose owner is gone (IFBs whose tap no longer exists). */
  sweep: boolean;
  /** The policy's groups (trees shared by their members). */
  groups?: PolicyGroup[];
}

/** A shaping tree virtqos owns on one device: root HTB 7651:, classes (leaf classes with a leaf qdisc), filters. */
export interface Tree {
  defaultMinor: number;
  classes: { classid: string; parent: string; htb: HtbClass; leaf?: Leaf; leafHandle?: string }[];
  /** Classification filters on the root (group trees); identity is the u32 handle. */
  filters?: TreeFilter[];
}

export type HookFilter =
  | { action: "redirect"; toDev: string }
  | { action: "police"; rateBytesPerSec: number; burstBytes: number };

export type Hook = "ingress" | "egress";

interface Tagged {
  /** Which interface (domain UUID/MAC) and direction the op serves, for logs and atomic per-interface skips. */
  iface?: string;
  direction?: Direction;
}

export type Op = Tagged &
  (
    | { op: "ifb-add"; dev: string; alias: string }
    | { op: "ifb-del"; dev: string }
    | { op: "link-up"; dev: string }
    | { op: "root-replace"; dev: string; defaultMinor: number }
    | { op: "root-del"; dev: string }
    | { op: "class-replace"; dev: string; parent: string; classid: string; htb: HtbClass }
    | { op: "class-del"; dev: string; classid: string }
    | { op: "leaf-replace"; dev: string; parent: string; handle: string; leaf: Leaf }
    | { op: "hook-add"; dev: string; kind: "clsact" | "ingress" }
    | { op: "hook-del"; dev: string; kind: "clsact" | "ingress" }
    | {
        op: "filter-add" | "filter-replace";
        dev: string;
        hook: Hook;
        prio: number;
        classifier: "u32" | "matchall";
        filter: HookFilter;
      }
    | { op: "filter-del"; dev: string; hook: Hook; prio: number }
    | { op: "tree-filter-add"; dev: string; prio: number; spec: string }
    | { op: "tree-filter-del"; dev: string; prio: number; handle: string }
  );

export interface PlanProblem {
  code: string;
  iface?: string;
  dev?: string;
  message: string;
  fix: string;
}

export interface PlanNote {
  level: "info" | "warning";
  iface?: string;
  message: string;
}

export interface Plan {
  ops: Op[];
  problems: PlanProblem[];
  notes: PlanNote[];
  /** Records to write (one per domain in scope that still has shaped interfaces) and domains to forget. */
  records: DomainRecord[];
  forget: string[];
}

/** Kernel-assigned default root qdiscs (handle 0:) may be replaced; any other root qdisc is someone's. */
export function isDefaultRoot(q: ObservedQdisc | undefined): boolean {
  return !q || q.handle === "0:" || q.kind === "noqueue";
}

export const isOurRoot = (q: ObservedQdisc | undefined): boolean =>
  q?.kind === "htb" && q.handle === ROOT_HANDLE;
const isOurPrio = (prio: number) => prio >= PRIO_MIN && prio <= PRIO_MAX;
// One handle per leaf kind: `qdisc replace` cannot change a qdisc's kind in place, but grafts a new handle.
export const LEAF_HANDLES: Record<Leaf["kind"], string> = {
  bfifo: "7652:",
  sfq: "7653:",
  fq_codel: "7654:",
  tbf: "7655:",
};

/** Which kernel hook carries each direction. On a macvtap host RX is the guest's download: they swap. */
export function hookFor(direction: Direction, swapped: boolean): "root" | "ingress" {
  const download = direction === "inbound";
  return download !== swapped ? "root" : "ingress";
}

function treeFor(limit: DirectionLimit, caps: Capabilities, leafChoice: LeafChoice): Tree {
  const htb = htbClass({
    rateBitsPerSec: limit.rateBitsPerSec,
    ceilBitsPerSec: limit.ceilBitsPerSec,
    burstBytes: limit.burstBytes,
  });
  const { leaf } = chooseLeaf(htb.ceilBytesPerSec, caps, leafChoice);
  return {
    defaultMinor: 1,
    classes: [
      { classid: IFACE_CLASSID, parent: ROOT_HANDLE, htb, leaf, leafHandle: LEAF_HANDLES[leaf.kind] },
    ],
  };
}

interface DeviceWant {
  tree?: Tree;
  treeTag?: Tagged;
  filters: { hook: Hook; prio: number; filter: HookFilter; tag: Tagged }[];
  /** Interface whose problems void every op on this device. */
  owner?: string;
}

export function plan(
  desired: DesiredInterface[],
  observed: Observed,
  caps: Capabilities,
  options: PlanOptions,
): Plan {
  const problems: PlanProblem[] = [];
  const notes: PlanNote[] = [];
  const wants = new Map<string, DeviceWant>();
  const ifbWants = new Map<string, { alias: string; tree: Tree; tag: Tagged }>();
  const records = new Map<string, DomainRecord>();
  const inScope = (uuid: string | undefined) =>
    options.scope === "all" || (uuid !== undefined && options.scope.includes(uuid));
  const groups = options.groups ?? [];
  const admission = admitMembers(desired, observed.records, observed.links, groups, (u) => inScope(u));
  problems.push(...admission.problems);

  for (const d of desired) {
    const record = records.get(d.domainUuid) ?? {
      domainName: d.domainName,
      domainUuid: d.domainUuid,
      interfaces: [],
    };
    records.set(d.domainUuid, record);
    const label = `${d.domainName} ${d.mac}${d.dev ? ` (${d.dev})` : ""}`;
    if (d.notEnforceable) {
      if (!d.inbound && !d.outbound && !d.group) continue;
      notes.push({
        level: "warning",
        iface: d.key,
        message: `${label}: limits not enforceable: ${d.notEnforceable}`,
      });
      record.interfaces.push({
        mac: d.mac,
        type: d.type,
        swapped: d.swapped,
        notEnforceable: d.notEnforceable,
      });
      continue;
    }
    if (!d.inbound && !d.outbound && !d.group) {
      notes.push({ level: "warning", iface: d.key, message: `${label}: no bandwidth limits found` });
      continue;
    }
    if (!d.dev || !observed.links.has(d.dev)) {
      notes.push({
        level: "info",
        iface: d.key,
        message: `${label}: host device ${d.dev ?? "(not yet named)"} does not exist; nothing to shape now`,
      });
      continue;
    }
    const want: DeviceWant = wants.get(d.dev) ?? { filters: [], owner: d.key };
    wants.set(d.dev, want);
    let ifb: string | undefined;
    // What is really enforced per direction, for the record (a refused member falls back to its own limit).
    const applied: { inbound?: DirectionLimit; outbound?: DirectionLimit } = {};
    const recordGroup: GroupMembership | undefined = d.group
      ? { ...d.group, inbound: undefined, outbound: undefined }
      : undefined;
    for (const direction of ["inbound", "outbound"] as const) {
      const tag: Tagged = { iface: d.key, direction };
      const side = hookFor(direction, d.swapped);
      const minor = admission.admitted.get(`${d.key}|${direction}`);
      if (d.group && minor !== undefined && recordGroup) {
        // A group member: this direction's traffic goes to the group's tree, from the hook that carries it.
        recordGroup[direction] = { ...d.group[direction]!, minor };
        const toDev = groupIfbName(d.group.tree, direction);
        const hook = side === "root" ? "egress" : "ingress";
        const prio = hook === "egress" ? PRIO_REDIRECT_EGRESS : PRIO_REDIRECT;
        want.filters.push({ hook, prio, filter: { action: "redirect", toDev }, tag });
        continue;
      }
      // Not admitted to its group (or in none): the interface's own limit, else the group ceiling as its own.
      const m = d.group?.[direction];
      const limit: DirectionLimit | undefined =
        d[direction] ??
        (m
          ? {
              rateBitsPerSec: m.ceilBitsPerSec,
              ceilBitsPerSec: m.ceilBitsPerSec,
              mode: "shape",
              source: "policy",
            }
          : undefined);
      if (!limit) continue;
      applied[direction] = limit;
      if (side === "root") {
        want.tree = treeFor(limit, caps, options.leaf);
        want.treeTag = tag;
      } else if (limit.mode === "police" && direction === "outbound") {
        if (!caps.actions.includes("police")) {
          problems.push({
            code: "POLICE_UNAVAILABLE",
            iface: d.key,
            dev: d.dev,
            message: `${label}: outbound mode "police" needs the tc police action, which this kernel lacks`,
            fix: "remove `mode: police` (the default, shaping through an IFB, works here and is gentler on TCP and UDP)",
          });
          continue;
        }
        const htb = htbClass(limit);
        want.filters.push({
          hook: "ingress",
          prio: PRIO_REDIRECT,
          filter: { action: "police", rateBytesPerSec: htb.rateBytesPerSec, burstBytes: htb.burstBytes },
          tag,
        });
      } else {
        if (!caps.ifb) {
          problems.push({
            code: "IFB_UNAVAILABLE",
            iface: d.key,
            dev: d.dev,
            message: `${label}: shaping ${direction} needs an IFB device, which this kernel cannot create`,
            fix: "enable CONFIG_IFB in the kernel, or use `mode: police` for outbound where the police action exists",
          });
          continue;
        }
        ifb = interfaceIfbName(d.domainUuid, d.mac);
        ifbWants.set(ifb, {
          alias: formatIfbAlias({ role: "iface", domainUuid: d.domainUuid, mac: d.mac, dev: d.dev }),
          tree: treeFor(limit, caps, options.leaf),
          tag,
        });
        want.filters.push({
          hook: "ingress",
          prio: PRIO_REDIRECT,
          filter: { action: "redirect", toDev: ifb },
          tag,
        });
      }
    }
    record.interfaces.push({
      mac: d.mac,
      dev: d.dev,
      ifindex: observed.links.get(d.dev)?.ifindex,
      type: d.type,
      swapped: d.swapped,
      inbound: applied.inbound,
      outbound: applied.outbound,
      ifb,
      group: recordGroup?.inbound || recordGroup?.outbound ? recordGroup : undefined,
    });
  }

  // Group trees: every tree that has members (recorded or new) or still exists in the kernel.
  const treeKeys = new Set(admission.members.keys());
  for (const link of observed.links.values()) {
    const a = parseIfbAlias(link.alias);
    if (a?.role === "group" && a.group && a.direction) treeKeys.add(treeKey(a.group, a.direction));
  }
  const keepIfbs = new Set<string>();
  for (const tk of treeKeys) {
    const [tree, direction] = tk.split("|") as [string, Direction];
    const name = groupIfbName(tree, direction);
    const members = admission.members.get(tk) ?? [];
    const top = groups.find((g) => g.name === tree && g.parent === undefined);
    if (admission.frozen.has(tk) || (!top && members.length)) {
      keepIfbs.add(name);
      const message = `group "${tree}" (or one of its child groups) is no longer in the policy but guests still use it; its tree is left as it is until \`virtqos apply\` runs for them`;
      if (!notes.some((n) => n.message === message)) notes.push({ level: "warning", message });
      continue;
    }
    if (!top || members.length === 0) continue;
    ifbWants.set(name, {
      alias: formatIfbAlias({ role: "group", group: tree, direction }),
      tree: buildGroupTree(top, groups, members, direction, caps, options.leaf),
      tag: {},
    });
  }

  // Devices to look at: everything wanted, plus what virtqos left earlier for the domains in scope.
  const devs = new Set<string>(wants.keys());
  for (const r of observed.records) {
    if (!inScope(r.domainUuid)) continue;
    for (const i of r.interfaces) {
      const link = i.dev ? observed.links.get(i.dev) : undefined;
      // Tap names are reused (vnet3 today is another guest's tomorrow): trust a record only for the same ifindex.
      if (i.dev && link && (i.ifindex === undefined || i.ifindex === link.ifindex)) devs.add(i.dev);
    }
  }
  if (options.scope === "all") {
    for (const [dev, o] of observed.devices) {
      if (o.qdiscs.some(isOurRoot) || o.filters.some((f) => f.hook !== "class" && isOurPrio(f.prio)))
        devs.add(dev);
    }
  }

  const pre: Op[] = [];
  const main: Op[] = [];
  const post: Op[] = [];
  // A member refused by admission is still shaped (on its own): only other problems void an interface.
  const failed = new Set(problems.filter((p) => p.code !== "GROUP_ADMISSION").map((p) => p.iface));
  const emptyDevice = (dev: string): ObservedDevice => ({ dev, qdiscs: [], classes: [], filters: [] });

  // IFBs first: the tree must exist before a redirect points traffic at it.
  for (const [name, w] of ifbWants) {
    if (failed.has(w.tag.iface)) continue;
    const link = observed.links.get(name);
    if (link && parseIfbAlias(link.alias) === undefined) {
      problems.push({
        code: "IFB_NAME_TAKEN",
        iface: w.tag.iface,
        dev: name,
        message: `device ${name} exists but was not created by virtqos`,
        fix: `delete or rename ${name}; virtqos derives this name from the domain UUID and MAC`,
      });
      failed.add(w.tag.iface);
      continue;
    }
    if (!link) pre.push({ op: "ifb-add", dev: name, alias: w.alias, ...w.tag });
    if (!link?.up) pre.push({ op: "link-up", dev: name, ...w.tag });
    const res = diffTree(name, w.tree, observed.devices.get(name) ?? emptyDevice(name), w.tag);
    if ("problem" in res) {
      problems.push(res.problem);
      failed.add(w.tag.iface);
    } else main.push(...res.ops);
  }

  for (const dev of devs) {
    const want = wants.get(dev) ?? { filters: [] };
    if (want.owner && failed.has(want.owner)) continue;
    const obs = observed.devices.get(dev) ?? emptyDevice(dev);
    const record = findRecord(observed.records, dev);
    const tree = diffTree(dev, want.tree, obs, want.treeTag ?? {});
    const hooks = diffHooks(dev, want.filters, obs, caps, record?.createdHook ?? false);
    const problem = "problem" in tree ? tree.problem : "problem" in hooks ? hooks.problem : undefined;
    if (problem) {
      problems.push({ ...problem, iface: want.owner });
      if (want.owner) failed.add(want.owner);
      continue;
    }
    if ("ops" in tree && "ops" in hooks) {
      main.push(...tree.ops, ...hooks.before, ...hooks.ops, ...hooks.after);
      if (hooks.created) {
        for (const r of records.values())
          for (const i of r.interfaces) if (i.dev === dev) i.createdHook = true;
      }
    }
  }
  // Keep "created the hook qdisc" across re-applies, so a later clear removes only what virtqos added.
  for (const r of records.values()) {
    for (const i of r.interfaces) {
      if (i.dev && !i.createdHook) i.createdHook = findRecord(observed.records, i.dev)?.createdHook;
    }
  }

  // IFBs that nobody wants any more: those of domains in scope, and (sweep) those whose tap is gone.
  for (const link of observed.links.values()) {
    const alias = parseIfbAlias(link.alias);
    if (!alias || ifbWants.has(link.name) || keepIfbs.has(link.name)) continue;
    if (alias.role === "group") {
      // No member left anywhere: the group's tree goes with its last member.
      post.push({ op: "ifb-del", dev: link.name });
      continue;
    }
    const orphan = options.sweep && (!alias.dev || !observed.links.has(alias.dev));
    if (inScope(alias.domainUuid) || orphan) {
      post.push({ op: "ifb-del", dev: link.name, iface: `${alias.domainUuid}/${alias.mac}` });
    }
  }

  // A redirect still pointing at an IFB about to go (its owner's record may be lost, or its tap reused)
  // must go first: the kernel drops everything a redirect to a missing device catches.
  const removedIfbs = new Set(post.filter((o) => o.op === "ifb-del").map((o) => o.dev));
  const handled = new Set(
    [...main, ...pre].flatMap((o) =>
      o.op === "filter-del" || o.op === "filter-add" ? [`${o.dev}/${o.hook}/${o.prio}`] : [],
    ),
  );
  for (const [dev, o] of observed.devices) {
    for (const f of o.filters) {
      if (f.hook === "class" || !isOurPrio(f.prio) || !f.redirectDev || !removedIfbs.has(f.redirectDev))
        continue;
      const id = `${dev}/${f.hook}/${f.prio}`;
      if (handled.has(id) || !observed.links.has(dev)) continue;
      handled.add(id);
      main.push({ op: "filter-del", dev, hook: f.hook, prio: f.prio });
    }
  }
  const voided = (op: Op) => op.iface !== undefined && failed.has(op.iface);
  const scopeUuids = options.scope === "all" ? observed.records.map((r) => r.domainUuid) : options.scope;
  const keep = [...records.values()].filter((r) => r.interfaces.length > 0);
  const forget = scopeUuids.filter((u) => !keep.some((r) => r.domainUuid === u));
  for (const r of keep) {
    r.interfaces = r.interfaces.filter((i) => !failed.has(`${r.domainUuid}/${i.mac}`) || i.notEnforceable);
  }
  return {
    ops: [...pre, ...main, ...post].filter((op) => !voided(op)),
    problems,
    notes,
    records: keep,
    forget,
  };
}

function findRecord(records: DomainRecord[], dev: string) {
  for (const r of records) for (const i of r.interfaces) if (i.dev === dev) return i;
  return undefined;
}

type DiffResult = { ops: Op[] } | { problem: PlanProblem };

/** Bring virtqos's root tree on `dev` from what is observed to `want` (undefined: remove it). */
export function diffTree(dev: string, want: Tree | undefined, obs: ObservedDevice, tag: Tagged): DiffResult {
  const root = obs.qdiscs.find((q) => q.parent === "root");
  const ours = isOurRoot(root);
  if (!want) return { ops: ours ? [{ op: "root-del", dev }] : [] };
  if (!ours && !isDefaultRoot(root)) {
    return {
      problem: {
        code: "ROOT_QDISC_FOREIGN",
        dev,
        message: `${dev} already has a root qdisc ${root?.kind} ${root?.handle} that virtqos did not create`,
        fix: `remove it (tc qdisc del dev ${dev} root) if nothing else needs it, or stop shaping this interface with virtqos`,
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
      f.handle,
      f,
    ]),
  );
  const before: Op[] = [];
  const after: Op[] = [];
  const wantFilters = want.filters ?? [];
  for (const f of wantFilters) {
    const o = have.get(f.handle);
    const same =
      o &&
      o.flowid === f.flowid &&
      o.link === f.link &&
      o.divisor === f.divisor &&
      !moved.has(f.flowid ?? "");
    if (same) continue;
    if (o) before.push({ op: "tree-filter-del", dev, prio: GROUP_FILTER_PRIO, handle: f.handle, ...tag });
    after.push({ op: "tree-filter-add", dev, prio: GROUP_FILTER_PRIO, spec: f.spec, ...tag });
  }
  const wantedHandles = new Set(wantFilters.map((f) => f.handle));
  // Member filters before the hash table and link that hold them.
  const staleFilters = [...have.values()]
    .filter((f) => f.handle && !wantedHandles.has(f.handle))
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

interface HookDiff {
  before: Op[];
  ops: Op[];
  after: Op[];
  created: boolean;
}

/** Bring virtqos's filters on the ingress/egress hooks of `dev` to `want`, sharing the hook qdisc with others. */
function diffHooks(
  dev: string,
  want: DeviceWant["filters"],
  obs: ObservedDevice,
  caps: Capabilities,
  createdHookEarlier: boolean,
): HookDiff | { problem: PlanProblem } {
  const hookQ = obs.qdiscs.find((q) => q.parent === "ffff:fff1");
  const ours = obs.filters.filter((f) => f.hook !== "class" && isOurPrio(f.prio));
  const foreign = obs.filters.filter((f) => f.hook !== "class" && !isOurPrio(f.prio));
  const result: HookDiff = { before: [], ops: [], after: [], created: false };
  const needsEgress = want.some((w) => w.hook === "egress");
  if (want.length && !hookQ) {
    const kind = caps.qdiscs.includes("clsact") ? "clsact" : "ingress";
    if (needsEgress && kind !== "clsact") {
      return {
        problem: {
          code: "CLSACT_UNAVAILABLE",
          dev,
          message: `${dev}: redirecting egress traffic needs the clsact qdisc, which this kernel lacks`,
          fix: "use a kernel with CONFIG_NET_SCH_INGRESS (clsact), 4.5 or newer",
        },
      };
    }
    result.before.push({ op: "hook-add", dev, kind, ...want[0].tag });
    result.created = true;
  } else if (needsEgress && hookQ?.kind === "ingress") {
    return {
      problem: {
        code: "INGRESS_QDISC_FOREIGN",
        dev,
        message: `${dev} has an "ingress" qdisc, but shaping here needs "clsact" (ingress and egress hooks)`,
        fix: `if nothing else uses it, remove it: tc qdisc del dev ${dev} ingress`,
      },
    };
  }
  const classifier = caps.classifiers.includes("matchall") ? "matchall" : "u32";
  for (const w of want) {
    const o = ours.find((f) => f.hook === w.hook && f.prio === w.prio);
    if (o && sameHookFilter(o, w.filter, classifier)) continue;
    const spec = { dev, hook: w.hook, prio: w.prio, classifier, filter: w.filter, ...w.tag } as const;
    if (!o) {
      result.ops.push({ op: "filter-add", ...spec });
    } else if (classifier === "matchall" && o.kind === "matchall") {
      result.ops.push({ op: "filter-replace", ...spec });
    } else {
      // u32 node handles (800::800) live in hash tables shared by every u32 filter on the hook, whatever
      // their priority: replacing "by handle" could rewrite someone else's filter. Delete ours by priority.
      result.ops.push(
        { op: "filter-del", dev, hook: w.hook, prio: w.prio, ...w.tag },
        { op: "filter-add", ...spec },
      );
    }
  }
  const seen = new Set<string>();
  for (const f of ours) {
    const id = `${f.hook}/${f.prio}`;
    if (seen.has(id) || want.some((w) => w.hook === f.hook && w.prio === f.prio)) continue;
    seen.add(id);
    result.ops.push({ op: "filter-del", dev, hook: f.hook as Hook, prio: f.prio });
  }
  if (!want.length && hookQ && createdHookEarlier && foreign.length === 0) {
    result.after.push({ op: "hook-del", dev, kind: hookQ.kind === "clsact" ? "clsact" : "ingress" });
  }
  return result;
}

function sameHookFilter(o: ObservedFilter, f: HookFilter, classifier: string): boolean {
  if (o.kind !== classifier) return false;
  if (f.action === "redirect") return o.redirectDev === f.toDev && !o.police;
  return (
    !!o.police &&
    printTcRate(o.police.rateBitsPerSec) === printTcRate(f.rateBytesPerSec * 8) &&
    sameSize(o.police.burstBytes, f.burstBytes)
  );
}

/** The tree virtqos had on a device, read back from the kernel, so a failed apply can be rolled back to it. */
export function treeFromObserved(obs: ObservedDevice | undefined): Tree | undefined {
  const root = obs?.qdiscs.find((q) => q.parent === "root");
  if (!obs || !isOurRoot(root)) return undefined;
  const classes: Tree["classes"] = [];
  for (const c of obs.classes) {
    const leafQ = obs.qdiscs.find((q) => q.parent === c.classid);
    let leaf: Leaf | undefined;
    if (leafQ?.kind === "bfifo") leaf = { kind: "bfifo", limitBytes: Number(leafQ.options.limit) };
    else if (leafQ?.kind === "sfq") leaf = { kind: "sfq", limitPackets: Number(leafQ.options.limit) };
    else if (leafQ?.kind === "fq_codel") leaf = { kind: "fq_codel" };
    else if (leafQ?.kind === "tbf") {
      leaf = {
        kind: "tbf",
        rateBytesPerSec: Number(leafQ.options.rate),
        burstBytes: Number(leafQ.options.burst ?? 3028),
        limitBytes: Math.round(
          (Number(leafQ.options.lat) / 1e6) * Number(leafQ.options.rate) +
            Number(leafQ.options.burst ?? 3028),
        ),
      };
    }
    classes.push({
      classid: c.classid,
      parent: c.parent,
      htb: {
        rateBytesPerSec: Math.round(c.rateBitsPerSec / 8),
        ceilBytesPerSec: Math.round(c.ceilBitsPerSec / 8),
        burstBytes: c.burstBytes,
        cburstBytes: c.cburstBytes,
        quantumBytes: c.quantumBytes ?? 1514,
      },
      leaf: leaf ?? { kind: "bfifo", limitBytes: 10 * 1514 },
      leafHandle: leafQ?.handle ?? "7652:",
    });
  }
  return { defaultMinor: Number.parseInt(String(root?.options.default ?? "0x1"), 16) || 1, classes };
}

/**
 * Operations that take the devices a failed batch touched back to how `before` had them: virtqos's own
 * trees and filters as they were, hook qdiscs and IFBs the batch created removed.
 */
export function planRestore(
  before: Observed,
  after: Observed,
  devs: Iterable<string>,
  caps: Capabilities,
): Op[] {
  const ops: Op[] = [];
  const post: Op[] = [];
  for (const dev of devs) {
    const a = after.devices.get(dev);
    if (!after.links.has(dev) || !a) continue;
    const b = before.devices.get(dev);
    if (!before.links.has(dev)) {
      if (parseIfbAlias(after.links.get(dev)?.alias)) post.push({ op: "ifb-del", dev });
      continue;
    }
    const tree = diffTree(dev, treeFromObserved(b), a, {});
    if ("ops" in tree) ops.push(...tree.ops);
    const want: DeviceWant["filters"] = (b?.filters ?? [])
      .filter((f) => f.hook !== "class" && isOurPrio(f.prio))
      .flatMap((f) => {
        const filter: HookFilter | undefined = f.redirectDev
          ? { action: "redirect", toDev: f.redirectDev }
          : f.police
            ? {
                action: "police",
                rateBytesPerSec: Math.round(f.police.rateBitsPerSec / 8),
                burstBytes: f.police.burstBytes,
              }
            : undefined;
        return filter ? [{ hook: f.hook as Hook, prio: f.prio, filter, tag: {} }] : [];
      });
    const hadHook = b?.qdiscs.some((q) => q.parent === "ffff:fff1") ?? false;
    const hooks = diffHooks(dev, want, a, caps, !hadHook);
    if ("ops" in hooks) ops.push(...hooks.before, ...hooks.ops, ...hooks.after);
  }
  return [...ops, ...post];
}
