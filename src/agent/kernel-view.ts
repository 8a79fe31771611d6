import { BatchSession } from "../adapters/batch-session.js";
import type { Runner } from "../adapters/exec.js";
import type { KernelEvent } from "../adapters/kernel-watch.js";
import { loadRecordsOf } from "../adapters/state.js";
import type { ScopedObserver } from "../app/engine.js";
import type { DesiredInterface } from "../core/model.js";
import { interfaceIfbName, parseIfbAlias } from "../core/names.js";
import type { DeviceQuery, ObservedDevice, ObservedLink, ObservedQdisc } from "../core/normalise.js";
import { linksFromJson, observeBatchLines, qdiscsFromJson, splitObserveOutput } from "../core/normalise.js";
import type { Observed } from "../core/plan.js";
import { HOOK_PARENT, ROOT_HANDLE } from "../core/tc/handles.js";

// The agent's fast read of one domain's devices, for live changes (request to kernel changed, p99 target
// 50 ms on a host of 1000 shaped taps). observe() lists every link and every qdisc of the host on each call
// (two processes, 80 ms each at 3000 links and 6000 qdiscs) because a hook or a CLI knows nothing in advance.
// The agent does:
//
//   links            `ip link show dev X` per device, in a long-lived `ip -batch` (BatchSession)
//   qdiscs           a cache per device, filled by one dump and dropped per device on every tc or link event
//                    the kernel watch reports (a qdisc dump walks every qdisc of the namespace, 14 ms here,
//                    whatever device is asked for); no cache until the watch listens
//   classes/filters  read every time, per device, in a long-lived `tc -d -j -batch` (0.3 ms each)
//   changes          the same `tc -batch` lines, through a long-lived `tc -batch` (viewRunner)
//
// The cache can be a few milliseconds behind the kernel (an event on its way). A plan made on a stale entry
// fails in the kernel (a class under a qdisc that is gone) and the service re-runs the change on the full
// read; a stale entry that does not fail is drift, which the watch reports and repairs. Group members and
// anything unusual (police filters whose JSON lacks the rate, names that cannot be batch words) take the full
// read: undefined from observeScoped().

/** The device a tc batch line is about (`... dev X ...`). */
const devOf = (line: string): string | undefined => / dev (\S+)/.exec(line)?.[1];

const DEV_NAME = /^[A-Za-z0-9_.:@+-]{1,15}$/;

/** How long after a change through the view the monitors may still report it. */
const OWN_ECHO_MS = 300;

/** A leaf TBF replace as render() writes it (src/core/tc/render.ts, renderLeaf). */
const TBF_REPLACE =
  /^qdisc replace dev (\S+) parent (\S+) handle (\S+) tbf rate (\d+)bit burst (\d+) limit (\d+)$/;

/** Up to this many devices missing from the cache are read one by one; more take one full dump. */
const PER_DEVICE_READS = 4;

export interface KernelViewOptions {
  /** Runs the full qdisc dump (a process of its own); acts in `netns` itself if it must. */
  runner: Runner;
  netns?: string;
  timeoutMs?: number;
}

export class KernelView implements ScopedObserver {
  private readonly detail: BatchSession;
  private readonly plain: BatchSession;
  private readonly ip: BatchSession;
  private readonly qdiscs = new Map<string, ObservedQdisc[]>();
  /** Kernel events seen so far, and the count at each device's last event: a read older than it is stale. */
  private events = 0;
  private readonly lastEvent = new Map<string, number>();
  /** Bumped on a resync (events lost): every read started before is stale. */
  private generation = 0;
  private caching = false;
  /** Devices changed through runner(), and until when (epoch ms) their events are that change's echo. */
  private readonly own = new Map<string, number>();
  /** Devices whose cached qdiscs were brought up to date from the view's own change (see patchOwn). */
  private readonly patched = new Set<string>();
  /** Devices a batch sent through runner() changes, until it returned (its echo can come first). */
  private readonly running = new Set<string>();
  /** Per device, within the echo window: majors of the qdiscs the view replaced ("7655") and their parents ("7651:1"). */
  private readonly ownHandles = new Map<string, Set<string>>();
  /** What observeScoped() did, for tests and the benchmark. */
  readonly stats = { scoped: 0, fallbacks: 0, qdiscHits: 0, qdiscReads: 0, dumps: 0 };

  private readonly inner: Runner;

  constructor(opts: KernelViewOptions) {
    this.inner = opts.runner;
    const s = { netns: opts.netns, timeoutMs: opts.timeoutMs };
    this.detail = new BatchSession("tc", { ...s, flags: ["-d", "-j"] });
    this.plain = new BatchSession("tc", { ...s, flags: ["-j"] });
    this.ip = new BatchSession("ip", s);
  }

