import type { Diagnostic } from "./errors.js";
import { assignGroup } from "./groups.js";
import {
  type DesiredInterface,
  type Direction,
  type DirectionLimit,
  type DomainInfo,
  type GuestInterface,
  type LibvirtRate,
  type LimitSource,
  swapsHooks,
} from "./model.js";
import type { Policy, PolicyDirection, PolicyDomainRule, PolicyInterfaceRule } from "./policy/types.js";
import { libvirtBurstToBytes, libvirtRateToBitsPerSec } from "./units.js";

// Desired state of a domain's interfaces: which limit applies to each direction of each interface, and why.
// Precedence per direction: live change > policy file > <metadata> > <bandwidth> > policy defaults. A live
// change is the operator's latest explicit word and holds until it is cleared (`virtqos set ... 0`, DELETE);
// `unlimited` in the policy stops the search below it (an operator's explicit "no limit" beats the XML).

/** Interface types that give the host a netdev for tc to act on. */
const HOST_NETDEV_TYPES = new Set(["bridge", "network", "ethernet", "direct"]);

export interface ResolveResult {
  interfaces: DesiredInterface[];
  warnings: string[];
  problems: Diagnostic[];
}

export function resolveDomain(domain: DomainInfo, policy: Policy): ResolveResult {
  const warnings = [...domain.warnings];
  const problems: Diagnostic[] = [];
  const domainRule = findDomainRule(domain, policy);
  const interfaces = domain.interfaces.map((iface): DesiredInterface => {
    const mac = iface.mac ?? `#${iface.index}`;
    const base: DesiredInterface = {
      key: `${domain.uuid}/${mac}`,
      domainName: domain.name,
      domainUuid: domain.uuid,
      mac,
      type: iface.type,
      dev: iface.targetDev,
      swapped: swapsHooks(iface.type),
      ovs: iface.virtualportType === "openvswitch",
    };
    const ifaceRule = domainRule?.interfaces.find((r) => matchesInterface(r, iface));
    const meta = domain.metadata.find((m) => m.mac === iface.mac);
    for (const direction of ["inbound", "outbound"] as const) {
      const limit = resolveDirection(
        direction,
        policy,
        domainRule,
        ifaceRule,
        meta?.[direction],
        iface,
        warnings,
        domain,
      );
      if (limit) base[direction] = limit;
      const live = domain.live?.find((l) => l.mac === iface.mac)?.[direction];
      if (live === null) delete base[direction];
      else if (live) {
        // The mode (shape or police) stays what the configuration gives: a live change sets numbers.
        const mode = limit?.mode ?? (direction === "outbound" ? policy.upload : "shape");
        base[direction] = { ...live, mode, source: "live" };
      }
    }
    if (base.ovs && (base.inbound?.source === "bandwidth" || base.outbound?.source === "bandwidth")) {
      warnings.push(
        `domain ${domain.name} interface ${mac}: <bandwidth> on an Open vSwitch port is also applied by libvirt through OVS (a linux-htb QoS that only guarantees the rate, ingress policing); with ovs: tc virtqos takes them off the port and shapes it itself (OVS_QOS_TAKEN_OVER), with ovs: native it refuses the port (OVS_QOS_FOREIGN); give this limit in <metadata> or the policy file instead, and libvirt leaves OVS alone`,
      );
    }
    if (!HOST_NETDEV_TYPES.has(iface.type)) {
      base.notEnforceable = `interface type "${iface.type}" has no host network device for tc to shape`;
      base.dev = undefined;
    } else {
      problems.push(...assignGroup(base, domain, iface, policy, domainRule, ifaceRule));
      if (!base.group) floorsOutsideGroup(base, iface, meta, ifaceRule, domainRule, warnings);
    }
    return base;
  });
  return { interfaces, warnings, problems };
}

/**
 * A floor is a guarantee among the members of a group; on an interface in no group it means nothing (libvirt
 * likewise honours `floor` only on networks of forward mode nat, route, open or none). Say so, where it came
 * from, and how to make it count, instead of the misleading "no bandwidth limits found".
 */
