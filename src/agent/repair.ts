import {
  accessSync,
  constants,
  existsSync,
  mkdirSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { delimiter, join } from "node:path";
import type { Runner } from "../adapters/exec.js";
import {
  isVirtqosTcObject,
  type KernelEvent,
  type KernelWatch,
  watchKernel,
} from "../adapters/kernel-watch.js";
import { acquireLock } from "../adapters/lock.js";
import type { Logger } from "../adapters/log.js";
import { DEFAULT_OVSDB, type OvsEvent, type OvsWatch, watchOvsdb } from "../adapters/ovsdb-watch.js";
import { cachedCapabilities } from "../adapters/probe.js";
import { loadRecords } from "../adapters/state.js";
import { reconcile, type ScopedObserver } from "../app/engine.js";
import { type GoneInterface, pruneGone } from "../app/prune.js";
import {
  CONTESTED_VERSION,
  type ContestedEntry,
  type ContestedFile,
  contestedPath,
  desiredFromRecords,
} from "../app/status.js";
import type { DomainRecord, StoredRecord } from "../core/model.js";
import { groupIfbName } from "../core/names.js";
import { type Op, recordIfb } from "../core/plan.js";
import type { Policy } from "../core/policy.js";
import type { Capabilities } from "../core/recipe.js";
import { HOOK_PARENT } from "../core/tc/handles.js";
import {
  type Batch,
  Coalescer,
  type CoalescerOptions,
  type ContestedObject,
  type DriftDecision,
  DriftPolicy,
  type DriftPolicyOptions,
  driftKey,
  OvsSettler,
  realTimers,
  type Settled,
  type Timers,
} from "./drift.js";
import type { Health } from "./types.js";

// The agent's drift repair: when something removes or changes what virtqos put into the kernel (an admin's
// `tc qdisc del`, OVS resetting a port, a deleted IFB, a tap re-created under the same name), the affected
// domain is re-applied through the service's single-writer queue, usually within a few hundred ms.
//
// Events only say where to look. The kernel watch reports virtqos's own applies and OVS's queries too, so an
// event about one of our devices starts a CHECK of its domain: a dry-run reconcile of the domain's state
// record against the kernel (the plan `virtqos status` makes), under the engine's lock so that a hook or CLI
// half-way through an apply is never mistaken for drift. Only a check that finds something to do is drift;
// that repair is logged once, as a WARNING naming what was missing and what caused it, and counted.
//
// Fighting is bounded by DriftPolicy (drift.ts): an object that keeps coming back wrong after repairs becomes
// "contested" (one ERROR, the contested gauge) and its repairs back off up to a minute apart. While a domain
// waits for such a deferred repair, events about it start no check; at its time the re-apply is the check
// (the engine re-plans under the lock and applies only what differs). Each check and repair costs processes
// (~10 ms of CPU each to spawn on a small host), which is what keeps a fight cheap.
//
// Open vSwitch reconfiguring a port is no fight. One port added or deleted (or ovs-vswitchd restarted) makes
// it re-create a policed port's `ingress` qdisc several times within a second or two, often before OVSDB
// shows why. So a change on an OVS port is checked once OVS has settled on it (OvsSettler in drift.ts: OVSDB
// and the port's qdiscs quiet for 300 ms, at most 2 s after the first change), and a drift that an OVS event
// explains (another port added or deleted, ovs-vswitchd restarted or reconnected to its database, the port's
// own rows changed; within 5 s before the change or since) is labelled with that cause and does not count
// toward "contested".
//
// A tap that disappears is not drift (nothing to shape on a device that does not exist). Its interface is
// watched instead: tap back under the same name (a re-created tap) is re-shaped; still missing after the
// grace period at every check is pruned (its record forgotten, its IFBs removed: src/app/prune.ts).

/** What the repairer needs of the agent's service (src/agent/service.ts's LocalService). */
export interface RepairService {
  reapply(domain: string, door?: "agent"): Promise<void>;
  queue: { run<T>(key: string, fn: () => Promise<T>): Promise<T> };
  health?(): Health;
}

export interface RepairMetrics {
  driftRepaired(cause: string): void;
  setContested(n: number): void;
}

export interface RepairerOptions {
  service: RepairService;
  runner: Runner;
  runDir: string;
  stateDir?: string;
  policy: () => Promise<Policy>;
  caps?: Capabilities;
  log: Logger;
  metrics?: RepairMetrics;
  /** The clock (epoch ms) for the drift policy and the prune grace. */
  now?: () => number;
  drift?: DriftPolicyOptions;
  coalesce?: CoalescerOptions;
  /** How long a tap must stay missing (at every check) before its records are pruned; default 5 min. */
  pruneGraceMs?: number;
  /**
   * Reads one domain's devices without listing the host (the agent's kernel view): a check after each
   * event then costs milliseconds, not a read of every link and qdisc.
   */
  observer?: ScopedObserver;
  /** Only these domains are checked, repaired and pruned (a test on a shared host); default all. */
  only?: (domainUuid: string) => boolean;
  /** How long a check or prune waits for the engine's lock; default 10 s. */
  lockTimeoutMs?: number;
  /** How long an OVS event explains kernel changes on its ports; default 5 s. */
  ovsHintMs?: number;
  /**
   * How long OVSDB and the port's qdiscs must have been quiet before an OVS port is checked and repaired;
   * default 300 ms. One port added makes ovs-vswitchd reconfigure every port several times within a second or
   * two (each time re-creating a policed port's ingress qdisc): repairing between them would be undone.
   */
  ovsSettleMs?: number;
  /** The longest an OVS port OVS keeps changing waits for that (from its first change); default 2 s. */
  ovsSettleCapMs?: number;
  /**
   * How long a change on an OVS port no OVS event explains yet waits for one (OVS changes the kernel
   * before OVSDB shows why); default 500 ms.
   */
  ovsLeadMs?: number;
  /** Told about every repair (tests, benchmarks). */
  onRepair?(r: RepairReport): void;
  /**
   * Keep `<runDir>/contested.json` (for `virtqos status` and the agent's health) up to date with the contested
   * objects; default true. Only one repairer per run dir should.
   */
  persistContested?: boolean;
}

/** One repair, as logged. */
export interface RepairReport {
  domainUuid: string;
  domainName: string;
  devs: string[];
  missing: string[];
  extra: string[];
  cause: string;
  ok: boolean;
  error?: string;
  /** When the first event (or the check) that led to it arrived, and when the repair finished (epoch ms). */
  firstAt: number;
  doneAt: number;
}

export interface RepairerStats {
  events: number;
  checks: number;
  repairs: number;
  failedRepairs: number;
  prunes: number;
}

/** Causes, most telling first: a check triggered by several things names the first of these it saw. */
export const CAUSES = [
  "ovs-vswitchd restart",
  "ovs add-port",
  "ovs del-port",
  "ovs qos change",
  "ovs policing change",
  "tap re-created",
  "ip link del",
  "tc qdisc del",
  "tc filter del",
  "tc class del",
  "tc qdisc change",
  "tc filter change",
  "tc class change",
  "ip link set",
  "monitor resync",
  "tap gone",
  "periodic check",
] as const;
export type DriftCause = (typeof CAUSES)[number];

const rank = (c: DriftCause): number => CAUSES.indexOf(c);
const better = (a: DriftCause | undefined, b: DriftCause): DriftCause =>
  a === undefined || rank(b) < rank(a) ? b : a;

/** Causes that come from an event about a device: dropped while the domain waits for a backed-off repair. */
const EVENT_CAUSES = new Set<DriftCause>(CAUSES.filter((c) => c !== "periodic check" && c !== "tap gone"));

const KERNEL_CAUSE: Partial<Record<KernelEvent["kind"], DriftCause>> = {
  "qdisc-deleted": "tc qdisc del",
  "filter-deleted": "tc filter del",
  "class-deleted": "tc class del",
  "qdisc-changed": "tc qdisc change",
  "filter-changed": "tc filter change",
  "class-changed": "tc class change",
  "link-deleted": "ip link del",
  "link-added": "tap re-created",
  "link-changed": "ip link set",
};

const OVS_CAUSE: Partial<Record<string, DriftCause>> = {
  "port-added": "ovs add-port",
  "ofport-changed": "ovs add-port",
  // Deleting a port (a guest stopped) reconfigures the others as adding one does (measured, OVS 3.1).
  "port-deleted": "ovs del-port",
  "qos-changed": "ovs qos change",
  "policing-changed": "ovs policing change",
  "vswitchd-restart": "ovs-vswitchd restart",
};

/** OVS events that make ovs-vswitchd reconfigure every port, not only the one named. */
const OVS_EVERY_PORT = new Set(["port-added", "port-deleted", "ofport-changed", "vswitchd-restart"]);

/** Causes that are Open vSwitch reconfiguring the port: a drift they explain is no fight (DriftFinding). */
const OVS_CAUSES = new Set<DriftCause>(Object.values(OVS_CAUSE) as DriftCause[]);

/**
 * What OVS does to a port and virtqos never does in a repair: delete a qdisc other than the kernel's default
 * root (handle 0:), create an `ingress` qdisc (virtqos's hook is clsact). Counted as OVS still busy on the
 * port even while virtqos repairs its domain.
 */
const ovsLike = (e: KernelEvent): boolean =>
  (e.kind === "qdisc-deleted" && e.handle !== "0:") || (e.kind === "qdisc-changed" && e.tcKind === "ingress");

/** How long the list of OVS ports is reused between OVSDB events. */
const OVS_PORTS_TTL_MS = 2_000;

// ------------------------------------------------------------------------------------ describing drift

export interface DriftDescription {
  /** The guest-facing devices concerned (the tap for an interface's IFB ops). */
  devs: string[];
  /** What would be added or replaced, per device and hook ("root qdisc", "ingress redirect", "ifb"...). */
  missing: string[];
  /** What would be removed (virtqos objects that should not be there). */
  extra: string[];
  /** One DriftPolicy key per repairable object: driftKey(op device, what). */
  keys: string[];
}

function what(op: Op): string {
  switch (op.op) {
    case "ifb-add":
    case "ifb-del":
      return "ifb";
    case "link-up":
      return "link up";
    case "root-replace":
    case "root-del":
      return "root qdisc";
    case "class-replace":
    case "class-del":
      return "class";
    case "leaf-replace":
      return "leaf qdisc";
    case "hook-add":
    case "hook-del":
      return `${op.kind} qdisc`;
    case "filter-add":
    case "filter-replace":
      return `${op.hook} ${op.filter.action}`;
    case "filter-del":
      return `${op.hook} filter`;
    case "tree-filter-add":
    case "tree-filter-del":
      return "group filter";
  }
}

const isRemoval = (op: Op): boolean => op.op.endsWith("-del");

/**
 * What a check's ops say is wrong, in words for the log. Ops on an interface's IFB are named from the tap's
 * side ("ifb", "ifb root qdisc"), those on a group's IFB as "group tree ...". A whole missing IFB or root
 * qdisc stands for everything under it, and a filter deleted to be added again is a replacement.
 */
export function describeDrift(ops: readonly Op[], record?: DomainRecord): DriftDescription {
  const tapOf = new Map<string, string>();
  const groupIfbs = new Set<string>();
  for (const i of record?.interfaces ?? []) {
    if (i.dev) tapOf.set(`${record?.domainUuid}/${i.mac}`, i.dev);
    if (i.group)
      for (const d of ["inbound", "outbound"] as const) groupIfbs.add(groupIfbName(i.group.tree, d));
  }
  const byDev = new Map<string, Op[]>();
  for (const op of ops) byDev.set(op.dev, [...(byDev.get(op.dev) ?? []), op]);
  const devs: string[] = [];
  const missing: string[] = [];
  const extra: string[] = [];
  const keys: string[] = [];
  const add = (list: string[], v: string) => {
    if (!list.includes(v)) list.push(v);
  };
  for (const [dev, devOps] of byDev) {
    const created = devOps.some((o) => o.op === "ifb-add");
    const rooted = devOps.some((o) => o.op === "root-replace");
    const readded = new Set(
      devOps.flatMap((o) => (o.op === "filter-add" || o.op === "filter-replace" ? [`${o.hook}`] : [])),
    );
    for (const op of devOps) {
      if (created && op.op !== "ifb-add") continue;
      if (rooted && (op.op === "class-replace" || op.op === "leaf-replace")) continue;
      if (op.op === "filter-del" && readded.has(op.hook)) continue;
      const tap = op.iface ? tapOf.get(op.iface) : undefined;
      const prefix = groupIfbs.has(dev)
        ? "group tree "
        : tap && tap !== dev && op.op !== "ifb-add" && op.op !== "ifb-del"
          ? "ifb "
          : "";
      const w = what(op);
      add(devs, tap ?? dev);
      add(isRemoval(op) ? extra : missing, `${prefix}${w}`);
      add(keys, driftKey(dev, isRemoval(op) ? `extra ${w}` : w));
    }
  }
  return { devs, missing, extra, keys };
}

// ------------------------------------------------------------------------------------ the repairer

interface Index {
  /** The records dir's mtime when read: saveRecords renames into it, so any record change moves it. */
  stamp: string;
  records: Map<string, StoredRecord>;
  /** Device (tap, interface IFB, group IFB) -> the domains whose records use it. */
  byDev: Map<string, Set<string>>;
  /** Tap -> the interfaces recorded on it. */
  taps: Map<string, { uuid: string; mac: string }[]>;
}

interface Trigger {
  cause: DriftCause;
  at: number;
  /**
   * Something was removed (a virtqos object, a hook qdisc, a link) or the trigger is not the kernel's echo
   * at all (OVS, a timer). Events without it that arrive while virtqos repairs the domain are that repair's
   * own echo and start no check of their own.
   */
  loss: boolean;
}

/** Checks that must not trust the kernel view's cache. */
const BACKSTOP = new Set<DriftCause>(["periodic check", "monitor resync"]);

// How long after a repair's tc batch has returned its echo may still arrive from the monitors.
const OWN_ECHO_MS = 100;

interface Missing {
  uuid: string;
  mac: string;
  dev: string;
  since: number;
  timer?: NodeJS.Timeout;
}

const silentOf = (log: Logger): Logger => ({
  debug: (m) => log.debug(m),
  info: (m) => log.debug(m),
  warning: (m) => log.debug(m),
  error: (m) => log.debug(m),
  setLevel: () => {},
  close: async () => {},
});

export class Repairer {
  private readonly o: RepairerOptions;
  private readonly now: () => number;
  private readonly policyState: DriftPolicy;
  private readonly coalescer: Coalescer<Trigger>;
  private readonly grace: number;
  private readonly quiet: Logger;
  private index: Index = { stamp: "", records: new Map(), byDev: new Map(), taps: new Map() };
  private indexReadAt = 0;
  private caps?: Capabilities;
  private closed = false;

  /** Domains to check, with the best cause seen and when the first trigger came. */
  private pending = new Map<string, Trigger>();
  private pumping: Promise<void> | undefined;
  /** Domains whose repair is in the queue; triggers meanwhile wait for it to finish. */
  private readonly repairing = new Map<string, Promise<void>>();
  private readonly afterRepair = new Map<string, Trigger>();
  /** Domains waiting for a backed-off repair, and the timer that checks them then. */
  private readonly deferred = new Map<string, { at: number; timer: NodeJS.Timeout; trigger: Trigger }>();
  /** Keys a check reported to the policy and no repair has settled yet, per domain. */
  private readonly open = new Map<string, Set<string>>();
  /** Every key ever reported, per domain (for the contested pace). */
  private readonly domainKeys = new Map<string, Set<string>>();
  /** The last repair of each domain: its echo in the monitors is not checked again. */
  private readonly lastRepair = new Map<string, { start: number; end: number }>();
  /** What the last check that found drift said, per domain (for the back-off's repairs). */
  private readonly lastDesc = new Map<string, DriftDescription>();
  /** Kernel events about a domain's devices while a back-off repair of it runs: did it change anything? */
  private readonly echo = new Map<string, number>();
  /** Interfaces whose tap is missing, by `uuid/mac`. */
  private readonly missing = new Map<string, Missing>();
  /** Plan problems already logged (`uuid/mac|code`): once until they clear. */
  private readonly reported = new Set<string>();
  /** Contested keys already logged. */
  private readonly contestedLogged = new Set<string>();
  /** What this repairer last wrote to contested.json (its objects as JSON); "" while it wrote none. */
  private contestedWritten = "";
  /** The last failure to write it, logged once. */
  private contestedWriteError = "";
  /** Waits out OVS's reconfigurations per port, and knows which OVS events explain a change. */
  private readonly settler: OvsSettler<DriftCause, Trigger>;
  private ovsPorts: () => Iterable<string> = () => [];
  /** OVS's ports as last listed, and when (the list costs a walk of the OVSDB watch's tables). */
  private ovsPortSet: { at: number; ports: Set<string> } | undefined;
  /** Whether the OVSDB watch was connected (undefined: never yet). */
  private ovsdbUp: boolean | undefined;
  private readonly timers = new Set<NodeJS.Timeout>();

  readonly stats: RepairerStats = { events: 0, checks: 0, repairs: 0, failedRepairs: 0, prunes: 0 };
  /** The last repairs (at most 100), newest last. */
  readonly reports: RepairReport[] = [];

  constructor(o: RepairerOptions) {
    this.o = o;
    this.now = o.now ?? Date.now;
    this.policyState = new DriftPolicy({ now: this.now, ...o.drift });
    // One clock for everything the repairer compares: the injected one (events are stamped with it when they
    // arrive, not with the watches' performance-clock stamps, which drift from Date.now by ~200 ppm).
    const timers: Timers = o.coalesce?.timers ?? { ...realTimers, now: () => this.now() };
    this.coalescer = new Coalescer((b) => this.onBatch(b), { ...o.coalesce, timers });
    this.settler = new OvsSettler<DriftCause, Trigger>((s) => this.onSettled(s), {
      settleMs: o.ovsSettleMs,
      capMs: o.ovsSettleCapMs,
      hintMs: o.ovsHintMs,
      leadMs: o.ovsLeadMs,
      rank,
      timers,
    });
    this.grace = o.pruneGraceMs ?? 300_000;
    this.quiet = silentOf(o.log);
    this.caps = o.caps;
  }

  // ---------------------------------------------------------------------------------- inputs

  /** A kernel watch event (any: those about devices that are not ours cost a map lookup). */
  onKernelEvent(e: KernelEvent): void {
    if (this.closed) return;
    const idx = this.refresh();
    const taps = idx.taps.get(e.dev);
    const owners = idx.byDev.get(e.dev);
    if (!owners) return;
    this.stats.events++;
    const at = this.now();
    for (const u of owners) {
      const n = this.echo.get(u);
      if (n !== undefined) this.echo.set(u, n + 1);
    }
    if (e.kind === "link-deleted" && taps) {
      // A tap going away is no drift: its guest stopped or it is being re-created. Watch it for pruning.
      for (const t of taps) this.tapMissing(t.uuid, t.mac, e.dev, at);
      return;
    }
    // A tc change on an OVS port that is not virtqos's own repair: OVS is (still) at work on the port.
    if (taps && !e.kind.startsWith("link-") && this.isOvsPort(e.dev)) {
      if (ovsLike(e) || ![...owners].some((u) => this.inOwnRepair(u, at))) this.settler.kernelChange(e.dev);
    }
    const cause = KERNEL_CAUSE[e.kind];
    if (!cause) return;
    const loss =
      e.kind === "link-deleted" ||
      (e.kind === "link-added" && taps !== undefined) ||
      (e.kind.endsWith("-deleted") && (isVirtqosTcObject(e) || e.parent === HOOK_PARENT));
    // A new link under a recorded name is a re-created tap only if it is a tap: a re-created IFB is ours.
    const c: DriftCause = e.kind === "link-added" && !taps ? "ip link set" : cause;
    this.coalescer.push(e.dev, { cause: c, at, loss });
  }

  /**
   * An OVSDB watch event. OVS changes show in the kernel watch as well; this says why (the cause logged),
   * and asks for a check of the ports concerned in case the kernel change came before the database's.
   */
  onOvsEvent(e: OvsEvent): void {
    if (this.closed) return;
    // Ports come and go with OVSDB's events: list them again.
    this.ovsPortSet = undefined;
    const cause = OVS_CAUSE[e.kind];
    // Every event means OVSDB is not quiet; one with a cause explains what OVS does to the port, or (a port
    // added or deleted, a restart: ovs-vswitchd reconfigures them all) to every OVS port.
    if (!cause || OVS_EVERY_PORT.has(e.kind) || !e.port) this.settler.ovsEvent(cause);
    else this.settler.ovsEvent(cause, e.port);
    if (!cause) return;
    const at = this.now();
    const idx = this.refresh();
    if (e.kind === "vswitchd-restart") {
      const ours = [...this.ovsPortNames()].filter((p) => idx.taps.has(p));
      for (const p of ours) this.coalescer.push(p, { cause, at, loss: true });
      // ovs-vswitchd writes its pidfile before it configures its ports: look again once it has.
      this.later(1000, () => {
        for (const p of ours) this.coalescer.push(p, { cause, at: this.now(), loss: true });
      });
      return;
    }
    // A deleted port is a tap going away (its guest stopped), which the kernel watch follows.
    if (!e.port || e.kind === "port-deleted" || !idx.taps.has(e.port)) return;
    this.coalescer.push(e.port, { cause, at, loss: true });
  }

  /**
   * The OVSDB watch connected (true) or lost its connection (false). After the first connection either is
   * ovsdb-server restarting, and ovs-vswitchd reconfigures every port when it reconnects to it (as after
   * its own restart, and before the OVSDB watch is back to say anything).
   */
  onOvsState(connected: boolean): void {
    if (this.closed) return;
    const was = this.ovsdbUp;
    this.ovsdbUp = connected;
    this.ovsPortSet = undefined;
    if (was === undefined || was === connected) return;
    this.settler.ovsEvent("ovs-vswitchd restart");
  }

  /** Where OVS ports are listed (the OVSDB watch's ports()), for the restart and add-port hints. */
  setOvsPorts(ports: () => Iterable<string>): void {
    this.ovsPorts = ports;
    this.ovsPortSet = undefined;
  }

  /** The domains whose records use `dev` (a tap, an interface's IFB, a group's IFB). */
  domainsFor(dev: string): string[] {
    return [...(this.refresh().byDev.get(dev) ?? [])];
  }

  /** Check every domain with a record (the periodic backstop; after the watches may have missed events). */
  async fullCheck(cause: DriftCause = "periodic check"): Promise<void> {
    const at = this.now();
    for (const uuid of this.refresh().records.keys()) this.request(uuid, { cause, at, loss: true });
    await this.idle();
  }

  /** Check one domain now. */
  async check(uuid: string, cause: DriftCause = "periodic check"): Promise<void> {
    this.request(uuid, { cause, at: this.now(), loss: true });
    await this.idle();
  }

  /** Objects another party keeps changing back. */
  contested(): ContestedObject[] {
    return this.policyState.contested();
  }

  /** Resolves once no event batch, check, repair or prune is pending (deferred repairs excepted). */
  async idle(): Promise<void> {
    for (;;) {
      this.coalescer.flushAll();
      const busy = [this.pumping, ...this.repairing.values()].filter(Boolean);
      const settling = this.settler.pending().length > 0;
      if (!busy.length && !this.pending.size && !settling) return;
      if (this.closed) return;
      await Promise.allSettled(busy);
      // Ports waiting for OVS to settle are handed over by their timers (within the cap).
      if (!busy.length) await new Promise((r) => (settling ? setTimeout(r, 20) : setImmediate(r)));
    }
  }

  close(): void {
    this.closed = true;
    this.coalescer.clear();
    this.settler.clear();
    for (const d of this.deferred.values()) clearTimeout(d.timer);
    this.deferred.clear();
    for (const m of this.missing.values()) if (m.timer) clearTimeout(m.timer);
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    this.pending.clear();
    // Nobody repairs any more: what status would read as contested is no longer anyone's finding.
    if (this.contestedWritten) this.persistContested([]);
  }

  // ---------------------------------------------------------------------------------- the index

  private refresh(): Index {
    const dir = join(this.o.runDir, "domains");
    let stamp = "none";
    let mtime = 0;
    try {
      const st = statSync(dir);
      mtime = st.mtimeMs;
      stamp = `${st.mtimeMs}/${st.ino}`;
    } catch {
      // No records yet.
    }
    // tmpfs stamps directories with a coarse clock: a change within a few ms of the last read may share its
    // mtime, so an index read that soon after the mtime is not trusted to have seen everything.
    if (stamp === this.index.stamp && this.indexReadAt - mtime > 50) return this.index;
    this.indexReadAt = Date.now();
    let records: StoredRecord[];
    try {
      records = stamp === "none" ? [] : loadRecords(this.o.runDir);
    } catch (e) {
      // A record of a newer virtqos: nothing is repaired from a format this one cannot read.
      this.o.log.warning(`drift repair: state records not readable: ${(e as Error).message}`);
      records = [];
    }
    const idx: Index = { stamp, records: new Map(), byDev: new Map(), taps: new Map() };
    const use = (dev: string | undefined, uuid: string) => {
      if (!dev) return;
      const s = idx.byDev.get(dev) ?? new Set<string>();
      s.add(uuid);
      idx.byDev.set(dev, s);
    };
    for (const r of records) {
      if (this.o.only && !this.o.only(r.domainUuid)) continue;
      idx.records.set(r.domainUuid, r);
      for (const i of r.interfaces) {
        use(i.dev, r.domainUuid);
        use(recordIfb(r.domainUuid, i), r.domainUuid);
        if (i.group)
          for (const d of ["inbound", "outbound"] as const) use(groupIfbName(i.group.tree, d), r.domainUuid);
        if (i.dev) idx.taps.set(i.dev, [...(idx.taps.get(i.dev) ?? []), { uuid: r.domainUuid, mac: i.mac }]);
      }
      for (const f of r.refused ?? []) use(f.dev, r.domainUuid);
    }
    this.index = idx;
    // Interfaces no longer recorded (stopped by the hook, pruned) are nothing to watch any more.
    for (const [key, m] of this.missing) {
      if (!idx.records.get(m.uuid)?.interfaces.some((i) => i.mac === m.mac && i.dev === m.dev)) {
        if (m.timer) clearTimeout(m.timer);
        this.missing.delete(key);
      }
    }
    return idx;
  }

  // ---------------------------------------------------------------------------------- triggers

  private onBatch(b: Batch<Trigger>): void {
    if (this.closed) return;
    let cause: DriftCause | undefined;
    for (const t of b.items) cause = better(cause, t.cause);
    if (!cause) return;
    const loss = b.items.some((t) => t.loss);
    const trigger: Trigger = { cause, at: b.firstAt, loss };
    const uuids = this.domainsFor(b.key);
    // An OVS port is checked once OVS has settled on it (unless this is only virtqos's own repair's echo).
    if (this.isOvsPort(b.key) && !uuids.every((u) => this.isOwnEcho(u, trigger))) {
      this.settler.hold(b.key, trigger, b.firstAt);
      return;
    }
    for (const uuid of uuids) this.request(uuid, trigger);
  }

  /**
   * An OVS port has settled: check its domains. The kernel change is the effect; an OVS event on this port
   * or on every port (within the hint window before the first change, or since) the cause.
   */
  private onSettled(s: Settled<DriftCause, Trigger>): void {
    if (this.closed) return;
    let cause: DriftCause | undefined;
    for (const t of s.items) cause = better(cause, t.cause);
    if (s.explained) cause = better(cause, s.explained.cause);
    if (!cause) return;
    const loss = s.items.some((t) => t.loss);
    if (s.capped)
      this.o.log.debug(
        `drift: OVS still changes ${s.port} ${Math.round(this.now() - s.since)} ms on: checking it now`,
      );
    for (const uuid of this.domainsFor(s.port)) this.request(uuid, { cause, at: s.since, loss });
  }

  /**
   * Whether a drift of `key` is OVS reconfiguring its port rather than someone fighting virtqos: an OVS
   * cause, and the object is on an OVS port (OVS never touches an IFB).
   */
  private explainedBy(key: string, t: Trigger): boolean {
    return OVS_CAUSES.has(t.cause) && this.isOvsPort(key.slice(0, key.indexOf("|")));
  }

  /** Whether OVS lists `dev` as one of its ports (cached between OVSDB events). */
  private isOvsPort(dev: string): boolean {
    return this.ovsPortNames().has(dev);
  }

  private ovsPortNames(): Set<string> {
    const now = this.now();
    if (!this.ovsPortSet || now - this.ovsPortSet.at > OVS_PORTS_TTL_MS || now < this.ovsPortSet.at)
      this.ovsPortSet = { at: now, ports: new Set(this.ovsPorts()) };
    return this.ovsPortSet.ports;
  }

  /** Whether virtqos is repairing the domain, or just did (its echo may still arrive). */
  private inOwnRepair(uuid: string, at: number): boolean {
    if (this.repairing.has(uuid)) return true;
    const last = this.lastRepair.get(uuid);
    return last !== undefined && at >= last.start && at <= last.end + OWN_ECHO_MS;
  }

  /** A trigger that can only be a repair's own echo: nothing lost, during or just after that repair. */
  private isOwnEcho(uuid: string, t: Trigger): boolean {
    if (t.loss || !EVENT_CAUSES.has(t.cause)) return false;
    const last = this.lastRepair.get(uuid);
    return last !== undefined && t.at >= last.start && t.at <= last.end + OWN_ECHO_MS;
  }

  private request(uuid: string, t: Trigger): void {
    if (this.closed || (this.o.only && !this.o.only(uuid))) return;
    const event = EVENT_CAUSES.has(t.cause);
    // A domain waiting for a backed-off repair is checked when it is due, not at every event of the fight.
    if (this.deferred.has(uuid) && event) return;
    if (this.isOwnEcho(uuid, t)) return;
    if (event) {
      // A contested domain is checked at its back-off's pace: each check costs processes, and during a fight
      // every check would find it wrong again.
      const pace = this.contestedPace(uuid);
      if (pace !== undefined && pace > this.now()) {
        this.defer(uuid, pace, t);
        return;
      }
    }
    const merge = (m: Map<string, Trigger>) => {
      const had = m.get(uuid);
      m.set(
        uuid,
        had ? { cause: better(had.cause, t.cause), at: Math.min(had.at, t.at), loss: had.loss || t.loss } : t,
      );
    };
    if (this.repairing.has(uuid)) {
      merge(this.afterRepair);
      return;
    }
    merge(this.pending);
    this.pump();
  }

  private pump(): void {
    if (this.pumping || this.closed) return;
    // Started on a later tick, so that `pumping` is set before the loop can end.
    this.pumping = Promise.resolve()
      .then(async () => {
        while (this.pending.size && !this.closed) {
          const batch = new Map(this.pending);
          this.pending.clear();
          for (const [uuid, t] of batch) {
            if (!this.repairing.has(uuid)) continue;
            batch.delete(uuid);
            this.request(uuid, t);
          }
          if (batch.size) await this.checkNow(batch);
        }
      })
      .finally(() => {
        this.pumping = undefined;
      });
  }

  /** When a domain with contested objects may be repaired next; undefined if none of its objects is. */
  private contestedPace(uuid: string): number | undefined {
    const keys = this.domainKeys.get(uuid);
    const last = this.lastRepair.get(uuid);
    if (!keys || !last) return undefined;
    const waits = this.policyState
      .contested()
      .filter((c) => keys.has(c.key))
      .map((c) => c.backoffMs);
    return waits.length ? last.end + Math.min(...waits) : undefined;
  }

  private later(ms: number, fn: () => void): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (!this.closed) fn();
    }, ms);
    t.unref?.();
    this.timers.add(t);
  }

  // ---------------------------------------------------------------------------------- the check

  /** One dry run for every domain in `batch`: their records against the kernel, under the engine's lock. */
  private async checkNow(batch: Map<string, Trigger>): Promise<void> {
    let policy: Policy;
    let ops: Op[];
    let absent: Set<string>;
    let problems: { iface: string; code: string; message: string; dev?: string }[];
    let records: StoredRecord[];
    const planned = new Map<string, DomainRecord>();
    try {
      policy = await this.o.policy();
      this.caps ??= await cachedCapabilities(this.o.runner, this.o.runDir);
      const release = await acquireLock(this.o.runDir, this.o.lockTimeoutMs ?? 10_000);
      try {
        const idx = this.refresh();
        records = [...batch.keys()].flatMap((u) => {
          const r = idx.records.get(u);
          if (!r) this.forgetDomain(u);
          return r ? [r] : [];
        });
        if (!records.length) return;
        this.stats.checks++;
        const res = await reconcile(
          {
            runner: this.o.runner,
            runDir: this.o.runDir,
            stateDir: this.o.stateDir,
            log: this.quiet,
            caps: this.caps,
            lockHeld: true,
            // The backstops (the periodic check, a resync) read the kernel itself: they exist for what the
            // events, and so the kernel view's cache, may have missed.
            observer: [...batch.values()].some((t) => BACKSTOP.has(t.cause)) ? undefined : this.o.observer,
          },
          {
            domains: [],
            desired: desiredFromRecords(records),
            policy,
            scope: records.map((r) => r.domainUuid),
            sweep: false,
            dryRun: true,
          },
        );
        ops = res.plan.ops;
        for (const p of res.plan.records) planned.set(p.domainUuid, p);
        absent = new Set(
          res.plan.notes.flatMap((n) => (n.code === "DEVICE_ABSENT" && n.iface ? [n.iface] : [])),
        );
        problems = res.plan.problems.flatMap((p) =>
          p.iface && p.code !== "GROUP_ADMISSION"
            ? [{ iface: p.iface, code: p.code, message: p.message, dev: p.dev }]
            : [],
        );
      } finally {
        release();
      }
    } catch (e) {
      this.o.log.warning(`drift check of ${batch.size} domain(s) failed: ${(e as Error).message}; retrying`);
      // The lock held too long or a command failed: try again a little later, not in a tight loop.
      this.later(1000, () => {
        for (const [uuid, t] of batch) this.request(uuid, t);
      });
      return;
    }
    const now = this.now();
    for (const r of records) {
      const uuid = r.domainUuid;
      let trigger: Trigger = batch.get(uuid) ?? { cause: "periodic check", at: now, loss: true };
      if (this.recreated(r, planned.get(uuid)))
        trigger = { ...trigger, cause: better(trigger.cause, "tap re-created") };
      const mine = (o: Op) =>
        o.iface
          ? o.iface.startsWith(`${uuid}/`)
          : (this.index.byDev.get(o.dev)?.has(uuid) ?? records.length === 1);
      // Ops for an interface whose tap is gone (its IFB's removal) are pruning's business, after the grace.
      const drifted = ops.filter((o) => mine(o) && !(o.iface && absent.has(o.iface)));
      // A prune re-applies or removes the whole domain: whatever else drifted is put right by it.
      if (this.trackMissing(r, absent, now)) continue;
      this.reportProblems(r, problems);
      if (drifted.length) this.onDrift(r, drifted, trigger);
      else this.settleClean(uuid);
    }
    this.updateContested();
  }

  /** A domain without a record any more (stopped, cleared, pruned): nothing of it to repair or report. */
  private forgetDomain(uuid: string): void {
    for (const k of this.domainKeys.get(uuid) ?? []) this.policyState.forget(k);
    this.domainKeys.delete(uuid);
    this.open.delete(uuid);
    this.lastDesc.delete(uuid);
    this.lastRepair.delete(uuid);
    const d = this.deferred.get(uuid);
    if (d) clearTimeout(d.timer);
    this.deferred.delete(uuid);
    for (const key of [...this.reported]) if (key.startsWith(`${uuid}/`)) this.reported.delete(key);
  }

  /** Whether a recorded tap exists again under a new ifindex: deleted and re-created since it was shaped. */
  private recreated(r: StoredRecord, planned: DomainRecord | undefined): boolean {
    return r.interfaces.some((i) => {
      const now = planned?.interfaces.find((p) => p.mac === i.mac && p.dev === i.dev)?.ifindex;
      return i.ifindex !== undefined && now !== undefined && now !== i.ifindex;
    });
  }

  /** Plan problems (a foreign qdisc took our place...) cannot be repaired: said once, until they clear. */
  private reportProblems(
    r: StoredRecord,
    problems: { iface: string; code: string; message: string }[],
  ): void {
    const prefix = `${r.domainUuid}/`;
    const now = new Set(
      problems.filter((p) => p.iface.startsWith(prefix)).map((p) => `${p.iface}|${p.code}`),
    );
    for (const key of [...this.reported])
      if (key.startsWith(prefix) && !now.has(key)) this.reported.delete(key);
    for (const p of problems) {
      const key = `${p.iface}|${p.code}`;
      if (!p.iface.startsWith(prefix) || this.reported.has(key)) continue;
      this.reported.add(key);
      this.o.log.warning(`drift not repairable: guest=${r.domainName} ${p.code}: ${p.message}`);
    }
  }

  /** A clean check settles what earlier checks of the domain found (someone else put it right). */
  private settleClean(uuid: string): void {
    const keys = this.open.get(uuid);
    if (keys) for (const k of keys) this.policyState.repaired(k, true);
    this.open.delete(uuid);
    const d = this.deferred.get(uuid);
    if (d) {
      clearTimeout(d.timer);
      this.deferred.delete(uuid);
    }
  }

  private onDrift(r: StoredRecord, ops: Op[], found: Trigger): void {
    const uuid = r.domainUuid;
    const desc = describeDrift(ops, r);
    const ovsDevs = desc.devs.filter((d) => this.isOvsPort(d));
    // OVS is still at work on a port of this domain (a check from another device's event, the periodic one):
    // repaired once the port has settled, not between two of OVS's passes.
    const busy = ovsDevs.find((d) => this.settler.wouldHold(d, found.at));
    if (busy) {
      this.settler.hold(busy, found, found.at);
      return;
    }
    // What OVS did to its port since shortly before the first event (or since) explains the drift.
    let trigger = found;
    for (const d of ovsDevs) {
      const why = this.settler.explain(d, found.at);
      if (why) trigger = { ...trigger, cause: better(trigger.cause, why.cause) };
    }
    const reason = `${desc.missing.length ? `missing ${desc.missing.join(",")}` : `extra ${desc.extra.join(",")}`} (${trigger.cause})`;
    const decisions: DriftDecision[] = desc.keys.map((k) =>
      this.policyState.drift(k, reason, { explained: this.explainedBy(k, trigger) }),
    );
    const open = this.open.get(uuid) ?? new Set<string>();
    const all = this.domainKeys.get(uuid) ?? new Set<string>();
    for (const k of desc.keys) {
      open.add(k);
      all.add(k);
    }
    this.open.set(uuid, open);
    this.domainKeys.set(uuid, all);
    this.lastDesc.set(uuid, desc);
    for (const d of decisions) if (d.newlyContested) this.logContested(d.key, r, trigger);
    const waits = decisions.filter(
      (d): d is Extract<DriftDecision, { action: "later" }> => d.action === "later",
    );
    if (waits.length === decisions.length && waits.length) {
      this.defer(uuid, Math.min(...waits.map((w) => w.at)), trigger);
      this.o.log.debug(
        `drift on ${r.domainName} (${desc.devs.join(",")}): repair deferred ${Math.min(...waits.map((w) => w.at)) - this.now()} ms: ${waits[0].reason}`,
      );
      return;
    }
    const d = this.deferred.get(uuid);
    if (d) {
      clearTimeout(d.timer);
      this.deferred.delete(uuid);
    }
    this.repair(r, desc, [...open], trigger);
  }

  private defer(uuid: string, at: number, trigger: Trigger): void {
    const had = this.deferred.get(uuid);
    if (had && had.at <= at) return;
    if (had) clearTimeout(had.timer);
    const timer = setTimeout(
      () => {
        this.deferred.delete(uuid);
        const r = this.refresh().records.get(uuid);
        const desc = this.lastDesc.get(uuid);
        // A contested domain at its back-off time: the re-apply is the check (the engine re-plans under
        // the lock and applies only what differs), which spares the fight a second kernel read per round.
        if (r && desc && this.contestedPace(uuid) !== undefined && !this.repairing.has(uuid)) {
          this.repair(r, desc, desc.keys, trigger, true);
        } else this.request(uuid, trigger);
      },
      Math.max(0, at - this.now()),
    );
    timer.unref?.();
    this.deferred.set(uuid, { at, timer, trigger });
  }

  private logContested(key: string, r: StoredRecord, trigger: Trigger): void {
    if (this.contestedLogged.has(key)) return;
    this.contestedLogged.add(key);
    const [dev, obj] = key.split("|");
    const c = this.policyState.contested().find((x) => x.key === key);
    this.o.log.error(
      `drift contested: dev=${dev} object=${obj} guest=${r.domainName}: changed back again after repairs ` +
        `(cause=${trigger.cause}); another tool keeps changing it. Repairs now back off` +
        `${c ? ` (next in ${c.backoffMs} ms)` : ""}, doubling up to a minute; find who changes it`,
    );
  }

  private updateContested(): void {
    const now = this.policyState.contested();
    const keys = new Set(now.map((c) => c.key));
    for (const k of [...this.contestedLogged]) {
      if (!keys.has(k)) {
        this.contestedLogged.delete(k);
        this.o.log.info(`drift: ${k.replace("|", " ")} is no longer contested`);
      }
    }
    this.o.metrics?.setContested(now.length);
    this.persistContested(now);
  }

  /** contested.json, rewritten when what it says changes (objects, counts, back-off), removed when empty. */
  private persistContested(now: ContestedObject[]): void {
    if (this.o.persistContested === false) return;
    // A repair that finishes after close() finds nobody to keep the file up to date: it stays removed.
    const entries = this.closed
      ? []
      : now.map((c) => this.contestedEntry(c)).sort((a, b) => a.since.localeCompare(b.since));
    const text = entries.length ? JSON.stringify(entries) : "";
    if (text === this.contestedWritten) return;
    try {
      writeContestedFile(this.o.runDir, entries);
      this.contestedWritten = text;
      this.contestedWriteError = "";
    } catch (e) {
      const msg = (e as Error).message;
      if (msg === this.contestedWriteError) return;
      this.contestedWriteError = msg;
      this.o.log.warning(
        `drift: cannot write ${contestedPath(this.o.runDir)}: ${msg}; virtqos status and /v1/health will not show contested objects`,
      );
    }
  }

  private contestedEntry(c: ContestedObject): ContestedEntry {
    const bar = c.key.indexOf("|");
    const iso = (ms: number) => new Date(ms).toISOString();
    const domains: ContestedEntry["domains"] = [];
    for (const [uuid, keys] of this.domainKeys) {
      if (keys.has(c.key)) domains.push({ name: this.index.records.get(uuid)?.domainName ?? uuid, uuid });
    }
    return {
      dev: c.key.slice(0, bar),
      object: c.key.slice(bar + 1),
      domains,
      since: iso(c.since),
      lastDriftAt: iso(c.lastDriftAt),
      drifts: c.drifts,
      backoffMs: c.backoffMs,
      ...(c.nextRepairAt !== undefined ? { nextRepairAt: iso(c.nextRepairAt) } : {}),
      // DriftPolicy's calm period (its default unless the options set one).
      until: iso(c.lastDriftAt + (this.o.drift?.calmMs ?? 300_000)),
      reasons: c.reasons,
    };
  }

  // ---------------------------------------------------------------------------------- repair

  /**
   * Re-apply the domain through the service. `byEcho`: no check came first (a contested domain at its
   * back-off time); whether the re-apply changed anything is what the monitors saw of it.
   */
  private repair(
    r: StoredRecord,
    desc: DriftDescription,
    keys: string[],
    trigger: Trigger,
    byEcho = false,
  ): void {
    const uuid = r.domainUuid;
    const start = this.now();
    if (byEcho) this.echo.set(uuid, 0);
    const run = (async () => {
      let ok = true;
      let error: string | undefined;
      try {
        await this.o.service.reapply(uuid, "agent");
        // The service reports a failed apply in its health (it was rolled back), not by throwing.
        const last = this.o.service.health?.().lastReconcile;
        if (last && !last.ok && (last.domain === r.domainName || last.domain === uuid)) {
          ok = false;
          error = "the re-apply failed and was rolled back (see the log above)";
        }
      } catch (e) {
        ok = false;
        error = (e as Error).message;
      }
      if (byEcho) {
        // The monitors print a change a moment after the batch that made it has returned.
        if (ok && !this.echo.get(uuid)) await new Promise((res) => setTimeout(res, OWN_ECHO_MS));
        const changed = (this.echo.get(uuid) ?? 0) > 0;
        this.echo.delete(uuid);
        if (ok && !changed) {
          this.o.log.debug(`drift: ${r.domainName} needed no repair at its back-off time`);
          return;
        }
        const reason = `missing ${desc.missing.join(",") || "none"} (${trigger.cause})`;
        for (const k of keys) this.policyState.drift(k, reason, { explained: this.explainedBy(k, trigger) });
      }
      this.lastRepair.set(uuid, { start, end: this.now() });
      const open = this.open.get(uuid);
      for (const k of keys) {
        open?.delete(k);
        const d = this.policyState.repaired(k, ok);
        if (d?.action === "later") this.defer(uuid, d.at, trigger);
      }
      const doneAt = this.now();
      const report: RepairReport = {
        domainUuid: uuid,
        domainName: r.domainName,
        devs: desc.devs,
        missing: desc.missing,
        extra: desc.extra,
        cause: trigger.cause,
        ok,
        firstAt: trigger.at,
        doneAt,
        ...(error ? { error } : {}),
      };
      const still = this.refresh().records.has(uuid);
      const parts = `dev=${desc.devs.join(",")} missing=${desc.missing.join(",") || "none"}${desc.extra.length ? ` extra=${desc.extra.join(",")}` : ""}`;
      if (!ok) {
        this.stats.failedRepairs++;
        this.o.log.error(
          `drift repair failed: ${parts} cause=${trigger.cause} guest=${r.domainName}: ${error}`,
        );
      } else if (!still) {
        // libvirt says the guest no longer runs: the re-apply removed its state instead.
        this.o.log.info(`drift: ${r.domainName} no longer runs; its shaping and records were removed`);
      } else {
        this.stats.repairs++;
        this.o.log.warning(`drift repaired: ${parts} cause=${trigger.cause} guest=${r.domainName}`);
        this.o.metrics?.driftRepaired(trigger.cause);
      }
      this.reports.push(report);
      if (this.reports.length > 100) this.reports.shift();
      this.updateContested();
      try {
        this.o.onRepair?.(report);
      } catch {
        // A listener's failure is not the repair's.
      }
    })().finally(() => {
      this.repairing.delete(uuid);
      const next = this.afterRepair.get(uuid);
      this.afterRepair.delete(uuid);
      // What happened during the repair is checked now, unless it can only be the repair's own echo.
      if (next?.loss) this.request(uuid, next);
    });
    this.repairing.set(uuid, run);
  }

  // ---------------------------------------------------------------------------------- pruning

  private tapMissing(uuid: string, mac: string, dev: string, at: number): void {
    if (this.o.only && !this.o.only(uuid)) return;
    const key = `${uuid}/${mac}`;
    if (this.missing.has(key)) return;
    const m: Missing = { uuid, mac, dev, since: Math.min(at, this.now()) };
    // Checked again once the grace has passed, whatever the periodic check's interval.
    m.timer = setTimeout(
      () => this.request(uuid, { cause: "tap gone", at: this.now(), loss: true }),
      this.grace + 50,
    );
    m.timer.unref?.();
    this.missing.set(key, m);
    this.o.log.info(
      `tap ${dev} of ${this.index.records.get(uuid)?.domainName ?? uuid} is gone; its records are pruned if it stays gone for ${Math.round(this.grace / 1000)} s`,
    );
  }

  /**
   * Per check: taps still missing move toward pruning, taps back are not missing any more. True when the
   * domain is being pruned.
   */
  private trackMissing(r: StoredRecord, absent: Set<string>, now: number): boolean {
    const due: GoneInterface[] = [];
    for (const i of r.interfaces) {
      if (!i.dev) continue;
      const key = `${r.domainUuid}/${i.mac}`;
      const m = this.missing.get(key);
      if (!absent.has(key)) {
        if (m) {
          if (m.timer) clearTimeout(m.timer);
          this.missing.delete(key);
        }
        continue;
      }
      if (!m) this.tapMissing(r.domainUuid, i.mac, i.dev, now);
      else if (now - m.since >= this.grace) {
        due.push({ domainUuid: r.domainUuid, domainName: r.domainName, mac: i.mac, dev: i.dev });
      }
    }
    if (!due.length) return false;
    this.prune(r, due);
    return true;
  }

  private prune(r: StoredRecord, due: GoneInterface[]): void {
    const uuid = r.domainUuid;
    const macs = new Set(due.map((g) => g.mac));
    const all = r.interfaces.every((i) => !i.dev || macs.has(i.mac));
    const run = (async () => {
      try {
        if (all) {
          const policy = await this.o.policy();
          const results = await this.o.service.queue.run(uuid, () =>
            pruneGone(
              {
                runner: this.o.runner,
                runDir: this.o.runDir,
                stateDir: this.o.stateDir,
                log: this.o.log,
                caps: this.caps,
                who: { uid: process.getuid?.() ?? -1, user: "agent", door: "agent" },
              },
              policy,
              {
                uuids: [uuid],
                only: (g) => macs.has(g.mac),
                lockTimeoutMs: this.o.lockTimeoutMs ?? 10_000,
              },
            ),
          );
          if (results.some((p) => p.ok)) {
            this.stats.prunes++;
            this.forgetDomain(uuid);
          }
        } else {
          // Some taps remain: libvirt's view of the domain says what to keep; the engine drops absent taps.
          await this.o.service.reapply(uuid, "agent");
          this.stats.prunes++;
          this.o.log.info(
            `pruned ${r.domainName} (${uuid}): tap gone (${due.map((g) => g.dev).join(", ")}); re-applied the rest`,
          );
        }
      } catch (e) {
        this.o.log.error(`pruning ${r.domainName} (${uuid}) failed: ${(e as Error).message}`);
      }
      for (const g of due) {
        const m = this.missing.get(`${uuid}/${g.mac}`);
        if (m?.timer) clearTimeout(m.timer);
        this.missing.delete(`${uuid}/${g.mac}`);
        for (const k of [...(this.open.get(uuid) ?? [])])
          if (k.startsWith(`${g.dev}|`)) this.policyState.forget(k);
      }
    })().finally(() => {
      this.repairing.delete(uuid);
      const next = this.afterRepair.get(uuid);
      this.afterRepair.delete(uuid);
      if (next) this.request(uuid, next);
    });
    this.repairing.set(uuid, run);
  }
}