  /** From here on the kernel watch reports every change: qdiscs read are kept until an event says otherwise. */
  enableCache(): void {
    this.caching = true;
  }

  /**
   * Told of every kernel event. Returns false for the echo of a change made through this view's runner (a
   * class or qdisc changed on a device it changed within OWN_ECHO_MS): the drift repairer need not check what
   * the agent itself just did. A deletion is never taken for an echo.
   */
  onKernelEvent(e: KernelEvent): boolean {
    // Stamped on arrival with the same clock as the window: the event's own `at` is the performance clock,
    // which drifts from Date.now() over days.
    const own = this.ownChange(e.dev, Date.now());
    // Part of the view's own change: a leaf it replaced by another kind (the old one goes), or the internal
    // FIFO of a TBF whose limit it changed (tc does not list it; a new one replaces it).
    const mine = this.ownHandles.get(e.dev);
    const childOfOwn =
      e.kind === "qdisc-deleted" &&
      e.parent !== undefined &&
      mine !== undefined &&
      (mine.has(e.parent) || mine.has(e.parent.split(":")[0]));
    const echo = own && (childOfOwn || (!e.kind.endsWith("-deleted") && !e.kind.startsWith("link-")));
    // Classes and filters are read anew every time: only a qdisc or a link makes a cached entry stale.
    if (!e.kind.startsWith("qdisc-") && !e.kind.startsWith("link-")) return !echo;
    // The echo of a leaf change whose new state the cache already holds (patchOwn).
    // While its batch still runs, the entry is left for patchOwn() to update or drop once the batch returned.
    // Only for a qdisc the view itself replaced: another qdisc changed on the device is not its echo.
    const ownQdisc = e.handle !== undefined && (mine?.has(e.handle.split(":")[0]) ?? false);
    if (
      echo &&
      ((e.kind === "qdisc-changed" && ownQdisc) || childOfOwn) &&
      (this.patched.has(e.dev) || this.running.has(e.dev))
    )
      return false;
    this.events++;
    this.lastEvent.set(e.dev, this.events);
    this.qdiscs.delete(e.dev);
    // tc's name cache keeps a deleted tap's ifindex under its name; a fresh process reads names anew.
    if (e.kind === "link-deleted" || e.kind === "link-added") {
      this.detail.restart();
      this.plain.restart();
    }
    return !echo;
  }

  /** Whether `dev` was changed through this view's runner within OWN_ECHO_MS before `at` (epoch ms). */
  private ownChange(dev: string, at: number): boolean {
    const until = this.own.get(dev);
    return until !== undefined && at <= until;
  }

  /**
   * A live rate change replaces the leaf TBF (its rate follows the class's), and the kernel watch then reports
   * a qdisc change: without this, every next change of that domain would read the device's qdiscs again, a
   * walk of every qdisc of the namespace (14 ms at 6000). When the only qdisc lines of a successful batch for a
   * device are TBF replaces of a qdisc the cache holds, the cache takes their new state from the lines
   * themselves, as tc reports it back (rate in bytes/s, burst in bytes, lat: the µs its queue holds net of the
   * burst, which is what the planner compares), and their echo leaves the entry alone. Anything else on the
   * device (a root or hook qdisc, another kind, a deletion) drops it as before.
   */
  private patchOwn(lines: readonly string[]): void {
    if (!this.caching) return;
    const updates = new Map<string, ObservedQdisc[] | undefined>();
    for (const l of lines) {
      if (!l.startsWith("qdisc ")) continue;
      const dev = devOf(l);
      if (!dev) continue;
      const m = TBF_REPLACE.exec(l);
      const cached = updates.has(dev) ? updates.get(dev) : this.qdiscs.get(dev);
      const i = m && cached ? cached.findIndex((q) => q.handle === m[3] && q.kind === "tbf") : -1;
      if (!m || !cached || i < 0) {
        updates.set(dev, undefined);
        continue;
      }
      const rateBytesPerSec = Number(m[4]) / 8;
      const burstBytes = Number(m[5]);
      const limitBytes = Number(m[6]);
      const next = [...cached];
      next[i] = {
        ...cached[i],
        parent: m[2],
        options: {
          ...cached[i].options,
          rate: rateBytesPerSec,
          burst: burstBytes,
          lat: Math.round(((limitBytes - burstBytes) / rateBytesPerSec) * 1e6),
        },
      };
      updates.set(dev, next);
    }
    for (const [dev, qdiscs] of updates) {
      if (qdiscs) {
        this.qdiscs.set(dev, qdiscs);
        this.patched.add(dev);
      } else {
        this.qdiscs.delete(dev);
        this.patched.delete(dev);
      }
    }
  }

