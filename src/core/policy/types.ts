import type { GroupSpec } from "../admission.js";
import type { UploadMode } from "../model.js";

// The policy file once parsed, in base units. Only types and emptyPolicy() live here: the hook imports this
// module on every guest start, and must not load the YAML parser or the schema unless the file changed.

export type LogLevel = "debug" | "info" | "warning" | "error";
export type LeafChoice = "auto" | "fq_codel" | "sfq" | "fifo";
/**
 * `ovs`: who enforces the limits of an interface on an Open vSwitch port. `tc` (default): virtqos's own tc
 * objects on the tap, as on a Linux bridge. `native`: Open vSwitch itself, through OVSDB (a linux-htb QoS row
 * with one queue for guest download, the Interface's ingress policing for guest upload; src/core/ovs-native.ts).
 */
export type OvsMode = "tc" | "native";

/** A direction's limit in a policy file, converted to base units. `unlimited` overrides lower sources. */
export type PolicyDirection =
  | { unlimited: true }
  | {
      unlimited?: false;
      rateBitsPerSec?: number;
      peakBitsPerSec?: number;
      burstBytes?: number;
      floorBitsPerSec?: number;
      mode?: UploadMode;
    };

export interface PolicyInterfaceRule {
  mac?: string;
  target?: string;
  alias?: string;
  inbound?: PolicyDirection;
  outbound?: PolicyDirection;
  group?: string;
  line: number;
}

export interface PolicyDomainRule {
  name?: string;
  uuid?: string;
  inbound?: PolicyDirection;
  outbound?: PolicyDirection;
  group?: string;
  interfaces: PolicyInterfaceRule[];
  line: number;
}

export interface PolicyGroupMember {
  domain: string;
  mac?: string;
  inbound?: PolicyDirection;
  outbound?: PolicyDirection;
  line: number;
}

/**
 * A group as the file states it. It is also the GroupSpec the planner reads (`limits`, resolved from `inbound`
 * and `outbound`), so `policy.groups` can be handed to the planner as it is.
 */
export interface PolicyGroup extends GroupSpec {
  inbound?: PolicyDirection;
  outbound?: PolicyDirection;
  /** Floor and ceiling given to members that do not set their own. */
  memberDefaults: { inbound?: PolicyDirection; outbound?: PolicyDirection };
  members: PolicyGroupMember[];
  select: { domains?: string[]; networks?: string[]; bridges?: string[] };
  line: number;
}

export interface Policy {
  file: string;
  logLevel: LogLevel;
  strict: boolean;
  /** `hookTimeout`: the hook's wall-clock limit in milliseconds; unset means the hook's default (20 s). */
  hookTimeoutMs?: number;
  upload: UploadMode;
  leaf: LeafChoice;
  /** `ovs`: tc (default) or native; see OvsMode. One setting for the host: README "Open vSwitch: tc or native". */
  ovs: OvsMode;
  defaults: { inbound?: PolicyDirection; outbound?: PolicyDirection };
  domains: PolicyDomainRule[];
  groups: PolicyGroup[];
}

export interface PolicyProblem {
  file: string;
  line: number;
  column: number;
  field: string;
  message: string;
  fix: string;
}

/** The policy used when no file exists: nothing limited unless XML says so. */
export function emptyPolicy(file = "(none)"): Policy {
  return {
    file,
    logLevel: "info",
    strict: false,
    upload: "shape",
    leaf: "auto",
    ovs: "tc",
    defaults: {},
    domains: [],
    groups: [],
  };
}
