import { groupCeil } from "./admission.js";
import type { Diagnostic } from "./errors.js";
import type {
  DesiredInterface,
  DirectionLimit,
  DomainInfo,
  GroupMembership,
  GuestInterface,
  MemberLimit,
} from "./model.js";
import type {
  Policy,
  PolicyDirection,
  PolicyDomainRule,
  PolicyGroup,
  PolicyInterfaceRule,
} from "./policy/types.js";
import { libvirtRateToBitsPerSec } from "./units.js";

// Which group an interface belongs to, and its floor and ceiling there. Membership comes from the policy
// (explicit members, selectors on domain name, libvirt network or bridge, a rule's `group:`) or from the
// domain's metadata; an interface in two groups is an error naming both.

function glob(pattern: string): RegExp {
  const escaped = pattern
    .replace(/[.+^${}()|[\]\\]/g, "\\$&")
    .replace(/\*/g, ".*")
    .replace(/\?/g, ".");
  return new RegExp(`^${escaped}$`);
}

function memberMatches(
  m: PolicyGroup["members"][number],
  domain: DomainInfo,
  iface: GuestInterface,
): boolean {
  const who = m.domain.toLowerCase();
  if (who !== domain.name.toLowerCase() && who.replace(/-/g, "") !== domain.uuid.replace(/-/g, ""))
    return false;
  return m.mac === undefined || m.mac === iface.mac;
}

/** Fill `desired.group` for one interface. Returns problems (conflicts, unknown groups) to report. */
export function assignGroup(
  desired: DesiredInterface,
  domain: DomainInfo,
  iface: GuestInterface,
  policy: Policy,
  domainRule: PolicyDomainRule | undefined,
  ifaceRule: PolicyInterfaceRule | undefined,
): Diagnostic[] {
  const anyNamed =
    domain.metadataGroup || domain.metadata.some((m) => m.group) || domainRule?.group || ifaceRule?.group;
  if (!policy.groups.length && !anyNamed) return [];
  const byName = new Map(policy.groups.map((g) => [g.name, g]));
  const problems: Diagnostic[] = [];
  const hits = new Map<string, string>();
  const label = `${domain.name} ${iface.mac ?? `#${iface.index}`}`;
  const named = (name: string | undefined, via: string) => {
    if (!name) return;
    const g = byName.get(name);
    if (!g) {
      problems.push({
        code: "GROUP_UNKNOWN",
        level: "error",
        iface: desired.key,
        message: `${label}: group "${name}" named in ${via} is not defined in the policy; interface not grouped`,
      });
      return;
    }
    if (!hits.has(g.name)) hits.set(g.name, via);
  };
  named(ifaceRule?.group ?? domainRule?.group, "the policy's domains section");
  named(
    domain.metadata.find((m) => m.mac === iface.mac)?.group ?? domain.metadataGroup,
    "the domain's <metadata>",
  );
  for (const g of policy.groups) {
    if (hits.has(g.name)) continue;
    if (g.members.some((m) => memberMatches(m, domain, iface))) hits.set(g.name, "members");
    else if (g.select.domains?.some((p) => glob(p).test(domain.name))) hits.set(g.name, "select.domains");
    else if (iface.sourceNetwork && g.select.networks?.includes(iface.sourceNetwork))
      hits.set(g.name, "select.networks");
    else if (iface.sourceBridge && g.select.bridges?.includes(iface.sourceBridge))
      hits.set(g.name, "select.bridges");
  }
  if (hits.size === 0) return problems;
  if (hits.size > 1) {
    const list = [...hits].map(([g, via]) => `"${g}" (via ${via})`);
    problems.push({
      code: "GROUP_CONFLICT",
      level: "error",
      iface: desired.key,
      message: `${label} matches groups ${list.join(" and ")}; an interface belongs to one group`,
    });
    return problems;
  }
  const [[name, via]] = [...hits];
  const group = byName.get(name)!;
  if (policy.groups.some((c) => c.parent === group.name)) {
    problems.push({
      code: "GROUP_UNKNOWN",
      level: "error",
      iface: desired.key,
      message: `${label}: "${group.name}" is a parent group; members belong to its child groups, so put the interface in one of them`,
    });
    return problems;
  }
  const path = group.parent ? [group.parent, group.name] : [group.name];
  const membership: GroupMembership = { tree: path[0], path, via };
  const entry = group.members.find((m) => memberMatches(m, domain, iface));
  const meta = domain.metadata.find((m) => m.mac === iface.mac);
  for (const d of ["inbound", "outbound"] as const) {
    const ceil = groupCeil(group, d);
    if (ceil === undefined) continue;
    const top = path.length > 1 ? groupCeil(byName.get(path[0]), d) : undefined;
    // libvirt allows a floor without an average (`<inbound floor='...'/>`): it is still the member's guarantee.
    const xmlFloorKBps = meta?.[d]?.floor ?? iface.bandwidth?.[d]?.floor;
    const xmlFloor = xmlFloorKBps ? libvirtRateToBitsPerSec(xmlFloorKBps) : undefined;
    membership[d] = memberLimit(
      entry?.[d] ?? group.memberDefaults[d],
      desired[d],
      Math.min(ceil, top ?? ceil),
      xmlFloor,
    );
  }
  if (membership.inbound || membership.outbound) desired.group = membership;
  return problems;
}

/**
 * A member's floor and ceiling: a live limit first, the group's member entry (or memberDefaults) next, then the interface's own
 * limit (a libvirt `floor` in <bandwidth> or metadata counts here), capped by the group's ceiling.
 * Policy `defaults` do not apply inside a group: the group is the member's limit.
 */
function memberLimit(
  entry: PolicyDirection | undefined,
  own: DirectionLimit | undefined,
  groupCeiling: number,
  xmlFloor: number | undefined,
): MemberLimit {
  const e = entry && !entry.unlimited ? entry : undefined;
  const o = own && own.source !== "defaults" ? own : undefined;
  // A live change is the operator's latest word: its ceiling beats the member entry's; a floor or burst it
  // does not give is still the entry's.
  const live = own?.source === "live" ? own : undefined;
  const ownCeil = live
    ? live.ceilBitsPerSec
    : e?.rateBitsPerSec !== undefined
      ? Math.max(e.peakBitsPerSec ?? 0, e.rateBitsPerSec)
      : o?.ceilBitsPerSec;
  const ceil = Math.min(ownCeil ?? groupCeiling, groupCeiling);
  const floor = Math.min(
    live?.floorBitsPerSec ?? e?.floorBitsPerSec ?? o?.floorBitsPerSec ?? xmlFloor ?? 0,
    ceil,
  );
  return {
    floorBitsPerSec: floor,
    ceilBitsPerSec: ceil,
    burstBytes: live?.burstBytes ?? e?.burstBytes ?? o?.burstBytes,
  };
}
