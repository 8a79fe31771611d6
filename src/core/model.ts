import type { Diagnostic } from "./errors.js";

// The data virtqos reasons about. Directions are always from the guest's point of view, as in libvirt:
// "inbound" = guest download (host transmits to the guest), "outbound" = guest upload.

export type Direction = "inbound" | "outbound";

/** Where a limit came from, highest precedence first: a live change (`virtqos set`, the API) sits on top. */
export type LimitSource = "live" | "policy" | "metadata" | "bandwidth" | "defaults";

/** How guest upload is enforced: shaped through an IFB (default) or policed (libvirt-compatible, drops). */
export type UploadMode = "shape" | "police";

/** One direction's limit, already converted to base units. */
export interface DirectionLimit {
  rateBitsPerSec: number;
  /** Highest instantaneous rate while the burst lasts; equals rateBitsPerSec when no peak was given. */
  ceilBitsPerSec: number;
  /** Bytes that may pass at up to ceilBitsPerSec; undefined = virtqos computes it. */
  burstBytes?: number;
  /** Guaranteed rate inside a group (libvirt `floor`). */
  floorBitsPerSec?: number;
  mode: UploadMode;
  source: LimitSource;
}

/**
 * libvirt's `<interface type>` as the domain XML has it ("bridge", "network", "ethernet", "direct",
 * "vhostuser", ...). Kept as text: libvirt adds types, and virtqos names an unknown one in its warning.
 */
export type InterfaceType = string;

/** macvtap (type direct): host RX is the guest's download, so the two kernel hooks carry swapped directions. */
export function swapsHooks(type: InterfaceType): boolean {
  return type === "direct";
}

/** Raw libvirt `<inbound>`/`<outbound>` attributes, in libvirt units (kB/s, KiB). */
export interface LibvirtRate {
  average?: number;
  peak?: number;
  burst?: number;
  floor?: number;
}

export interface LibvirtBandwidth {
  inbound?: LibvirtRate;
  outbound?: LibvirtRate;
}

/** A guest interface as read from domain XML. */
export interface GuestInterface {
  /** Position among the domain's <interface> elements, 0-based. */
  index: number;
  type: InterfaceType;
  mac?: string;
  targetDev?: string;
  alias?: string;
  sourceBridge?: string;
  sourceNetwork?: string;
  sourceDev?: string;
  virtualportType?: string;
  bandwidth?: LibvirtBandwidth;
}

export interface MetadataInterface {
  mac: string;
  inbound?: LibvirtRate;
  outbound?: LibvirtRate;
  /** Group named for this interface in metadata (`<qos><interface mac=... group=...>`). */
  group?: string;
}

export interface DomainInfo {
  name: string;
  uuid: string;
  interfaces: GuestInterface[];
  metadata: MetadataInterface[];
  /** Group named for the whole domain in metadata. */
  metadataGroup?: string;
  /** Problems found in the XML that did not stop parsing (e.g. a foreign qos namespace). */
  warnings: string[];
  /** Live limits in force for this run of the domain (the live store, src/adapters/live-store.ts). */
  live?: LiveInterfaceLimits[];
}

/** A live limit in base units; the upload mode and the source come from resolution. */
export interface LiveLimit {
  rateBitsPerSec: number;
  ceilBitsPerSec: number;
  burstBytes?: number;
  floorBitsPerSec?: number;
}

/** One interface's live limits: a limit, `null` (no limit in this direction), or absent (not set live). */
export interface LiveInterfaceLimits {
  mac: string;
  inbound?: LiveLimit | null;
  outbound?: LiveLimit | null;
}

