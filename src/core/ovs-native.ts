import type { Diagnostic } from "./errors.js";
import type { DesiredInterface, Direction, DirectionLimit, DomainRecord } from "./model.js";
import type { Observed } from "./plan/types.js";
import type { OvsMode } from "./policy/types.js";
import { type Capabilities, policeBurstBytes } from "./recipe.js";
import { HOOK_PARENT, isOurPrio } from "./tc/handles.js";
import type { ObservedDevice } from "./tc/normalise.js";
import { formatRate, formatSize, toKernelBytesPerSec } from "./units.js";

// `ovs: native` (README "Open vSwitch: tc or native"): Open vSwitch enforces the limits of an interface on one
// of its ports, through OVSDB, instead of virtqos's tc objects on the tap. ovs-vswitchd owns a port's root qdisc
// and its ingress qdisc, and deletes or recreates them whenever it reconfigures the port; what it creates itself
// from its own database survives that. Pure: the OVSDB rows wanted, the diff against what `ovs-vsctl` read
// (src/adapters/ovs.ts), and the exact ovs-vsctl argument arrays (never a shell string).
//
// - Guest download (inbound, the port's egress): a QoS row of type linux-htb on the Port, other_config:max-rate
//   (bit/s), with one Queue, queue 0 (OVS's default queue: every packet OpenFlow outputs without set_queue):
//   other_config:max-rate (bit/s), min-rate (bit/s) = the floor if any, burst (bits) if one is given.
//   ovs-vswitchd turns that into `htb 1:` on the device: root class 1:fffe at max-rate, queue 0 as class 1:1.
// - Guest upload (outbound, the port's ingress): the Interface's ingress_policing_rate (kbit/s, 1000 bit/s)
//   and ingress_policing_burst; ovs-vswitchd installs an `ingress` qdisc with a police action (a policer: what
//   exceeds the rate is dropped, nothing queues). Needs the kernel's police action: where it is missing,
//   the upload stays shaped by virtqos through its IFB (OVS_NATIVE_FALLBACK), which OVS leaves alone as long as
//   it polices nothing on that port.
// - Every row virtqos creates is tagged `external_ids:virtqos-owner="<domain uuid>/<mac>"` (the Interface too,
//   while virtqos sets its policing): only tagged rows are ever changed or destroyed. QoS and Queue are root
//   tables in OVSDB, so they outlive the port (libvirt deletes the port when the guest stops): the tag is how
//   they are found and removed then.

/** The external_ids key of every OVSDB row virtqos creates or sets; its value is the interface's key. */
export const OVS_OWNER_KEY = "virtqos-owner";
/** The OVSDB QoS type virtqos asks for. */
export const OVS_QOS_TYPE = "linux-htb";
/** ingress_policing_rate is in kbit/s: 1 = 1000 bit/s (lib/netdev-linux.c: `kbits_rate * 1000 / 8` bytes/s). */
export const OVS_POLICING_RATE_UNIT_BITS_PER_SEC = 1000;
/**
 * ingress_policing_burst is documented in "kb", and OVS (3.1, lib/netdev-linux.c tc_policer_init and
 * tc_matchall_fill_police) turns B into a bucket of `B * 1024 / 8` bytes: one unit is 128 bytes.
 */
export const OVS_POLICING_BURST_UNIT_BYTES = 128;
/** The Queue OVS uses for traffic OpenFlow sends without choosing one (vswitch.xml, QoS queues). */
export const OVS_DEFAULT_QUEUE = 0;
/** The handle of the root qdisc ovs-vswitchd creates for a linux-htb QoS (`tc qdisc add ... root handle 1: htb`). */
export const OVS_HTB_HANDLE = "1:";

// ------------------------------------------------------------------------------------ which directions

/**
 * Policy `ovs: native`: mark the directions Open vSwitch enforces (`ovsNative`) on interfaces that are OVS ports.
 * Not: a direction a group shapes (the group's tc tree spans ports), guest upload without the kernel's police
 * action (it stays on virtqos's IFB). Returns the notes saying so. `ovs: tc` marks nothing.
 */
