import type { ContestedEntry } from "../app/status.js";
import type { LimitSource } from "../core/model.js";

// The agent's vocabulary, shared by its doors (REST, Nova action, CLI through the socket) and the service
// behind them. Directions are the guest's (inbound = download), as in libvirt; numbers in libvirt's units
// (kB/s = 1000 bytes/s, KiB) where a field says so, base units (bits/s, bytes) everywhere else.

export type Role = "reader" | "operator" | "admin";

/** Who a request comes from, once authenticated. */
export interface Principal {
  /** The token's name; `uid:<n>` for the unix socket. */
  name: string;
  role: Role;
  /** Domain-name globs the token is limited to; undefined = every domain. */
  domains?: string[];
  via: "token" | "socket" | "cli";
}

/** What a request wants to do, for authorization. */
export type Action = "read" | "write" | "admin";

export interface Authenticator {
  /** The principal a request's headers authenticate, or undefined (no token, a bad token). */
  authenticate(headers: Record<string, string | string[] | undefined>): Principal | undefined;
}

/** `live`: the running domain only; `config`: its persistent definition only; `both`. */
export type Persist = "live" | "config" | "both";

/**
 * One direction of a live change. Numbers are libvirt's units (average/peak/floor in kB/s, burst in KiB);
 * strings carry explicit units ("20mbit", "2.5MB", "64kb"). An average of 0 clears the direction (no limit).
 */
export interface RateInput {
  average: number | string;
  peak?: number | string;
  burst?: number | string;
  floor?: number | string;
}

export interface LiveChange {
  inbound?: RateInput;
  outbound?: RateInput;
  persist: Persist;
  /** Which door the change came through, for the audit log (set by the door, never from a request body). */
  door?: AuditDoor;
}

export interface DomainSummary {
  name: string;
  uuid: string;
  /** libvirt's state: "running", "shut off", "paused", ... */
  state: string;
  interfaces: number;
}

/** One direction's limit in base units, and where it comes from. */
export interface LimitView {
  rateBitsPerSec: number;
  ceilBitsPerSec: number;
  burstBytes?: number;
  floorBitsPerSec?: number;
  source: LimitSource;
}

export interface DirectionView {
  /** What the policy file, <metadata>, <bandwidth> or the defaults give, live limits aside. */
  configured?: LimitView;
  /** The live limit set through `virtqos set` / the API; `null` = cleared live (no limit). */
  live?: LimitView | null;
  /** What virtqos applied and the kernel has (its records); undefined = unshaped. */
  inForce?: LimitView;
}

export interface InterfaceView {
  /** 1-based, in the domain XML's order (Nova's `interface`, `virtqos set`'s index). */
  index: number;
  mac?: string;
  dev?: string;
  alias?: string;
  type: string;
  inbound: DirectionView;
  outbound: DirectionView;
  /** The kernel matches what virtqos applied. */
  matches?: boolean;
  /** Host-side counters of the tap (bytes): tx = towards the guest (its download). */
  counters?: { txBytes: number; rxBytes: number };
}

export type AuditDoor = "cli" | "api" | "nova" | "metadata" | "hook" | "agent";
export type AuditResult = "ok" | "failed" | "refused";

export interface AuditEntry {
  id?: number;
  /** ISO 8601, milliseconds, UTC. */
  at: string;
  /** Token name, `uid:<n>` or a user name. */
  who: string;
  door: AuditDoor;
  domainUuid?: string;
  domainName?: string;
  /** The interface's MAC (or target dev when it has none). */
  iface?: string;
  /** Limits before and after, as JSON-able values (LimitView per direction, or null). */
  before?: unknown;
  after?: unknown;
  result: AuditResult;
  /** The error code when result is not ok. */
  code?: string;
  message?: string;
  txId?: string;
}

export interface AuditQuery {
  domain?: string;
  /** ISO 8601 time; entries at or after it. */
  since?: string;
  limit?: number;
}

/**
 * A kernel object the agent's drift repair keeps finding changed back after repairing it (another tool keeps
 * changing it), so it now repairs it only with a back-off (docs/drift.md); as the repairer writes it to
 * <runDir>/contested.json for `virtqos status` (src/app/status.ts). Times are ISO 8601, UTC.
 */
export type ContestedObjectView = ContestedEntry;

export interface Health {
  libvirt: { connected: boolean; uri: string; since?: string; error?: string };
  lastReconcile?: { at: string; domain?: string; ok: boolean };
  queueDepth: number;
  uptimeSeconds: number;
  /** Objects the drift repair finds contested (the agent always says, [] for none). */
  contested?: ContestedObjectView[];
}

/**
 * What the doors ask of the agent. Errors are VirtqosError with a catalogue code (DOMAIN_NOT_FOUND,
 * INTERFACE_NOT_FOUND, DOMAIN_NOT_RUNNING, NOT_SHAPEABLE, REQUEST_INVALID, GROUP_ADMISSION, ...); the API
 * answers with the code's HTTP status. `domain` is a name or a UUID; `iface` a target dev, MAC, alias or
 * 1-based index.
 */
export interface AgentService {
  listDomains(): Promise<DomainSummary[]>;
  /** The domain's name and UUID (scope checks need the name), or DOMAIN_NOT_FOUND. */
  findDomain(domain: string): Promise<DomainSummary>;
  getInterfaces(domain: string): Promise<InterfaceView[]>;
  setInterface(domain: string, iface: string, change: LiveChange, who: Principal): Promise<InterfaceView>;
  /** Drop the live limits of an interface: the configured ones apply again. */
  clearInterface(domain: string, iface: string, persist: Persist, who: Principal): Promise<InterfaceView>;
  audit(query: AuditQuery): AuditEntry[];
  health(): Health;
  /** Prometheus text (the agent; absent where no metrics are kept). */
  metrics?(): Promise<{ contentType: string; body: string }>;
}
