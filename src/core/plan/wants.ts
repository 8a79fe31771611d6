import { interfaceTree } from "../iface-tree.js";
import type { DesiredInterface, Direction, DirectionLimit, DomainRecord, GroupMembership } from "../model.js";
import { formatIfbAlias, groupIfbName, interfaceIfbName } from "../names.js";
import type { LeafChoice } from "../policy/types.js";
import { type Capabilities, maxBucketBytes, maxFrameBytes, policeBurstBytes } from "../recipe.js";
import { PRIO_REDIRECT, PRIO_REDIRECT_EGRESS } from "../tc/handles.js";
import type { ObservedLink } from "../tc/normalise.js";
import { formatRate, formatSize, toKernelBytesPerSec } from "../units.js";
import type { DeviceWant, Diagnostic, IfbWant, Tagged } from "./types.js";

// Step 1: per interface, what each host device should carry (a tree on its root, filters on its hooks), which
// per-interface IFBs should exist, and the record of what will be in force. Group trees themselves are the
// next step (group-trees.ts); here a group member only gets the redirect into its group's IFB.

/** Which kernel hook carries each direction. On a macvtap host RX is the guest's download: they swap. */
export function hookFor(direction: Direction, swapped: boolean): "root" | "ingress" {
  const download = direction === "inbound";
  return download !== swapped ? "root" : "ingress";
}

export interface InterfaceWants {
  devices: Map<string, DeviceWant>;
  ifbs: Map<string, IfbWant>;
  /** Per domain UUID: the interfaces as they will be shaped (refusals are taken out later, records.ts). */
  records: Map<string, DomainRecord>;
  problems: Diagnostic[];
  notes: Diagnostic[];
}

export function interfaceWants(
  desired: DesiredInterface[],
  links: Map<string, ObservedLink>,
  /** key|direction -> class minor of the members admitted to their group's tree. */
  admitted: Map<string, number>,
  caps: Capabilities,
  leafChoice: LeafChoice,
): InterfaceWants {
  const out: InterfaceWants = {
    devices: new Map(),
    ifbs: new Map(),
    records: new Map(),
    problems: [],
    notes: [],
  };
  for (const d of desired) {
    const record = out.records.get(d.domainUuid) ?? {
      domainName: d.domainName,
      domainUuid: d.domainUuid,
      interfaces: [],
    };
    out.records.set(d.domainUuid, record);
    const label = `${d.domainName} ${d.mac}${d.dev ? ` (${d.dev})` : ""}`;
    // Refused before planning (src/core/ovs-native.ts): its wants are made as usual, then voided with it.
    if (d.problem) out.problems.push(d.problem);
    if (d.notEnforceable) {
      if (!d.inbound && !d.outbound && !d.group) continue;
      out.notes.push({
        code: "NOT_ENFORCEABLE",
        level: "warning",
        iface: d.key,
        message: `${label}: limits not enforceable: ${d.notEnforceable}`,
      });
      record.interfaces.push({ mac: d.mac, type: d.type, notEnforceable: d.notEnforceable });
      continue;
    }
    if (!d.inbound && !d.outbound && !d.group) {
      // A lone floor outside a group was already reported, with its fix, when limits were resolved.
      if (!d.floorOnly?.length)
        out.notes.push({
          code: "NO_LIMITS",
          level: "warning",
          iface: d.key,
          message: `${label}: no bandwidth limits found`,
        });
      continue;
    }
    if (!d.dev || !links.has(d.dev)) {
      out.notes.push({
        code: "DEVICE_ABSENT",
        level: "info",
        iface: d.key,
        message: `${label}: host device ${d.dev ?? "(not yet named)"} does not exist; nothing to shape now`,
      });
      continue;
    }
    const want: DeviceWant = out.devices.get(d.dev) ?? { filters: [], owner: d.key };
    out.devices.set(d.dev, want);
    const frameBytes = maxFrameBytes(links.get(d.dev)?.mtu);
    const ctx: IfaceContext = { d, dev: d.dev, label, want, caps, leafChoice, out, frameBytes };
    // What is really enforced per direction, for the record (a refused member falls back to its own limit).
    const applied: { inbound?: DirectionLimit; outbound?: DirectionLimit } = {};
    // Directions Open vSwitch enforces (`ovs: native`): no tc objects here, recorded apart (src/core/ovs-native.ts).
    const byOvs: { inbound?: DirectionLimit; outbound?: DirectionLimit } = {};
    const recordGroup: GroupMembership | undefined = d.group
      ? { ...d.group, inbound: undefined, outbound: undefined }
      : undefined;
    for (const direction of ["inbound", "outbound"] as const) {
      const tag: Tagged = { iface: d.key, direction };
      const side = hookFor(direction, d.swapped);
      const minor = admitted.get(`${d.key}|${direction}`);
      if (d.group && minor !== undefined && recordGroup) {
        // A group member: this direction's traffic goes to the group's tree, from the hook that carries it.
        recordGroup[direction] = { ...d.group[direction]!, minor };
        const toDev = groupIfbName(d.group.tree, direction);
        const hook = side === "root" ? "egress" : "ingress";
        const prio = hook === "egress" ? PRIO_REDIRECT_EGRESS : PRIO_REDIRECT;
        want.filters.push({ hook, prio, filter: { action: "redirect", toDev }, tag });
        continue;
      }
      const limit = ownLimit(d, direction);
      if (!limit) continue;
      if (d.ovsNative?.includes(direction)) {
        byOvs[direction] = limit;
        continue;
      }
      applied[direction] = limit;
      const policed = limit.mode === "police" && direction === "outbound" && side !== "root";
      if (!policed) warnBurstLowered(ctx, direction, limit);
      if (side === "root") {
        want.tree = interfaceTree(limit, caps, leafChoice, frameBytes);
        want.treeTag = tag;
      } else if (limit.mode === "police" && direction === "outbound") {
        wantPolice(ctx, limit, tag);
      } else {
        wantIfb(ctx, direction, limit, tag);
      }
    }
    record.interfaces.push({
      mac: d.mac,
      dev: d.dev,
      ifindex: links.get(d.dev)?.ifindex,
      type: d.type,
      inbound: applied.inbound,
      outbound: applied.outbound,
      group: recordGroup?.inbound || recordGroup?.outbound ? recordGroup : undefined,
      ...(byOvs.inbound || byOvs.outbound ? { ovs: byOvs } : {}),
    });
  }
  return out;
}