export function assignOvsNative(
  desired: DesiredInterface[],
  mode: OvsMode,
  caps: Capabilities,
): Diagnostic[] {
  const notes: Diagnostic[] = [];
  if (mode !== "native") return notes;
  for (const d of desired) {
    if (!d.ovs || d.notEnforceable || d.swapped) continue;
    const label = labelOf(d);
    const owned: Direction[] = [];
    for (const direction of ["inbound", "outbound"] as const) {
      const limit = d[direction];
      if (d.group?.[direction]) {
        notes.push({
          code: "OVS_NATIVE_FALLBACK",
          level: "info",
          iface: d.key,
          direction,
          message: `${label}: ${direction} stays with virtqos's tc objects: it is a member of group ${d.group.path.join("/")}, whose tree spans ports (OVS QoS is per port)`,
        });
        continue;
      }
      if (!limit) continue;
      if (direction === "outbound" && !caps.actions.includes("police")) {
        notes.push({
          code: "OVS_NATIVE_FALLBACK",
          level: "warning",
          iface: d.key,
          direction,
          message: `${label}: outbound (guest upload) stays shaped by virtqos through an IFB: Open vSwitch's ingress policing needs the kernel's police action, which this kernel lacks`,
        });
        continue;
      }
      owned.push(direction);
      if (limit.ceilBitsPerSec > limit.rateBitsPerSec) {
        notes.push({
          code: "OVS_NATIVE_ADJUSTED",
          level: "warning",
          iface: d.key,
          direction,
          message: `${label}: ${direction} peak ${formatRate(limit.ceilBitsPerSec)} is not expressed: Open vSwitch ${direction === "inbound" ? "QoS" : "ingress policing"} has one rate, ${formatRate(limit.rateBitsPerSec)} (the average)`,
        });
      }
    }
    if (owned.length) d.ovsNative = owned;
  }
  return notes;
}

const labelOf = (d: { domainName: string; mac: string; dev?: string }) =>
  `${d.domainName} ${d.mac}${d.dev ? ` (${d.dev})` : ""}`;

// ------------------------------------------------------------------------------------ what OVSDB should hold

/** A linux-htb QoS with one queue (queue 0), in OVSDB's units. */
export interface OvsQosWant {
  /** QoS other_config:max-rate, bit/s. */
  maxRateBitsPerSec: number;
  queue: {
    /** Queue other_config:max-rate, bit/s. */
    maxRateBitsPerSec: number;
    /** Queue other_config:min-rate, bit/s (the floor); unset: OVS's default (one MTU per second). */
    minRateBitsPerSec?: number;
    /** Queue other_config:burst, bits; unset: OVS's default (MTU + 64 bytes). */
    burstBits?: number;
  };
}

/** Interface ingress policing, in OVSDB's units. */
export interface OvsPolicingWant {
  /** ingress_policing_rate, kbit/s (1000 bit/s). */
  rateKbitPerSec: number;
  /** ingress_policing_burst, OVS's "kb" (a bucket of this x 128 bytes: OVS_POLICING_BURST_UNIT_BYTES). */
  burstKbit: number;
}

/** One interface whose port Open vSwitch shapes. */
export interface OvsWant {
  /** The interface's key, `<domain uuid>/<mac>`: the value of the rows' virtqos-owner tag. */
  owner: string;
  domainUuid: string;
  /** The OVS port and interface: libvirt names both after the tap. */
  port: string;
  label: string;
  qos?: OvsQosWant;
  policing?: OvsPolicingWant;
  /** The limits as asked, for the records and the logs. */
  limits: { inbound?: DirectionLimit; outbound?: DirectionLimit };
}

/** The QoS row's and queue 0's settings for a download limit, exactly (bit/s and bits). */
export function ovsQosFor(limit: DirectionLimit): OvsQosWant {
  const rateBitsPerSec = limit.rateBitsPerSec;
  const queue: OvsQosWant["queue"] = { maxRateBitsPerSec: rateBitsPerSec };
  if (limit.floorBitsPerSec !== undefined) queue.minRateBitsPerSec = limit.floorBitsPerSec;
  if (limit.burstBytes !== undefined) queue.burstBits = limit.burstBytes * 8;
  return { maxRateBitsPerSec: rateBitsPerSec, queue };
}

/**
 * Ingress policing for an upload limit. The rate in whole kbit/s (rounded; exact for every rate written in
 * kbit or mbit); the bucket by virtqos's police rule (libvirt's: the given burst, else the average read as KiB,
 * never below one 64 KiB GSO packet plus a frame: policeBurstBytes), rounded up to OVS's 128-byte units.
 */
export function ovsPolicingFor(limit: DirectionLimit): OvsPolicingWant & { bucketBytes: number } {
  const rateBitsPerSec = limit.rateBitsPerSec;
  const rateKbitPerSec = Math.max(1, Math.round(rateBitsPerSec / OVS_POLICING_RATE_UNIT_BITS_PER_SEC));
  const bucketBytes = policeBurstBytes(toKernelBytesPerSec(rateBitsPerSec), limit.burstBytes);
  const burstKbit = Math.ceil(bucketBytes / OVS_POLICING_BURST_UNIT_BYTES);
  return { rateKbitPerSec, burstKbit, bucketBytes };
}

/**
 * What OVSDB should hold for each interface with OVS-enforced directions, with the notes about units. `skip`:
 * interfaces that must not change (their tc part failed, or their tap is absent).
 */