// ------------------------------------------------------------------------------------ contested.json

/**
 * Write `<runDir>/contested.json` (src/app/status.ts has the format and the reader): a temporary file renamed
 * into place, so a reader sees the old file or the new one, never half of one. No objects: the file is removed.
 */
export function writeContestedFile(runDir: string, objects: ContestedEntry[]): void {
  const file = contestedPath(runDir);
  if (!objects.length) {
    rmSync(file, { force: true });
    return;
  }
  const doc: ContestedFile = {
    version: CONTESTED_VERSION,
    pid: process.pid,
    writtenAt: new Date().toISOString(),
    objects,
  };
  const tmp = `${file}.${process.pid}.tmp`;
  try {
    mkdirSync(runDir, { recursive: true });
    writeFileSync(tmp, `${JSON.stringify(doc, null, 2)}\n`, { mode: 0o644 });
    renameSync(tmp, file);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

// ------------------------------------------------------------------------------------ the watches

export interface DriftWatchOptions {
  repairer: Repairer;
  log: Logger;
  /** The network namespace the kernel watch follows (`ip netns`); the host's when undefined. */
  netns?: string;
  /**
   * The OVSDB to follow: a remote ("unix:/path"), false for none, undefined for the default socket when
   * Open vSwitch is installed (ovs-vsctl on PATH) and its socket exists.
   */
  ovsdb?: string | false;
  /** The full check's period; default 30 s, 0: none. */
  checkIntervalMs?: number;
  /** Also told about every kernel event and resync, before the repairer (the agent's kernel view). */
  kernelListener?: { onKernelEvent(e: KernelEvent): boolean | undefined; onResync(): void };
}

export interface DriftWatch {
  /** Both kernel monitors subscribed and the first full check done. */
  readonly ready: Promise<void>;
  readonly kernel: KernelWatch;
  readonly ovs?: OvsWatch;
  close(): Promise<void>;
}

function onPath(cmd: string): boolean {
  for (const dir of (process.env.PATH ?? "").split(delimiter)) {
    if (!dir) continue;
    try {
      accessSync(join(dir, cmd), constants.X_OK);
      return true;
    } catch {
      // Not here.
    }
  }
  return false;
}

/** The OVSDB remote to watch, if Open vSwitch is there; undefined otherwise. */
export function ovsdbToWatch(ovsdb: string | false | undefined): string | undefined {
  if (ovsdb === false) return undefined;
  const remote = ovsdb ?? DEFAULT_OVSDB;
  if (!onPath("ovsdb-client")) return undefined;
  if (remote.startsWith("unix:") && !existsSync(remote.slice(5))) return undefined;
  if (ovsdb === undefined && !onPath("ovs-vsctl")) return undefined;
  return remote;
}

/**
 * The repairer's ears: the kernel watch (tc and link changes), the OVSDB watch when Open vSwitch is
 * installed, and the periodic full check that catches whatever both missed. Neither watch failing stops
 * anything: they restart with back-off, and the periodic check goes on.
 */
export function startDriftWatch(o: DriftWatchOptions): DriftWatch {
  const { repairer, log } = o;
  let lastError = "";
  const kernel = watchKernel({
    netns: o.netns,
    onEvent: (e) => {
      // false: the listener knows the event for the echo of its own change (a live change's class change).
      if (o.kernelListener?.onKernelEvent(e) === false) return;
      repairer.onKernelEvent(e);
    },
    onError: (err) => {
      // A monitor that cannot start says so at every retry: once per distinct message is enough.
      if (err.message === lastError) return;
      lastError = err.message;
      log.warning(`drift watch: ${err.message}`);
    },
    onResync: (monitor, reason) => {
      o.kernelListener?.onResync();
      log.info(`drift watch: ${monitor} events may have been missed (${reason}); checking every domain`);
      void repairer.fullCheck("monitor resync").catch(() => {});
    },
  });
  let ovs: OvsWatch | undefined;
  const remote = ovsdbToWatch(o.ovsdb);
  if (remote) {
    try {
      ovs = watchOvsdb({
        db: remote,
        onEvent: (e) => repairer.onOvsEvent(e),
        onState: (up, err) => {
          repairer.onOvsState(up);
          if (up) log.info(`drift watch: following OVSDB ${remote}`);
          else log.warning(`drift watch: OVSDB ${remote} not reachable (${err ?? "?"}); retrying`);
        },
        onError: (err) => log.debug(`drift watch: ${err.message}`),
      });
      const w = ovs;
      repairer.setOvsPorts(() => w.ports().map((p) => p.name));
    } catch (e) {
      log.warning(`drift watch: not following OVSDB: ${(e as Error).message}`);
    }
  }
  const every = o.checkIntervalMs ?? 30_000;
  let timer: NodeJS.Timeout | undefined;
  let closed = false;
  if (every > 0) {
    timer = setInterval(() => {
      void repairer.fullCheck().catch((e: Error) => log.warning(`drift check: ${e.message}`));
    }, every);
    timer.unref();
  }
  // Drift that happened while nobody watched (the agent was down) is found once the monitors listen.
  const ready = kernel.ready.then(() => (closed ? undefined : repairer.fullCheck()));
  ready.catch(() => {});
  return {
    ready,
    kernel,
    ovs,
    async close() {
      closed = true;
      if (timer) clearInterval(timer);
      repairer.close();
      await Promise.all([kernel.close(), ovs?.close()]);
    },
  };
}