  /** The devices a batch of tc lines changes ("... dev X ..."), and until when their echo may arrive. */
  private noteOwn(lines: readonly string[], sentAt: number): void {
    const now = Date.now();
    for (const [dev, until] of this.own) {
      if (until >= now) continue;
      this.own.delete(dev);
      this.patched.delete(dev);
      this.ownHandles.delete(dev);
    }
    for (const l of lines) {
      const dev = devOf(l);
      if (!dev) continue;
      this.own.set(dev, sentAt + OWN_ECHO_MS);
      const m = /^qdisc replace dev \S+ parent (\S+) handle ([0-9a-f]+):/.exec(l);
      if (m) {
        const set = this.ownHandles.get(dev) ?? new Set<string>();
        set.add(m[1]).add(m[2]);
        this.ownHandles.set(dev, set);
      }
    }
  }

  /** Whether the device's qdiscs are cached (tests, diagnostics). */
  cached(dev: string): boolean {
    return this.qdiscs.has(dev);
  }

  /** Events may have been lost (a monitor restarted): nothing cached can be trusted. */
  onResync(): void {
    this.generation++;
    this.qdiscs.clear();
    this.detail.restart();
    this.plain.restart();
  }

  close(): void {
    this.detail.close();
    this.plain.close();
    this.ip.close();
  }

  /**
   * The engine's runner for a live change: a plain `tc -batch -` (what runBatch sends) goes to the open tc;
   * everything else (-force batches of a rollback, ip, staged batches) to `inner`.
   */
  runner(inner: Runner): Runner {
    const plainBatch = (args: string[]) => args.length === 2 && args[0] === "-batch" && args[1] === "-";
    const lines = (text: string) => text.split("\n").filter((l) => l.length > 0);
    const viaPlain = async (ls: string[]) => {
      // The echo can be read from the monitors before the batch's own answer: marked while it runs (bounded
      // by the session's timeout), then stamped once it returned.
      this.noteOwn(ls, Date.now() + 5000);
      const devs = ls.flatMap((l) => devOf(l) ?? []);
      for (const d of devs) this.running.add(d);
      let ok = false;
      try {
        const res = await this.plain.run(ls);
        ok = res.code === 0;
        return res;
      } finally {
        for (const d of devs) this.running.delete(d);
        if (ok) this.patchOwn(ls);
        // A batch that failed part-way changed what it changed: nothing cached about its devices holds.
        else for (const d of devs) this.qdiscs.delete(d);
        this.noteOwn(ls, Date.now());
      }
    };
    return {
      run: (cmd, args, input) =>
        cmd === "tc" && plainBatch(args) ? viaPlain(lines(input ?? "")) : inner.run(cmd, args, input),
      // The engine stages its tc lines behind `ip` (IFBs being created); in the open tc they simply wait.
      runStaged: (cmd, args, head, tail) => {
        if (cmd !== "tc" || !plainBatch(args)) {
          if (inner.runStaged) return inner.runStaged(cmd, args, head, tail);
          return tail.then(
            (rest) => inner.run(cmd, args, head + rest),
            () => inner.run(cmd, args, head),
          );
        }
        return tail.then(
          (rest) => viaPlain(lines(head + rest)),
          () => viaPlain(lines(head)),
        );
      },
    };
  }

  async observeScoped(req: {
    desired: DesiredInterface[];
    scopeUuids: readonly string[];
    runDir: string;
  }): Promise<Observed | undefined> {
    try {
      const o = await this.read(req);
      if (o) this.stats.scoped++;
      else this.stats.fallbacks++;
      return o;
    } catch {
      // A session that died or answered oddly: the full read, with fresh processes, is the answer.
      this.stats.fallbacks++;
      return undefined;
    }
  }