export function ovsWants(
  desired: DesiredInterface[],
  skip: ReadonlySet<string | undefined> = new Set(),
): { wants: OvsWant[]; notes: Diagnostic[] } {
  const wants: OvsWant[] = [];
  const notes: Diagnostic[] = [];
  for (const d of desired) {
    if (!d.ovsNative?.length || !d.dev || skip.has(d.key)) continue;
    const label = labelOf(d);
    const want: OvsWant = { owner: d.key, domainUuid: d.domainUuid, port: d.dev, label, limits: {} };
    const inbound = d.ovsNative.includes("inbound") ? d.inbound : undefined;
    if (inbound) {
      want.qos = ovsQosFor(inbound);
      want.limits.inbound = inbound;
    }
    const outbound = d.ovsNative.includes("outbound") ? d.outbound : undefined;
    if (outbound) {
      const { bucketBytes, ...policing } = ovsPolicingFor(outbound);
      want.policing = policing;
      want.limits.outbound = outbound;
      const enforcedBitsPerSec = policing.rateKbitPerSec * OVS_POLICING_RATE_UNIT_BITS_PER_SEC;
      if (enforcedBitsPerSec !== outbound.rateBitsPerSec) {
        notes.push({
          code: "OVS_NATIVE_ADJUSTED",
          level: "warning",
          iface: d.key,
          direction: "outbound",
          message: `${label}: outbound ${formatRate(outbound.rateBitsPerSec)} is policed at ${formatRate(enforcedBitsPerSec)}: ingress_policing_rate is set in whole kbit/s`,
        });
      }
      if (outbound.burstBytes !== undefined && bucketBytes !== outbound.burstBytes) {
        notes.push({
          code: "BURST_ADJUSTED",
          level: "warning",
          iface: d.key,
          direction: "outbound",
          message:
            bucketBytes > outbound.burstBytes
              ? `${label}: outbound police burst raised from ${formatSize(outbound.burstBytes)} to ${formatSize(bucketBytes)}: a policer drops every packet larger than its bucket, and guests send 64 KiB GSO packets`
              : `${label}: outbound police burst lowered from ${formatSize(outbound.burstBytes)} to ${formatSize(bucketBytes)}, the deepest bucket tc can express at ${formatRate(outbound.rateBitsPerSec)}`,
        });
      }
    }
    if (want.qos || want.policing) wants.push(want);
  }
  return { wants, notes };
}

// ------------------------------------------------------------------------------------ what OVSDB holds

export type OvsMap = Record<string, string>;

/** The OVSDB rows virtqos reads (src/adapters/ovs.ts), by name (Port, Interface) or by row UUID (QoS, Queue). */
export interface OvsState {
  ports: Map<string, { uuid: string; qos?: string }>;
  interfaces: Map<
    string,
    { uuid: string; policingRateKbitPerSec: number; policingBurstKbit: number; externalIds: OvsMap }
  >;
  qos: Map<
    string,
    { type: string; otherConfig: OvsMap; queues: Record<string, string>; externalIds: OvsMap }
  >;
  queues: Map<string, { otherConfig: OvsMap; externalIds: OvsMap }>;
}

export const emptyOvsState = (): OvsState => ({
  ports: new Map(),
  interfaces: new Map(),
  qos: new Map(),
  queues: new Map(),
});

/** The QoS row's other_config as virtqos writes it. */
export function qosConfig(q: OvsQosWant): OvsMap {
  return { "max-rate": String(q.maxRateBitsPerSec) };
}

/** Queue 0's other_config as virtqos writes it. */
export function queueConfig(q: OvsQosWant["queue"]): OvsMap {
  const m: OvsMap = { "max-rate": String(q.maxRateBitsPerSec) };
  if (q.minRateBitsPerSec !== undefined) m["min-rate"] = String(q.minRateBitsPerSec);
  if (q.burstBits !== undefined) m.burst = String(q.burstBits);
  return m;
}

const sameMap = (a: OvsMap, b: OvsMap) => {
  const ka = Object.keys(a).sort();
  const kb = Object.keys(b).sort();
  return ka.length === kb.length && ka.every((k, i) => k === kb[i] && a[k] === b[k]);
};

