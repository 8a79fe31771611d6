import type { Runner } from "../adapters/exec.js";
import {
  type LiveFile,
  type LiveSlot,
  liveLimitsOf,
  readLiveFile,
  writeLiveFile,
} from "../adapters/live-store.js";
import type { Logger } from "../adapters/log.js";
import { cachedCapabilities } from "../adapters/probe.js";
import { loadRecords, loadRecordsOf } from "../adapters/state.js";
import { readOpenTx } from "../adapters/tx-journal.js";
import { type EngineContext, type ReconcileResult, reconcile } from "../app/engine.js";
import { collectStatus } from "../app/status.js";
import { defaultStateDir } from "../config.js";
import { parseDomainXml } from "../core/domain-xml.js";
import { type ErrorCode, VirtqosError } from "../core/errors.js";
import { findInterface, liveLimitFrom, renderQosMetadata, toLibvirtRate } from "../core/live.js";
import type {
  DirectionLimit,
  DomainInfo,
  GuestInterface,
  LibvirtRate,
  LiveLimit,
  MetadataInterface,
} from "../core/model.js";
import type { Policy } from "../core/policy.js";
import type { Capabilities } from "../core/recipe.js";
import { resolveDomain } from "../core/resolve.js";
import type { KernelView } from "./kernel-view.js";
import { WorkQueue } from "./queue.js";
import type {
  AgentService,
  AuditDoor,
  AuditEntry,
  AuditQuery,
  ContestedObjectView,
  DirectionView,
  DomainSummary,
  Health,
  InterfaceView,
  LimitView,
  LiveChange,
  Persist,
  Principal,
} from "./types.js";

// The agent's service: what every door (REST, Nova action, `virtqos set` with or without the agent) asks
// for, on top of the one engine. A live change is: validate, check admission with a dry run, write libvirt's
// metadata (persist config/both), write the live store, reconcile the domain (class/qdisc `replace` in place:
// no unshaped moment), audit. Anything failing after the store was written puts the store and the metadata
// back; the engine has already put the kernel back.

/** What the service needs of libvirt (src/adapters/libvirt.ts's Virsh; the namespace lab passes its own). */
export interface DomainSource {
  list(): Promise<DomainSummaryRef[]>;
  lookup(nameOrUuid: string): Promise<DomainSummaryRef>;
  dumpXml(nameOrUuid: string, opts?: { inactive?: boolean }): Promise<string>;
  setMetadata(
    nameOrUuid: string,
    xml: string | undefined,
    opts: { live: boolean; config: boolean },
  ): Promise<void>;
}

export interface DomainSummaryRef {
  name: string;
  uuid: string;
  state: string;
}

export interface AuditSink {
  record(entry: AuditEntry): number;
  query(q: AuditQuery): AuditEntry[];
}

export interface ServiceDeps {
  source: DomainSource;
  runner: Runner;
  runDir: string;
  stateDir?: string;
  log: Logger;
  /** The policy in force (the agent reloads it when the file changes). */
  policy: () => Promise<Policy>;
  caps?: Capabilities;
  audit?: AuditSink;
  queue?: WorkQueue;
  libvirtUri?: string;
  /** The libvirt connection's state, for health (the agent's event watch sets it). */
  libvirtState?: () => Health["libvirt"];
  /** The agent's metrics (src/agent/metrics.ts): told about every change and reconcile. */
  metrics?: MetricsSink;
  /**
   * Long-lived tc/ip processes and a qdisc cache the kernel watch keeps honest (src/agent/kernel-view.ts):
   * live changes read and change one domain's devices through them instead of listing the host.
   */
  kernelView?: KernelView;
  /** The drift repair's contested objects (the agent: as the repairer last wrote them), for health. */
  contested?: () => ContestedObjectView[];
}

/** What the service tells the metrics (src/agent/metrics.ts's Metrics). */
export interface MetricsSink {
  liveChange(door: AuditDoor, result: AuditEntry["result"]): void;
  observeReconcile(seconds: number): void;
  render(): Promise<{ contentType: string; body: string }>;
}