  private async read(req: {
    desired: DesiredInterface[];
    scopeUuids: readonly string[];
    runDir: string;
  }): Promise<Observed | undefined> {
    const records = loadRecordsOf(req.runDir, req.scopeUuids);
    if (req.desired.some((d) => d.group) || records.some((r) => r.interfaces.some((i) => i.group))) return;
    const devs = new Set<string>();
    for (const d of req.desired) {
      if (d.dev) devs.add(d.dev);
      devs.add(interfaceIfbName(d.domainUuid, d.mac));
    }
    for (const r of records) {
      for (const i of [...r.interfaces, ...(r.refused ?? [])]) {
        if (i.dev) devs.add(i.dev);
        devs.add(interfaceIfbName(r.domainUuid, i.mac));
      }
    }
    const links = await this.links(devs);
    if (!links) return;
    // A tap reused by another guest may still redirect to one of these IFBs: its tap is read too.
    const more = new Set<string>();
    for (const l of links.values()) {
      const alias = parseIfbAlias(l.alias);
      if (alias?.role === "group") return;
      if (alias?.dev && !devs.has(alias.dev)) more.add(alias.dev);
    }
    if (more.size) {
      const extra = await this.links(more);
      if (!extra) return;
      for (const [k, v] of extra) links.set(k, v);
    }
    const qdiscs = await this.qdiscsOf([...links.keys()]);
    if (!qdiscs) return;

    const queries: DeviceQuery[] = [];
    for (const dev of links.keys()) {
      const qs = qdiscs.get(dev) ?? [];
      const hook = qs.find((q) => q.parent === HOOK_PARENT);
      const ourRoot = qs.some((q) => q.parent === "root" && q.kind === "htb" && q.handle === ROOT_HANDLE);
      if (!ourRoot && !hook) continue;
      queries.push({ dev, classes: ourRoot, egress: hook?.kind === "clsact", rootFilters: ourRoot });
    }
    const devices = new Map<string, ObservedDevice>();
    if (queries.length) {
      const res = await this.detail.run(queries.flatMap(observeBatchLines));
      if (res.code !== 0) return;
      for (const [dev, part] of splitObserveOutput(res.stdout, queries)) {
        // iproute2 6.1's police JSON lacks the rate: observe() reads those from text, which this path does not.
        if (part.filters.some((f) => f.police && !Number.isFinite(f.police.rateBitsPerSec))) return;
        devices.set(dev, { ...part, qdiscs: qdiscs.get(dev) ?? [] });
      }
    }
    for (const dev of links.keys()) {
      if (!devices.has(dev))
        devices.set(dev, { dev, qdiscs: qdiscs.get(dev) ?? [], classes: [], filters: [] });
    }
    return { links, devices, records };
  }

  /** The links among `devs` that exist; undefined when a name cannot be asked for in a batch line. */
  private async links(devs: Set<string>): Promise<Map<string, ObservedLink> | undefined> {
    const names = [...devs];
    if (names.some((n) => !DEV_NAME.test(n) || n === "lo")) return;
    const res = await this.ip.run(names.map((n) => `link show dev ${n}`));
    if (res.code !== 0) return;
    const out = new Map<string, ObservedLink>();
    for (const line of res.stdout.split("\n")) {
      if (!line.startsWith("[")) continue;
      for (const l of linksFromJson(JSON.parse(line))) if (devs.has(l.name)) out.set(l.name, l);
    }
    return out;
  }

  /**
   * Qdiscs of `devs`: cached where the watch vouches for them, else read: a few devices in the open tc (14 ms
   * each here: every qdisc dump walks the whole namespace, whatever device is asked for), more in one full
   * dump by a process of its own, which fills the cache for every device. Not in the open tc: iproute2 keeps a
   * `dev` filter across batch lines, so a bare `qdisc show` after `qdisc show dev X` lists only X's.
   */
  private async qdiscsOf(devs: string[]): Promise<Map<string, ObservedQdisc[]> | undefined> {
    const out = new Map<string, ObservedQdisc[]>();
    const missing: string[] = [];
    for (const dev of devs) {
      const hit = this.caching ? this.qdiscs.get(dev) : undefined;
      if (hit) {
        this.stats.qdiscHits++;
        out.set(dev, hit);
      } else missing.push(dev);
    }
    if (!missing.length) return out;
    const events = this.events;
    const generation = this.generation;
    const full = missing.length > PER_DEVICE_READS || (this.caching && this.qdiscs.size === 0);
    let byDev: Map<string, ObservedQdisc[]>;
    if (full) {
      this.stats.dumps++;
      const res = await this.inner.run("tc", ["-j", "qdisc", "show"]);
      if (res.code !== 0) return;
      byDev = qdiscsFromJson(JSON.parse(res.stdout || "[]"));
    } else {
      this.stats.qdiscReads += missing.length;
      const res = await this.plain.run(missing.map((d) => `qdisc show dev ${d}`));
      if (res.code !== 0) return;
      const answers = res.stdout.split("\n").filter((l) => l.startsWith("["));
      if (answers.length !== missing.length) return;
      // One device's answer carries no device name: they come in the order asked.
      byDev = qdiscsFromJson(
        answers.flatMap((line, i) => (JSON.parse(line) as object[]).map((q) => ({ ...q, dev: missing[i] }))),
      );
    }
    for (const dev of missing) out.set(dev, byDev.get(dev) ?? []);
    if (this.caching && generation === this.generation) {
      for (const [dev, qdiscs] of byDev) {
        // A device with an event since the read began may have changed after the kernel answered.
        if ((this.lastEvent.get(dev) ?? 0) > events) continue;
        this.qdiscs.set(dev, qdiscs);
      }
    }
    return out;
  }
}