/** An OVSDB string as ovs-vsctl reads it on its command line: double quotes, C escapes. */
const quote = (s: string) => `"${s.replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
/** `{k="v",...}`, keys sorted: a whole map column in one `set`. */
const mapLiteral = (m: OvsMap) =>
  `{${Object.keys(m)
    .sort()
    .map((k) => `${k}=${quote(m[k])}`)
    .join(",")}}`;
const tag = (owner: string) => `external_ids:${OVS_OWNER_KEY}=${quote(owner)}`;
const ownerOf = (externalIds: OvsMap | undefined) => externalIds?.[OVS_OWNER_KEY];
const domainOfOwner = (owner: string) => owner.split("/")[0];

// ------------------------------------------------------------------------------------ the diff

export interface OvsPlanOptions {
  /** Domains (UUIDs) whose interfaces `wants` describes completely: their other tagged rows go. */
  inScope(domainUuid: string): boolean;
  /** Also destroy tagged QoS and Queue rows no port or QoS uses any more, whoever's (guests gone). */
  sweep: boolean;
  /** Interfaces (owners) whose rows stay exactly as they are (their tc part failed: changed whole or not at all). */
  hold?: ReadonlySet<string>;
  /**
   * Ports the tc batch changes in this apply. Where OVS gives such a port back (its QoS or policing removed),
   * that must happen first, with ovs-vswitchd done, before the tc objects go on (else ovs-vswitchd's reconfiguration
   * deletes them): those commands go in `beforeTc`.
   */
  tcDevs?: ReadonlySet<string>;
}

/** One ovs-vsctl command: its arguments, without the `--` that separates commands. */
export type OvsCommand = string[];

export interface OvsPlan {
  /** Ports handed back to tc: run before the tc batch, waiting for ovs-vswitchd. Usually empty. */
  beforeTc: OvsCommand[];
  /** Everything else, in one transaction after the tc batch. */
  afterTc: OvsCommand[];
  problems: Diagnostic[];
  notes: Diagnostic[];
  /** The interfaces (owners) whose OVS state this plan changes. */
  changed: Set<string>;
  /** The wants this plan carries out (those refused as foreign are not among them). */
  wants: OvsWant[];
}

/**
 * The ovs-vsctl commands that bring OVSDB from `state` to `wants`: create, change in place or remove the tagged
 * QoS and Queue rows and the tagged ingress policing, for the interfaces in `wants` and every other interface
 * of the domains in scope. A port whose QoS or policing someone else set is refused (OVS_QOS_FOREIGN), whole.
 */
export function planOvs(wants: OvsWant[], state: OvsState, opts: OvsPlanOptions): OvsPlan {
  const out: OvsPlan = { beforeTc: [], afterTc: [], problems: [], notes: [], changed: new Set(), wants: [] };
  const keptQos = new Set<string>();
  const keptQueues = new Set<string>();
  const keptIfaces = new Set<string>();
  const destroyedQos = new Set<string>();
  const destroyedQueues = new Set<string>();
  const tcDevs = opts.tcDevs ?? new Set<string>();
  const hold = new Set(opts.hold ?? []);
  const keepOwned = (owner: string) => hold.add(owner);
  let n = 0;

  const keepQosRow = (uuid: string, withQueues = true) => {
    keptQos.add(uuid);
    if (!withQueues) return;
    for (const q of Object.values(state.qos.get(uuid)?.queues ?? {})) keptQueues.add(q);
  };

  const destroyQos = (uuid: string, cmds: OvsCommand[]) => {
    if (destroyedQos.has(uuid)) return;
    destroyedQos.add(uuid);
    cmds.push(["destroy", "qos", uuid]);
    for (const q of Object.values(state.qos.get(uuid)?.queues ?? {})) {
      if (ownerOf(state.queues.get(q)?.externalIds) === undefined || destroyedQueues.has(q)) continue;
      if (keptQueues.has(q)) continue;
      destroyedQueues.add(q);
      cmds.push(["destroy", "queue", q]);
    }
  };

  for (const w of wants) {
    const port = state.ports.get(w.port);
    const iface = state.interfaces.get(w.port);
    if (!port || !iface) {
      out.notes.push({
        code: "OVS_PORT_ABSENT",
        level: "info",
        iface: w.owner,
        dev: w.port,
        message: `${w.label}: port ${w.port} is not in OVSDB; Open vSwitch limits nothing on it now`,
      });
      continue;
    }
    const current = port.qos ? state.qos.get(port.qos) : undefined;
    const currentOwner = ownerOf(current?.externalIds);
    const foreign = foreignOn(w, state);
    if (foreign) {
      out.problems.push(foreign);
      // Whatever virtqos had for it stays as it is too: the interface is changed whole or not at all.
      if (port.qos && currentOwner !== undefined) keepQosRow(port.qos);
      if (ownerOf(iface.externalIds) !== undefined) keptIfaces.add(w.port);
      keepOwned(w.owner);
      continue;
    }
    out.wants.push(w);
    const cmds: OvsCommand[] = [];
    if (w.qos) {
      const qos = w.qos;
      const queueUuid = current?.queues[String(OVS_DEFAULT_QUEUE)];
      const queue = queueUuid ? state.queues.get(queueUuid) : undefined;
      if (port.qos && current && currentOwner === w.owner) {
        // Ours: change what differs, in place (same rows; ovs-vswitchd changes its classes in place).
        keepQosRow(port.qos, false);
        if (current.type !== OVS_QOS_TYPE || !sameMap(current.otherConfig, qosConfig(qos))) {
          cmds.push([
            "set",
            "qos",
            port.qos,
            `type=${OVS_QOS_TYPE}`,
            `other_config=${mapLiteral(qosConfig(qos))}`,
          ]);
        }
        const onlyQueue0 = Object.keys(current.queues).every((k) => k === String(OVS_DEFAULT_QUEUE));
        if (queueUuid && queue && ownerOf(queue.externalIds) === w.owner && onlyQueue0) {
          keptQueues.add(queueUuid);
          if (!sameMap(queue.otherConfig, queueConfig(qos.queue))) {
            cmds.push(["set", "queue", queueUuid, `other_config=${mapLiteral(queueConfig(qos.queue))}`]);
          }
        } else {
          // Queue 0 missing, not ours, or other queues beside it: queue 0 alone, a fresh one.
          const q = `@vq${n++}q${OVS_DEFAULT_QUEUE}`;
          cmds.push(
            ["set", "qos", port.qos, `queues={${OVS_DEFAULT_QUEUE}=${q}}`],
            createQueue(q, qos, w.owner),
          );
          for (const old of Object.values(current.queues)) {
            if (ownerOf(state.queues.get(old)?.externalIds) === undefined || destroyedQueues.has(old))
              continue;
            destroyedQueues.add(old);
            cmds.push(["destroy", "queue", old]);
          }
        }
      } else {
        // None yet, or one another interface of virtqos left on a reused tap name: a fresh pair.
        const id = `@vq${n++}`;
        const q = `${id}q${OVS_DEFAULT_QUEUE}`;
        cmds.push(
          ["set", "port", w.port, `qos=${id}`],
          [
            `--id=${id}`,
            "create",
            "qos",
            `type=${OVS_QOS_TYPE}`,
            ...Object.entries(qosConfig(qos)).map(([k, v]) => `other_config:${k}=${v}`),
            `queues:${OVS_DEFAULT_QUEUE}=${q}`,
            tag(w.owner),
          ],
          createQueue(q, qos, w.owner),
        );
        if (port.qos && current) destroyQos(port.qos, cmds);
      }
    }
    const policing = w.policing;
    if (policing) {
      keptIfaces.add(w.port);
      if (
        iface.policingRateKbitPerSec !== policing.rateKbitPerSec ||
        iface.policingBurstKbit !== policing.burstKbit ||
        ownerOf(iface.externalIds) !== w.owner
      ) {
        cmds.push([
          "set",
          "interface",
          w.port,
          `ingress_policing_rate=${policing.rateKbitPerSec}`,
          `ingress_policing_burst=${policing.burstKbit}`,
          tag(w.owner),
        ]);
      }
    }
    if (cmds.length) {
      out.afterTc.push(...cmds);
      out.changed.add(w.owner);
    }
  }

  // Tagged rows nobody wants any more: those of the domains in scope, and (sweep) those no port uses.
  const portsUsing = (qos: string) => [...state.ports].filter(([, p]) => p.qos === qos).map(([name]) => name);
  const sorted = <T>(m: Map<string, T>) => [...m].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  for (const [uuid, row] of sorted(state.qos)) {
    const owner = ownerOf(row.externalIds);
    if (owner === undefined || hold.has(owner) || keptQos.has(uuid) || destroyedQos.has(uuid)) continue;
    const users = portsUsing(uuid);
    if (!opts.inScope(domainOfOwner(owner)) && !(opts.sweep && users.length === 0)) continue;
    // A port that stays gets OVS's default back; if tc shapes it next, OVS must be done with it first.
    const cmds = users.some((p) => tcDevs.has(p)) ? out.beforeTc : out.afterTc;
    for (const p of users.sort()) cmds.push(["clear", "port", p, "qos"]);
    destroyQos(uuid, cmds);
    out.changed.add(owner);
  }
  const queuesUsed = new Set(
    [...state.qos].flatMap(([u, q]) => (destroyedQos.has(u) ? [] : Object.values(q.queues))),
  );
  for (const [uuid, row] of sorted(state.queues)) {
    const owner = ownerOf(row.externalIds);
    if (owner === undefined || hold.has(owner) || keptQueues.has(uuid) || destroyedQueues.has(uuid)) continue;
    const used = queuesUsed.has(uuid);
    if (used || (!opts.inScope(domainOfOwner(owner)) && !opts.sweep)) continue;
    destroyedQueues.add(uuid);
    out.afterTc.push(["destroy", "queue", uuid]);
    out.changed.add(owner);
  }
  for (const [name, row] of sorted(state.interfaces)) {
    const owner = ownerOf(row.externalIds);
    if (owner === undefined || hold.has(owner) || keptIfaces.has(name) || !opts.inScope(domainOfOwner(owner)))
      continue;
    const cmds = tcDevs.has(name) ? out.beforeTc : out.afterTc;
    cmds.push(
      ["set", "interface", name, "ingress_policing_rate=0", "ingress_policing_burst=0"],
      ["remove", "interface", name, "external_ids", OVS_OWNER_KEY],
    );
    out.changed.add(owner);
  }
  return out;
}

/**
 * Another tool's setting where an interface wants Open vSwitch to enforce a direction: a QoS row virtqos did not
 * tag (libvirt's `<bandwidth>` makes one), or ingress policing virtqos did not set. virtqos leaves such a port
 * alone (OVS_QOS_FOREIGN), whole; undefined when the way is free (or the port is not in OVSDB).
 */
export function foreignOn(
  w: { owner: string; port: string; label: string; qos?: unknown; policing?: unknown },
  state: OvsState,
): Diagnostic | undefined {
  const port = state.ports.get(w.port);
  const iface = state.interfaces.get(w.port);
  if (!port || !iface) return undefined;
  const current = port.qos ? state.qos.get(port.qos) : undefined;
  const foreignQos = !!w.qos && !!port.qos && ownerOf(current?.externalIds) === undefined;
  const foreignPolicing =
    !!w.policing && iface.policingRateKbitPerSec !== 0 && ownerOf(iface.externalIds) === undefined;
  if (!foreignQos && !foreignPolicing) return undefined;
  return {
    code: "OVS_QOS_FOREIGN",
    level: "error",
    iface: w.owner,
    dev: w.port,
    direction: foreignQos ? "inbound" : "outbound",
    message: foreignQos
      ? `${w.label}: port ${w.port} already has QoS ${port.qos} (type ${current?.type ?? "?"}) that virtqos did not create; virtqos leaves this interface as it is; to remove it: ovs-vsctl clear port ${w.port} qos`
      : `${w.label}: interface ${w.port} already has ingress_policing_rate=${iface.policingRateKbitPerSec} that virtqos did not set; virtqos leaves this interface as it is; to remove it: ovs-vsctl set interface ${w.port} ingress_policing_rate=0`,
  };
}

/**
 * Before planning: interfaces that must not change now, with why: another tool's setting on their port
 * (foreignOn), or no OVSDB to read (`unreadable`, its error). Each gets `problem` (the planner fails it whole)
 * and loses its OVS marks (its tc wants are then what they were, and are voided with it).
 */
export function refuseBeforePlan(
  desired: DesiredInterface[],
  state: OvsState | undefined,
  unreadable?: string,
): void {
  for (const d of desired) {
    if (!d.ovsNative?.length || !d.dev || d.problem) continue;
    const w = {
      owner: d.key,
      port: d.dev,
      label: labelOf(d),
      qos: d.ovsNative.includes("inbound") || undefined,
      policing: d.ovsNative.includes("outbound") || undefined,
    };
    const problem = state
      ? foreignOn(w, state)
      : {
          code: "OVSDB_FAILED" as const,
          level: "error" as const,
          iface: d.key,
          dev: d.dev,
          message: `${w.label}: Open vSwitch not read, this interface is left as it is: ${unreadable ?? "no OVSDB"}`,
        };
    if (!problem) continue;
    d.problem = problem;
    delete d.ovsNative;
  }
}

function createQueue(id: string, qos: OvsQosWant, owner: string): OvsCommand {
  return [
    `--id=${id}`,
    "create",
    "queue",
    ...Object.entries(queueConfig(qos.queue)).map(([k, v]) => `other_config:${k}=${v}`),
    tag(owner),
  ];
}

/**
 * The whole ovs-vsctl argument array for one transaction. `wait`: return once ovs-vswitchd has applied it (a
 * port handed back to tc); otherwise `--no-wait` (OVSDB is the contract; ovs-vswitchd applies it within
 * milliseconds, and a guest start need not wait for that). `timeoutSec` bounds it either way.
 */
export function ovsVsctlArgs(
  commands: OvsCommand[],
  opts: { db?: string; wait?: boolean; timeoutSec?: number } = {},
): string[] {
  const args: string[] = [];
  if (opts.db) args.push(`--db=${opts.db}`);
  args.push(`--timeout=${opts.timeoutSec ?? 10}`);
  if (!opts.wait) args.push("--no-wait");
  for (const c of commands) args.push("--", ...c);
  return args;
}

// ------------------------------------------------------------------------------------ taking a port over (ovs: tc)

/** What virtqos removes from an OVS port it takes over under `ovs: tc` (another tool's QoS or policing). */
export interface OvsTakeOver {
  /** The interface's key, `<domain uuid>/<mac>`. */
  owner: string;
  port: string;
  label: string;
  /** The port's QoS row, untagged: cleared from the port; `destroyed` when no other port used it. */
  qos?: { uuid: string; type: string; queueConfig?: OvsMap; destroyed: boolean };
  /** The Interface's ingress policing, set by someone else: reset to 0. */
  policing?: { rateKbitPerSec: number; burstKbit: number };
  /** The ovs-vsctl commands, in the `beforeTc` transaction (waiting for ovs-vswitchd). */
  commands: OvsCommand[];
}

/** An interface `ovs: tc` shapes on an OVS port (with the policy's `ovs` mode; `native` takes nothing over). */
export function takeOverCandidate(d: DesiredInterface, mode: OvsMode): boolean {
  return (
    mode === "tc" &&
    !!d.ovs &&
    !!d.dev &&
    !d.problem &&
    !d.notEnforceable &&
    !d.swapped &&
    !d.ovsNative?.length &&
    (d.inbound !== undefined ||
      d.outbound !== undefined ||
      d.group?.inbound !== undefined ||
      d.group?.outbound !== undefined)
  );
}

/**
 * `ovs: tc`: the interfaces whose port carries QoS or ingress policing virtqos did not set (untagged: libvirt's
 * `<bandwidth>` makes a linux-htb QoS whose queue has only min-rate, a guarantee and not a limit, and ingress
 * policing). virtqos takes such a port over: it clears the Port's `qos` (destroying the QoS row, and its untagged
 * queues, only where no other port or QoS uses them: QoS and Queue are root tables, an unreferenced row would stay
 * forever; libvirt finds its own rows by external_ids when the guest stops and tolerates their absence) and resets
 * the Interface's ingress policing to 0, before the tc batch. Rows tagged as virtqos's are never touched here.
 */
export function ovsTakeOvers(candidates: DesiredInterface[], state: OvsState): OvsTakeOver[] {
  const found: { d: DesiredInterface; port: string; qos?: string; policing: boolean }[] = [];
  for (const d of candidates) {
    if (!d.dev) continue;
    const port = state.ports.get(d.dev);
    const iface = state.interfaces.get(d.dev);
    if (!port || !iface) continue;
    const qos =
      port.qos && ownerOf(state.qos.get(port.qos)?.externalIds) === undefined ? port.qos : undefined;
    const policing = iface.policingRateKbitPerSec !== 0 && ownerOf(iface.externalIds) === undefined;
    if (qos || policing) found.push({ d, port: d.dev, qos, policing });
  }
  const cleared = new Set(found.filter((f) => f.qos).map((f) => f.port));
  const destroyedQos = new Set<string>();
  const destroyedQueues = new Set<string>();
  const out: OvsTakeOver[] = [];
  for (const f of found) {
    const t: OvsTakeOver = { owner: f.d.key, port: f.port, label: labelOf(f.d), commands: [] };
    if (f.qos) {
      const row = state.qos.get(f.qos);
      t.commands.push(["clear", "port", f.port, "qos"]);
      const users = [...state.ports].filter(([, p]) => p.qos === f.qos).map(([name]) => name);
      const destroy = !!row && users.every((u) => cleared.has(u));
      if (destroy && !destroyedQos.has(f.qos)) {
        destroyedQos.add(f.qos);
        t.commands.push(["destroy", "qos", f.qos]);
        for (const q of Object.values(row.queues).sort()) {
          if (destroyedQueues.has(q) || ownerOf(state.queues.get(q)?.externalIds) !== undefined) continue;
          const usedElsewhere = [...state.qos].some(
            ([u, other]) => !destroyedQos.has(u) && Object.values(other.queues).includes(q),
          );
          if (usedElsewhere || !state.queues.has(q)) continue;
          destroyedQueues.add(q);
          t.commands.push(["destroy", "queue", q]);
        }
      }
      const queue0 = row?.queues[String(OVS_DEFAULT_QUEUE)];
      const queueConfig = queue0 ? state.queues.get(queue0)?.otherConfig : undefined;
      t.qos = {
        uuid: f.qos,
        type: row?.type ?? "?",
        ...(queueConfig ? { queueConfig } : {}),
        destroyed: destroy,
      };
    }
    if (f.policing) {
      const iface = state.interfaces.get(f.port);
      t.policing = {
        rateKbitPerSec: iface?.policingRateKbitPerSec ?? 0,
        burstKbit: iface?.policingBurstKbit ?? 0,
      };
      t.commands.push(["set", "interface", f.port, "ingress_policing_rate=0", "ingress_policing_burst=0"]);
    }
    out.push(t);
  }
  return out;
}

/** The OVS_QOS_TAKEN_OVER warning for one port taken over. */
export function takeOverNote(t: OvsTakeOver): Diagnostic {
  const what: string[] = [];
  if (t.qos) {
    const q = t.qos.queueConfig;
    const queue = q
      ? `, queue 0 ${
          Object.keys(q).length
            ? Object.entries(q)
                .map(([k, v]) => `${k}=${v}`)
                .join(" ")
            : "empty"
        }`
      : "";
    what.push(
      `QoS ${t.qos.uuid} (type ${t.qos.type}${queue}; ${t.qos.destroyed ? "row destroyed" : "row left: another port uses it"})`,
    );
  }
  if (t.policing)
    what.push(
      `ingress_policing_rate=${t.policing.rateKbitPerSec} ingress_policing_burst=${t.policing.burstKbit} (reset to 0)`,
    );
  return {
    code: "OVS_QOS_TAKEN_OVER",
    level: "warning",
    iface: t.owner,
    dev: t.port,
    message: `${t.label}: virtqos takes Open vSwitch port ${t.port} over (ovs: tc) and removes ${what.join(" and ")}: they were not virtqos's (libvirt's <bandwidth> on an OVS port sets them); libvirt's OVS QoS is a guarantee (min-rate), not a limit, and OVS's htb 1: would keep virtqos's own tc objects off the port`,
  };
}