function floorsOutsideGroup(
  base: DesiredInterface,
  iface: GuestInterface,
  meta: { inbound?: LibvirtRate; outbound?: LibvirtRate } | undefined,
  ifaceRule: PolicyInterfaceRule | undefined,
  domainRule: PolicyDomainRule | undefined,
  warnings: string[],
): void {
  const label = `domain ${base.domainName} interface ${base.mac}${base.dev ? ` (${base.dev})` : ""}`;
  for (const direction of ["inbound", "outbound"] as const) {
    const rule = ifaceRule?.[direction] ?? domainRule?.[direction];
    const where =
      rule && !rule.unlimited && rule.floorBitsPerSec
        ? `the policy's ${direction} floor`
        : meta?.[direction]?.floor
          ? `<metadata> ${direction} floor='${meta[direction]?.floor}'`
          : iface.bandwidth?.[direction]?.floor
            ? `<bandwidth><${direction} floor='${iface.bandwidth[direction]?.floor}'>`
            : undefined;
    if (!where) continue;
    if (!base[direction]) base.floorOnly = [...(base.floorOnly ?? []), direction];
    const join = iface.sourceNetwork
      ? `select: { networks: ["${iface.sourceNetwork}"] }`
      : iface.sourceBridge
        ? `select: { bridges: ["${iface.sourceBridge}"] }`
        : `members: [{ domain: "${base.domainName}" }]`;
    warnings.push(
      `${label}: ${where} is ignored: a floor is a guarantee inside a group and this interface is in none${base[direction] ? "" : `, so its ${direction} is not limited`}; fix: add a group with an ${direction} average (the shared ceiling) and ${join}`,
    );
  }
}

function findDomainRule(domain: DomainInfo, policy: Policy): PolicyDomainRule | undefined {
  const uuid = domain.uuid.replace(/-/g, "");
  return (
    policy.domains.find((d) => d.uuid !== undefined && d.uuid.replace(/-/g, "") === uuid) ??
    policy.domains.find((d) => d.uuid === undefined && d.name === domain.name)
  );
}

function matchesInterface(rule: PolicyInterfaceRule, iface: GuestInterface): boolean {
  if (rule.mac !== undefined && rule.mac !== iface.mac) return false;
  if (rule.target !== undefined && rule.target !== iface.targetDev) return false;
  if (rule.alias !== undefined && rule.alias !== iface.alias) return false;
  return true;
}

function resolveDirection(
  direction: Direction,
  policy: Policy,
  domainRule: PolicyDomainRule | undefined,
  ifaceRule: PolicyInterfaceRule | undefined,
  meta: LibvirtRate | undefined,
  iface: GuestInterface,
  warnings: string[],
  domain: DomainInfo,
): DirectionLimit | undefined {
  const fromPolicy = ifaceRule?.[direction] ?? domainRule?.[direction];
  if (fromPolicy) return fromPolicyDirection(fromPolicy, direction, policy, "policy");
  const where = `domain ${domain.name} interface ${iface.mac ?? `#${iface.index}`}`;
  if (meta) {
    const l = fromLibvirt(meta, direction, policy, "metadata", `${where} <metadata> ${direction}`, warnings);
    if (l) return l;
  }
  const bw = iface.bandwidth?.[direction];
  if (bw) {
    const l = fromLibvirt(bw, direction, policy, "bandwidth", `${where} <bandwidth><${direction}>`, warnings);
    if (l) return l;
  }
  const def = policy.defaults[direction];
  if (def) return fromPolicyDirection(def, direction, policy, "defaults");
  return undefined;
}

function fromPolicyDirection(
  p: PolicyDirection,
  direction: Direction,
  policy: Policy,
  source: LimitSource,
): DirectionLimit | undefined {
  if (p.unlimited || p.rateBitsPerSec === undefined) return undefined;
  return {
    rateBitsPerSec: p.rateBitsPerSec,
    ceilBitsPerSec: Math.max(p.peakBitsPerSec ?? p.rateBitsPerSec, p.rateBitsPerSec),
    burstBytes: p.burstBytes,
    floorBitsPerSec: p.floorBitsPerSec,
    mode: direction === "outbound" ? (p.mode ?? policy.upload) : "shape",
    source,
  };
}

function fromLibvirt(
  r: LibvirtRate,
  direction: Direction,
  policy: Policy,
  source: LimitSource,
  where: string,
  warnings: string[],
): DirectionLimit | undefined {
  if (!r.average) {
    if (r.peak || r.burst)
      warnings.push(`${where}: peak/burst without average are ignored (libvirt requires average)`);
    return undefined;
  }
  const rate = libvirtRateToBitsPerSec(r.average);
  let ceil = r.peak ? libvirtRateToBitsPerSec(r.peak) : rate;
  if (ceil < rate) {
    warnings.push(`${where}: peak ${r.peak} is below average ${r.average} (kB/s); using average as the peak`);
    ceil = rate;
  }
  return {
    rateBitsPerSec: rate,
    ceilBitsPerSec: ceil,
    burstBytes: r.burst ? libvirtBurstToBytes(r.burst) : undefined,
    floorBitsPerSec: r.floor ? libvirtRateToBitsPerSec(r.floor) : undefined,
    mode: direction === "outbound" ? policy.upload : "shape",
    source,
  };
}