/** An interface with its resolved limits: what should be. */
export interface DesiredInterface {
  /** Stable identity: domain UUID + MAC. Survives tap renames and is known at `release end`. */
  key: string;
  domainName: string;
  domainUuid: string;
  mac: string;
  type: InterfaceType;
  /** Host netdev (tap, vnetN, macvtapN); undefined before the tap exists or after it is gone. */
  dev?: string;
  /** swapsHooks(type), computed once when limits are resolved: on a macvtap the two kernel hooks swap. */
  swapped: boolean;
  ovs: boolean;
  inbound?: DirectionLimit;
  outbound?: DirectionLimit;
  /** Why this interface cannot be shaped (no host netdev), if so. */
  notEnforceable?: string;
  /** The group whose tree shapes this interface, and its share there per direction; undefined outside groups. */
  group?: GroupMembership;
  /** Directions that were given only a floor, outside any group: a guarantee there limits nothing. */
  floorOnly?: Direction[];
  /**
   * Directions Open vSwitch enforces (policy `ovs: native`, src/core/ovs-native.ts): the planner makes no tc
   * objects for them and records them under the interface's `ovs`.
   */
  ovsNative?: Direction[];
  /**
   * Found before planning: this interface must not change now (`ovs: native`: another tool's QoS on its port,
   * OVSDB not readable). The planner reports it and fails the interface whole, like its own problems.
   */
  problem?: Diagnostic;
}

export interface GroupMembership {
  /** Top-level group that owns the shared tree (one IFB per direction). */
  tree: string;
  /** Group names from the top-level group down to the member's own group (1 or 2 entries). */
  path: string[];
  /** Why the interface is in the group: "member", "select.domains", "select.networks", "metadata", ... */
  via: string;
  inbound?: MemberLimit;
  outbound?: MemberLimit;
}

/** A member's share of its group in one direction. */
export interface MemberLimit {
  /** Guaranteed rate when every member is busy (HTB rate). */
  floorBitsPerSec: number;
  /** Most the member may take by borrowing: its own ceiling, or the group's (HTB ceil). */
  ceilBitsPerSec: number;
  burstBytes?: number;
  /** HTB class minor inside the group tree; stable for the member's lifetime. */
  minor?: number;
}

/**
 * What virtqos applied to one domain, as the planner decides it: the content of the state record
 * (`<runDir>/domains/<uuid>.json`). What can be derived is left out: an interface's own IFB (`recordIfb` in
 * plan/records.ts: named from domain UUID + MAC, there when a shaped direction is on the ingress hook) and
 * whether its hooks swap (`swapsHooks`, from the type).
 */
export interface DomainRecord {
  domainName: string;
  domainUuid: string;
  interfaces: RecordInterface[];
  /**
   * Interfaces virtqos was asked to shape and refused (a foreign root qdisc or filter, a missing kernel
   * feature): kept so `status` keeps reporting them as not in force instead of forgetting them.
   */
  refused?: RefusedInterface[];
}

export interface RecordInterface {
  mac: string;
  dev?: string;
  /** ifindex of dev when shaped: tap names are reused, ifindexes are not. */
  ifindex?: number;
  /** virtqos added the dev's clsact/ingress qdisc (so it may remove it again). */
  createdHook?: boolean;
  type: InterfaceType;
  inbound?: DirectionLimit;
  outbound?: DirectionLimit;
  group?: GroupMembership;
  notEnforceable?: string;
  /**
   * Directions Open vSwitch enforces for this interface (`ovs: native`), with the limit asked for: a QoS row
   * (download) and ingress policing (upload) on the port named like `dev`, tagged in OVSDB with
   * `external_ids:virtqos-owner=<domain uuid>/<mac>` (src/core/ovs-native.ts). `inbound`/`outbound` above are
   * only what virtqos's tc objects enforce.
   */
  ovs?: { inbound?: DirectionLimit; outbound?: DirectionLimit };
}

/** Who made the last change to a state record, and when. */
export interface AppliedBy {
  /** The way in: "hook", "cli", "tx" (a transaction's rollback), "api" (a library caller), "test"... */
  door: string;
  user?: string;
  uid?: number;
  pid?: number;
  /** ISO 8601 time of the write. */
  at: string;
}

/** What the state file adds around a record's content when it is written (adapters/state.ts). */
export interface RecordStamp {
  /** Format of the file (RECORD_VERSION in adapters/state.ts when written); one without the field reads as 1. */
  version: number;
  /** Bumped each time the record's content changes (0: never written with a generation, i.e. a version 1 file). */
  generation: number;
  /** The last change; absent on a version 1 file. */
  appliedBy?: AppliedBy;
}

/** A record as read from its file. */
export type StoredRecord = DomainRecord & RecordStamp;

export interface RefusedInterface {
  mac: string;
  dev?: string;
  code: string;
  message: string;
  inbound?: DirectionLimit;
  outbound?: DirectionLimit;
}