// ------------------------------------------------------------------------------------ tc's view of a port

/**
 * The device as ovs-vswitchd leaves it once its QoS (`inbound`: its `htb 1:` root and classes) or its ingress
 * policing (`outbound`: its `ingress` qdisc and the filters not virtqos's) are gone; undefined if nothing changes.
 */
function withoutOvsObjects(
  obs: ObservedDevice,
  inbound: boolean,
  outbound: boolean,
): ObservedDevice | undefined {
  let { qdiscs, classes, filters } = obs;
  let changed = false;
  if (inbound) {
    const root = qdiscs.find((q) => q.parent === "root");
    if (root?.kind === "htb" && root.handle === OVS_HTB_HANDLE) {
      qdiscs = qdiscs.filter((q) => q !== root && !q.parent.startsWith(OVS_HTB_HANDLE));
      classes = classes.filter((c) => !c.classid.startsWith(OVS_HTB_HANDLE));
      changed = true;
    }
  }
  if (outbound) {
    const hook = qdiscs.find((q) => q.parent === HOOK_PARENT);
    if (hook?.kind === "ingress") {
      qdiscs = qdiscs.filter((q) => q !== hook);
      filters = filters.filter((f) => f.hook !== "ingress" || isOurPrio(f.prio));
      changed = true;
    }
  }
  return changed ? { ...obs, qdiscs, classes, filters } : undefined;
}