/** Interface types with a host netdev for tc (the rest: vhostuser, hostdev, user... cannot be shaped). */
const SHAPEABLE = new Set(["bridge", "network", "ethernet", "direct"]);

const DIRECTIONS = ["inbound", "outbound"] as const;

function fail(code: ErrorCode, message: string): never {
  throw new VirtqosError(code, message);
}

function view(l: DirectionLimit | undefined): LimitView | undefined {
  if (!l) return undefined;
  const v: LimitView = {
    rateBitsPerSec: l.rateBitsPerSec,
    ceilBitsPerSec: l.ceilBitsPerSec,
    source: l.source,
  };
  if (l.burstBytes !== undefined) v.burstBytes = l.burstBytes;
  if (l.floorBitsPerSec !== undefined) v.floorBitsPerSec = l.floorBitsPerSec;
  return v;
}

const liveView = (l: LiveLimit | null | undefined): LimitView | null | undefined =>
  l === null ? null : l ? { ...l, source: "live" } : undefined;

export class LocalService implements AgentService {
  readonly queue: WorkQueue;
  private readonly started = Date.now();
  private last?: Health["lastReconcile"];

  readonly metrics?: () => Promise<{ contentType: string; body: string }>;

  constructor(private readonly deps: ServiceDeps) {
    this.queue = deps.queue ?? new WorkQueue();
    const m = deps.metrics;
    if (m) this.metrics = () => m.render();
  }

  /** reconcile(), timed for the metrics. */
  private async timed(ctx: EngineContext, req: Parameters<typeof reconcile>[1]): Promise<ReconcileResult> {
    const t0 = performance.now();
    try {
      return await reconcile(ctx, req);
    } finally {
      if (!req.dryRun) this.deps.metrics?.observeReconcile((performance.now() - t0) / 1000);
    }
  }

  /**
   * A live change's reconcile: through the kernel view when the agent has one. A plan made on what the view
   * read can be a few ms behind the kernel; when the kernel refuses it (and the engine rolled it back), the
   * change is made again on a full read.
   */
  private async applyScoped(
    ctx: EngineContext,
    req: Parameters<typeof reconcile>[1],
  ): Promise<ReconcileResult> {
    const view = this.deps.kernelView;
    if (!view) return this.timed(ctx, req);
    const fast = await this.timed({ ...ctx, observer: view, runner: view.runner(ctx.runner) }, req);
    if (!fast.failure) return fast;
    this.deps.log.debug(
      `change through the kernel view failed (${fast.failure.message}); again on a full read`,
    );
    return this.timed(ctx, req);
  }

  private engine(door: string, who: string): EngineContext {
    const d = this.deps;
    return {
      runner: d.runner,
      runDir: d.runDir,
      stateDir: d.stateDir,
      log: d.log,
      caps: d.caps,
      who: { uid: process.getuid?.() ?? -1, user: who, door },
    };
  }

  async listDomains(): Promise<DomainSummary[]> {
    const refs = await this.deps.source.list();
    const out: DomainSummary[] = [];
    for (const r of refs) {
      let interfaces = 0;
      try {
        interfaces = parseDomainXml(await this.deps.source.dumpXml(r.uuid)).interfaces.length;
      } catch {
        // Undefined between list and dumpxml: listed with no interfaces rather than failing the whole list.
      }
      out.push({ name: r.name, uuid: r.uuid, state: r.state, interfaces });
    }
    return out;
  }

  async findDomain(domain: string): Promise<DomainSummary> {
    const r = await this.deps.source.lookup(domain);
    return { name: r.name, uuid: r.uuid, state: r.state, interfaces: 0 };
  }

  private async domainInfo(domain: string): Promise<{ ref: DomainSummaryRef; info: DomainInfo }> {
    const ref = await this.deps.source.lookup(domain);
    const info = parseDomainXml(await this.deps.source.dumpXml(ref.uuid));
    return { ref, info };
  }

