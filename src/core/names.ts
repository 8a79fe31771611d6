// Names virtqos gives the devices it creates, and the ownership record it leaves on them. Everything here is
// how virtqos recognises its own devices, so it can clean up after itself without touching anyone else's. The
// tc handles and priorities that do the same for qdiscs, classes and filters are in tc/handles.ts.

// Where `virtqos status` and snapshot.ts still import them from.
export { IFACE_CLASSID, PRIO_MAX, PRIO_MIN, PRIO_REDIRECT, ROOT_MAJOR } from "./tc/handles.js";

/** IFB devices virtqos creates start with this and carry an alias starting with ALIAS_PREFIX. */
export const IFB_PREFIX = "vq";
export const ALIAS_PREFIX = "virtqos/1";

/** 64-bit FNV-1a: tiny, pure and stable across Node versions, which is all a device name needs. */
export function fnv1a64(text: string): string {
  let h = 0xcbf29ce484222325n;
  const prime = 0x100000001b3n;
  for (let i = 0; i < text.length; i++) {
    h ^= BigInt(text.charCodeAt(i));
    h = (h * prime) & 0xffffffffffffffffn;
  }
  return h.toString(16).padStart(16, "0");
}

/**
 * The IFB carrying one interface's guest upload. Derived from domain UUID + MAC, both still known at
 * `release end` when the tap name is gone. 3 + 12 = 15 characters, the kernel's IFNAMSIZ limit.
 */
export function interfaceIfbName(domainUuid: string, mac: string): string {
  return `${IFB_PREFIX}i${fnv1a64(`${domainUuid}/${mac}`).slice(0, 12)}`;
}

/** The IFB carrying a group's shared tree for one direction. */
export function groupIfbName(group: string, direction: "inbound" | "outbound"): string {
  return `${IFB_PREFIX}${direction === "inbound" ? "d" : "u"}${fnv1a64(`group/${group}`).slice(0, 12)}`;
}

export interface IfbAlias {
  /** "iface": one interface's upload; "group": a group's tree for one direction. */
  role: "iface" | "group";
  domainUuid?: string;
  mac?: string;
  dev?: string;
  group?: string;
  direction?: "inbound" | "outbound";
}

/** Ownership record kept in the kernel itself (ifalias), so a crash leaves nothing unattributable. */
export function formatIfbAlias(a: IfbAlias): string {
  return a.role === "iface"
    ? `${ALIAS_PREFIX},iface,${a.domainUuid},${a.mac},${a.dev ?? ""}`
    : `${ALIAS_PREFIX},group,${a.group},${a.direction}`;
}

export function parseIfbAlias(alias: string | undefined): IfbAlias | undefined {
  if (!alias?.startsWith(`${ALIAS_PREFIX},`)) return undefined;
  const parts = alias.split(",");
  if (parts[1] === "iface") {
    return { role: "iface", domainUuid: parts[2], mac: parts[3], dev: parts[4] || undefined };
  }
  if (parts[1] === "group" && (parts[3] === "inbound" || parts[3] === "outbound")) {
    return { role: "group", group: parts[2], direction: parts[3] };
  }
  return undefined;
}