/** Whether a device shows what ovs-vswitchd builds for QoS or policing (`htb 1:` root, an `ingress` qdisc). */
export function hasOvsObjects(obs: ObservedDevice | undefined): boolean {
  return !!obs && withoutOvsObjects(obs, true, true) !== undefined;
}

/** The planner's view of the ports taken over: as ovs-vswitchd leaves them once the takeover is done. */
export function ovsTakenOverView(observed: Observed, takeOvers: OvsTakeOver[]): Observed {
  if (!takeOvers.length) return observed;
  const devices = new Map(observed.devices);
  for (const t of takeOvers) {
    const obs = devices.get(t.port);
    const after = obs && withoutOvsObjects(obs, !!t.qos, !!t.policing);
    if (after) devices.set(t.port, after);
  }
  return { ...observed, devices };
}

/**
 * When a direction goes back from Open vSwitch to tc in this apply (the policy switched to `ovs: tc`, the
 * interface joined a group), the port still carries OVS's objects: its `htb 1:` root, its `ingress` qdisc and
 * police filter. OVS removes them once virtqos clears the QoS or the policing, which happens before the tc batch
 * (OvsPlan.beforeTc). The planner is shown the device as OVS leaves it then, or it would refuse a root qdisc
 * and a filter that virtqos itself had asked OVS for. `devs`: the devices concerned.
 */