  async getInterfaces(domain: string): Promise<InterfaceView[]> {
    const { ref, info } = await this.domainInfo(domain);
    return this.views(ref, info, undefined, true);
  }

  /**
   * `status`: also re-check the kernel against the records (`matches`) and read the taps' counters: a full
   * observe and an `ip` process, so for GET only, not on a live change's path.
   */
  private async views(
    ref: DomainSummaryRef,
    info: DomainInfo,
    only?: GuestInterface,
    status = false,
  ): Promise<InterfaceView[]> {
    const policy = await this.deps.policy();
    // Configured = what the domain would get without live limits (live: [] keeps the engine from adding them).
    const configured = resolveDomain({ ...info, live: [] }, policy).interfaces;
    let live: LiveFile | undefined;
    try {
      live = readLiveFile(this.deps.stateDir, ref.uuid);
    } catch (e) {
      this.deps.log.warning((e as Error).message);
    }
    const inForce = liveLimitsOf(live);
    const [record] = loadRecordsOf(this.deps.runDir, [ref.uuid]);
    const matches = new Map<string, boolean>();
    if (status && record && ref.state === "running") {
      try {
        const caps = this.deps.caps ?? (await cachedCapabilities(this.deps.runner, this.deps.runDir));
        const rows = await collectStatus(this.deps.runner, this.deps.runDir, caps, policy, [ref.uuid]);
        for (const row of rows.filter((r) => r.domainUuid === ref.uuid)) {
          matches.set(row.mac, (matches.get(row.mac) ?? true) && row.matches);
        }
      } catch (e) {
        this.deps.log.warning(`status of ${ref.name}: ${(e as Error).message}`);
      }
    }
    const counters = status
      ? await this.counters(info.interfaces.flatMap((i) => (i.targetDev ? [i.targetDev] : [])))
      : new Map<string, { txBytes: number; rxBytes: number }>();
    return info.interfaces
      .filter((i) => !only || i === only)
      .map((i): InterfaceView => {
        const mac = i.mac ?? `#${i.index}`;
        const conf = configured.find((c) => c.mac === mac);
        const rec = record?.interfaces.find((r) => r.mac === mac);
        const l = inForce.find((x) => x.mac === mac);
        const dir = (d: (typeof DIRECTIONS)[number]): DirectionView => {
          const v: DirectionView = {};
          const c = view(conf?.[d]);
          if (c) v.configured = c;
          const lv = liveView(l?.[d]);
          if (lv !== undefined) v.live = lv;
          const f = ref.state === "running" ? view(rec?.[d]) : undefined;
          if (f) v.inForce = f;
          else if (ref.state === "running" && rec?.group?.[d]) {
            const g = rec.group[d];
            v.inForce = {
              rateBitsPerSec: g.ceilBitsPerSec,
              ceilBitsPerSec: g.ceilBitsPerSec,
              floorBitsPerSec: g.floorBitsPerSec,
              source: "policy",
            };
          }
          return v;
        };
        const out: InterfaceView = {
          index: i.index + 1,
          type: i.type,
          inbound: dir("inbound"),
          outbound: dir("outbound"),
        };
        if (i.mac) out.mac = i.mac;
        if (i.targetDev) out.dev = i.targetDev;
        if (i.alias) out.alias = i.alias;
        if (matches.has(mac)) out.matches = matches.get(mac);
        const cnt = i.targetDev ? counters.get(i.targetDev) : undefined;
        if (cnt) out.counters = cnt;
        return out;
      });
  }

  /** Host-side byte counters of the taps, in one `ip -s` call (the runner may act in a namespace). */
  private async counters(devs: string[]): Promise<Map<string, { txBytes: number; rxBytes: number }>> {
    const out = new Map<string, { txBytes: number; rxBytes: number }>();
    if (!devs.length) return out;
    try {
      const r = await this.deps.runner.run("ip", ["-s", "-j", "link", "show"]);
      if (r.code !== 0) return out;
      const links = JSON.parse(r.stdout) as {
        ifname: string;
        stats64?: { rx?: { bytes?: number }; tx?: { bytes?: number } };
      }[];
      for (const l of links) {
        if (devs.includes(l.ifname))
          out.set(l.ifname, { txBytes: l.stats64?.tx?.bytes ?? 0, rxBytes: l.stats64?.rx?.bytes ?? 0 });
      }
    } catch {
      // Counters are informative; a failure to read them does not fail the request.
    }
    return out;
  }