interface IfaceContext {
  d: DesiredInterface;
  dev: string;
  label: string;
  /** The largest frame the tap carries. */
  frameBytes: number;
  want: DeviceWant;
  caps: Capabilities;
  leafChoice: LeafChoice;
  out: InterfaceWants;
}

/** Not admitted to its group (or in none): the interface's own limit, else the group ceiling as its own. */
function ownLimit(d: DesiredInterface, direction: Direction): DirectionLimit | undefined {
  const m = d.group?.[direction];
  return (
    d[direction] ??
    (m
      ? {
          rateBitsPerSec: m.ceilBitsPerSec,
          ceilBitsPerSec: m.ceilBitsPerSec,
          mode: "shape",
          source: "policy",
        }
      : undefined)
  );
}

function warnBurstLowered(ctx: IfaceContext, direction: Direction, limit: DirectionLimit): void {
  if (limit.burstBytes === undefined) return;
  const deepest = maxBucketBytes(toKernelBytesPerSec(limit.rateBitsPerSec));
  if (limit.burstBytes > deepest)
    ctx.out.notes.push({
      code: "BURST_ADJUSTED",
      level: "warning",
      iface: ctx.d.key,
      direction,
      message: `${ctx.label}: ${direction} burst lowered from ${formatSize(limit.burstBytes)} to ${formatSize(deepest)}, the deepest bucket tc can express at ${formatRate(limit.rateBitsPerSec)}`,
    });
}

/** Guest upload policed on the tap's ingress hook (libvirt's way), where the kernel has the police action. */
function wantPolice(ctx: IfaceContext, limit: DirectionLimit, tag: Tagged): void {
  const { d, label } = ctx;
  if (!ctx.caps.actions.includes("police")) {
    ctx.out.problems.push({
      code: "POLICE_UNAVAILABLE",
      level: "error",
      iface: d.key,
      dev: ctx.dev,
      direction: "outbound",
      message: `${label}: outbound mode "police" needs the tc police action, which this kernel lacks`,
    });
    return;
  }
  const rateBytesPerSec = toKernelBytesPerSec(limit.rateBitsPerSec);
  const burstBytes = policeBurstBytes(rateBytesPerSec, limit.burstBytes);
  if (limit.burstBytes !== undefined && burstBytes !== limit.burstBytes) {
    ctx.out.notes.push({
      code: "BURST_ADJUSTED",
      level: "warning",
      iface: d.key,
      direction: "outbound",
      message:
        burstBytes > limit.burstBytes
          ? `${label}: outbound police burst raised from ${formatSize(limit.burstBytes)} to ${formatSize(burstBytes)}: a policer drops every packet larger than its bucket, and guests send 64 KiB GSO packets`
          : `${label}: outbound police burst lowered from ${formatSize(limit.burstBytes)} to ${formatSize(burstBytes)}, the deepest bucket tc can express at ${formatRate(limit.rateBitsPerSec)}`,
    });
  }
  ctx.want.filters.push({
    hook: "ingress",
    prio: PRIO_REDIRECT,
    filter: { action: "police", rateBytesPerSec, burstBytes },
    tag,
  });
}

/** The direction the tap's ingress hook carries, shaped on the interface's own IFB (see recordIfb). */
function wantIfb(ctx: IfaceContext, direction: Direction, limit: DirectionLimit, tag: Tagged): void {
  const { d, label } = ctx;
  if (!ctx.caps.ifb) {
    ctx.out.problems.push({
      code: "IFB_UNAVAILABLE",
      level: "error",
      iface: d.key,
      dev: ctx.dev,
      direction,
      message: `${label}: shaping ${direction} needs an IFB device, which this kernel cannot create`,
    });
    return;
  }
  const ifb = interfaceIfbName(d.domainUuid, d.mac);
  ctx.out.ifbs.set(ifb, {
    alias: formatIfbAlias({ role: "iface", domainUuid: d.domainUuid, mac: d.mac, dev: ctx.dev }),
    tree: interfaceTree(limit, ctx.caps, ctx.leafChoice, ctx.frameBytes),
    tag,
  });
  ctx.want.filters.push({
    hook: "ingress",
    prio: PRIO_REDIRECT,
    filter: { action: "redirect", toDev: ifb },
    tag,
  });
}