export function ovsHandBack(
  observed: Observed,
  desired: DesiredInterface[],
): { observed: Observed; devs: Set<string> } {
  const devs = new Set<string>();
  const byKey = new Map(desired.map((d) => [d.key, d]));
  const devices = new Map(observed.devices);
  for (const r of observed.records) {
    for (const i of r.interfaces) {
      if (!i.ovs || !i.dev) continue;
      const d = byKey.get(`${r.domainUuid}/${i.mac}`);
      if (!d || d.dev !== i.dev) continue;
      const toTc = (direction: Direction) =>
        !!i.ovs?.[direction] &&
        !d.ovsNative?.includes(direction) &&
        (d[direction] !== undefined || d.group?.[direction] !== undefined);
      const obs = devices.get(i.dev);
      if (!obs) continue;
      const after = withoutOvsObjects(obs, toTc("inbound"), toTc("outbound"));
      if (!after) continue;
      devs.add(i.dev);
      devices.set(i.dev, after);
    }
  }
  return { observed: devs.size ? { ...observed, devices } : observed, devs };
}

// ------------------------------------------------------------------------------------ records

/**
 * After the OVS part was refused or failed for some interfaces: their OVS directions leave the records and are
 * kept as refused (with the code), so `virtqos status` keeps showing them as not in force.
 */
export function refuseOvs(
  records: DomainRecord[],
  forget: string[],
  failures: Map<string, { code: string; message: string }>,
): void {
  for (const r of records) {
    for (const i of [...r.interfaces]) {
      const why = failures.get(`${r.domainUuid}/${i.mac}`);
      if (!why || !i.ovs) continue;
      r.refused = [
        ...(r.refused ?? []),
        { mac: i.mac, dev: i.dev, code: why.code, message: why.message, ...i.ovs },
      ];
      delete i.ovs;
      if (!i.inbound && !i.outbound && !i.group) r.interfaces = r.interfaces.filter((x) => x !== i);
    }
    const at = forget.indexOf(r.domainUuid);
    if (at >= 0 && (r.interfaces.length || r.refused?.length)) forget.splice(at, 1);
  }
}