  async setInterface(
    domain: string,
    iface: string,
    change: LiveChange,
    who: Principal,
  ): Promise<InterfaceView> {
    const limits: Partial<Record<(typeof DIRECTIONS)[number], LiveLimit | null>> = {};
    for (const d of DIRECTIONS) {
      const r = change[d];
      if (r !== undefined) limits[d] = liveLimitFrom(r, `/${d}`);
    }
    if (!("inbound" in limits) && !("outbound" in limits)) {
      throw new VirtqosError("REQUEST_INVALID", "give inbound, outbound or both");
    }
    const door = change.door ?? doorOf(who);
    return this.queue.run(domain, () =>
      this.change(domain, iface, change.persist, who, door, (slot) => {
        for (const d of DIRECTIONS) if (d in limits) slot[d] = limits[d];
      }),
    );
  }

  clearInterface(domain: string, iface: string, persist: Persist, who: Principal): Promise<InterfaceView> {
    return this.queue.run(domain, () =>
      this.change(
        domain,
        iface,
        persist,
        who,
        doorOf(who),
        (slot) => {
          delete slot.inbound;
          delete slot.outbound;
        },
        true,
      ),
    );
  }

  /**
   * The one path of every live change: `edit` changes a slot (live and/or config, per `persist`) in place.
   */
  private async change(
    domain: string,
    ifaceRef: string,
    persist: Persist,
    who: Principal,
    door: AuditDoor,
    edit: (slot: LiveSlot) => void,
    clearing = false,
  ): Promise<InterfaceView> {
    const at = new Date().toISOString();
    const audit: AuditEntry = { at, who: who.name, door, result: "failed" };
    try {
      const { ref, info } = await this.domainInfo(domain);
      audit.domainUuid = ref.uuid;
      audit.domainName = ref.name;
      const running = ref.state === "running";
      if (persist !== "config" && !running) {
        fail("DOMAIN_NOT_RUNNING", `domain ${ref.name} is ${ref.state}: a live change needs it running`);
      }
      const iface = findInterface(info, ifaceRef);
      if (!iface) fail("INTERFACE_NOT_FOUND", `domain ${ref.name} has no interface "${ifaceRef}"`);
      const mac = iface.mac;
      if (!mac) fail("INTERFACE_NOT_FOUND", `interface ${ifaceRef} of ${ref.name} has no MAC address`);
      audit.iface = mac;
      if (!SHAPEABLE.has(iface.type)) {
        fail("NOT_SHAPEABLE", `interface ${ifaceRef} of ${ref.name} is of type "${iface.type}"`);
      }
      const [before] = await this.views(ref, info, iface);
      audit.before = { inbound: before.inbound, outbound: before.outbound };

      const old = readLiveFileOrNew(this.deps.stateDir, ref, this.deps.log);
      const next: LiveFile = structuredClone(old);
      next.domainName = ref.name;
      next.interfaces[mac] = { ...next.interfaces[mac], setAt: at, setBy: who.name };
      const entry = next.interfaces[mac];
      if (persist !== "config") {
        entry.live = entry.live ?? {};
        edit(entry.live);
      }
      if (persist !== "live") {
        entry.config = entry.config ?? {};
        edit(entry.config);
      }
      // A change for the next start only must not change the running guest: pin what is in force now as its
      // live limit, where no live limit is set yet (as `virsh domiftune --config` leaves the running domain).
      if (persist === "config" && running) {
        for (const d of DIRECTIONS) {
          if (entry.live && d in entry.live) continue;
          const f = before[d].inForce;
          entry.live = entry.live ?? {};
          entry.live[d] = f
            ? {
                rateBitsPerSec: f.rateBitsPerSec,
                ceilBitsPerSec: f.ceilBitsPerSec,
                ...(f.burstBytes !== undefined ? { burstBytes: f.burstBytes } : {}),
                ...(f.floorBitsPerSec !== undefined ? { floorBitsPerSec: f.floorBitsPerSec } : {}),
              }
            : null;
        }
      }

      const policy = await this.deps.policy();
      const withLive: DomainInfo = { ...info, live: liveLimitsOf(next) };
      const ctx = this.engine(door, who.name);
      const member = resolveDomain(withLive, policy).interfaces.find((i) => i.mac === mac)?.group;
      if (running && member) {
        // Admission first: a floor that does not fit its group refuses the change, nothing is touched. Only
        // group members have floors to admit, so only they pay for the dry run's kernel read.
        const dry = await reconcile(ctx, { domains: [withLive], policy, scope: [ref.uuid], dryRun: true });
        const refusal = dry.plan.problems.find((p) => p.iface === `${ref.uuid}/${mac}`);
        if (refusal) throw new VirtqosError(refusal.code, refusal.message);
      }
      let metadataBefore: string | undefined;
      // A clear touches <metadata> only where virtqos wrote it (a config slot): limits written there by hand
      // are the configuration, which a clear gives control back to.
      const writesMetadata = persist !== "live" && (!clearing || old.interfaces[mac]?.config !== undefined);
      if (writesMetadata) {
        metadataBefore = await this.writeMetadata(ref, mac, next, running);
      }
      writeLiveFile(this.deps.stateDir, structuredClone(next));
      audit.txId = readOpenTx(this.deps.stateDir ?? defaultStateDir())?.id;
      let result: ReconcileResult | undefined;
      if (running) {
        try {
          result = await this.applyScoped(ctx, { domains: [withLive], policy, scope: [ref.uuid] });
        } catch (e) {
          await this.undo(ref, old, metadataBefore, writesMetadata, running);
          throw e;
        }
        this.last = { at: new Date().toISOString(), domain: ref.name, ok: !result.failure };
        if (result.failure) {
          await this.undo(ref, old, metadataBefore, writesMetadata, running);
          throw new VirtqosError(result.failure.code, result.failure.message);
        }
      }
      const [after] = await this.views(ref, { ...info }, iface);
      audit.after = { inbound: after.inbound, outbound: after.outbound };
      audit.result = "ok";
      return after;
    } catch (e) {
      const code = e instanceof VirtqosError ? e.code : "INTERNAL";
      audit.result = code === "INTERNAL" || code === "TC_BATCH_FAILED" ? "failed" : "refused";
      audit.code = code;
      audit.message = (e as Error).message;
      throw e;
    } finally {
      this.deps.audit?.record(audit);
      this.deps.metrics?.liveChange(door, audit.result);
    }
  }

  /** Put the store and the metadata back after a change that did not make it into the kernel. */
  private async undo(
    ref: DomainSummaryRef,
    old: LiveFile,
    metadataBefore: string | undefined,
    wroteMetadata: boolean,
    running: boolean,
  ): Promise<void> {
    writeLiveFile(this.deps.stateDir, structuredClone(old));
    if (!wroteMetadata) return;
    try {
      await this.deps.source.setMetadata(ref.uuid, metadataBefore, { live: running, config: true });
    } catch (e) {
      this.deps.log.error(`could not put back the <metadata> of ${ref.name}: ${(e as Error).message}`);
    }
  }

  /**
   * virtqos's <metadata> of the domain with this interface's config slot written in, live (when running) and
   * in the persistent definition, so that libvirt carries it through a restart and a migration. Returns the
   * element as it was before (undefined: none), to put back on failure.
   */
  private async writeMetadata(
    ref: DomainSummaryRef,
    mac: string,
    next: LiveFile,
    running: boolean,
  ): Promise<string | undefined> {
    const inactive = parseDomainXml(await this.deps.source.dumpXml(ref.uuid, { inactive: true }));
    const entries: MetadataInterface[] = inactive.metadata.map((m) => ({ ...m }));
    let entry = entries.find((m) => m.mac === mac);
    if (!entry) {
      entry = { mac };
      entries.push(entry);
    }
    const slot = next.interfaces[mac]?.config ?? {};
    for (const d of DIRECTIONS) {
      if (!(d in slot)) {
        delete entry[d];
        continue;
      }
      const r = toLibvirtRate(slot[d]);
      const rate: LibvirtRate = { average: r.average };
      if (r.peak) rate.peak = r.peak;
      if (r.burst) rate.burst = r.burst;
      if (r.floor) rate.floor = r.floor;
      if (r.average) entry[d] = rate;
      else delete entry[d];
    }
    const keep = entries.filter((m) => m.inbound || m.outbound || m.group);
    const before =
      inactive.metadata.length || inactive.metadataGroup
        ? renderQosMetadata(inactive.metadata, inactive.metadataGroup)
        : undefined;
    const xml =
      keep.length || inactive.metadataGroup ? renderQosMetadata(keep, inactive.metadataGroup) : undefined;
    await this.deps.source.setMetadata(ref.uuid, xml, { live: running, config: true });
    return before;
  }

  /** Re-apply a domain as libvirt has it now (an event, a drift): coalesced per domain in the queue. */
  reapply(domain: string, door: AuditDoor = "agent"): Promise<void> {
    return this.queue.reapply(domain, async () => {
      // One libvirt call: the live XML says whether the domain runs (libvirt gives a running domain an `id`),
      // and every virsh process costs 50-300 ms on a busy host, which an event's "within 1 s" cannot spare.
      let xml: string | undefined;
      try {
        xml = await this.deps.source.dumpXml(domain);
      } catch (e) {
        if (!(e instanceof VirtqosError && e.code === "DOMAIN_NOT_FOUND")) throw e;
      }
      const info = xml === undefined ? undefined : parseDomainXml(xml);
      const running = xml !== undefined && /<domain\b[^>]*\bid=['"]\d+['"]/.test(xml);
      const record = loadRecords(this.deps.runDir).find((r) =>
        info ? r.domainUuid === info.uuid : r.domainName === domain || r.domainUuid === domain,
      );
      if (!running && !record) return;
      const uuid = info?.uuid ?? record?.domainUuid ?? domain;
      const policy = await this.deps.policy();
      const ctx = this.engine(door, "agent");
      // A drift repair or an event's re-apply reads the kernel itself: against another tool that keeps changing
      // the device (the contested case), a plan on the view's cache fails more often than one on a full read,
      // and each failure costs a rollback and a second attempt inside the fighter's window.
      const r = await this.timed(ctx, {
        domains: running && info ? [info] : [],
        policy,
        scope: [uuid],
      });
      this.last = { at: new Date().toISOString(), domain: info?.name ?? domain, ok: !r.failure };
    });
  }

  audit(q: AuditQuery): AuditEntry[] {
    return this.deps.audit?.query(q) ?? [];
  }

  health(): Health {
    const h: Health = {
      libvirt: this.deps.libvirtState?.() ?? { connected: true, uri: this.deps.libvirtUri ?? "" },
      queueDepth: this.queue.depth,
      uptimeSeconds: Math.round((Date.now() - this.started) / 1000),
    };
    if (this.last) h.lastReconcile = this.last;
    if (this.deps.contested) h.contested = this.deps.contested();
    return h;
  }
}

function doorOf(who: Principal): AuditDoor {
  return who.via === "cli" ? "cli" : "api";
}

function readLiveFileOrNew(stateDir: string | undefined, ref: DomainSummaryRef, log: Logger): LiveFile {
  try {
    const f = readLiveFile(stateDir, ref.uuid);
    if (f) return f;
  } catch (e) {
    // A damaged file is replaced by this change; its content is logged so nothing is lost silently.
    log.warning(`${(e as Error).message}; replaced by this change`);
  }
  return { version: 1, domainUuid: ref.uuid, domainName: ref.name, interfaces: {} };
}
