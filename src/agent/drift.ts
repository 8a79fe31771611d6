// When to repair drift, and when to stop fighting. Pure: the clock and the timers are injected, nothing here
// touches the kernel or the disk.
//
// "Drift" is a finding, not an event: an object a check found wrong (the events from the kernel and OVSDB
// watches only say where to look, and virtqos's own repairs cause them too). The rules:
// - A drifted object is repaired at once.
// - An object that comes back wrong after a repair is a relapse. Two relapses within 60 s make it
//   "contested": someone else keeps changing it (a script, another manager). Contested objects are reported
//   (status, metrics) and their repairs back off exponentially (1 s, 2 s, 4 s, ... 60 s between repairs)
//   instead of looping with the other party.
// - A drift with a known, legitimate cause is "explained" and is no relapse: Open vSwitch reconfiguring the
//   port (another port added, ovs-vswitchd restarted, the port's own OVSDB rows changed) re-creates the
//   port's qdiscs every time, several times per reconfiguration. It is repaired like any drift (once OVS has
//   settled: OvsSettler below) but never makes an object contested.
// - An object leaves the contested state after 5 min without an unexplained drift.
// - A repair that failed is retried with the same back-off, contested or not.

export interface DriftPolicyOptions {
  now?: () => number;
  /** Relapses count toward "contested" within this window; default 60 s. */
  contestWindowMs?: number;
  /** Relapses within the window that make an object contested; default 2. */
  relapsesToContest?: number;
  /** Back-off between repairs of a contested object (and after a failed repair): first, maximum. */
  backoffMinMs?: number;
  backoffMaxMs?: number;
  /** A contested object without drift for this long is no longer contested; default 5 min. */
  calmMs?: number;
  /** Reasons kept per object for the report. */
  maxReasons?: number;
}

export interface DriftFinding {
  /**
   * The drift has a known cause that is not another party fighting virtqos (Open vSwitch reconfiguring the
   * port): repaired like any drift, but not a relapse. It neither counts toward "contested" nor keeps a
   * contested object contested; a contested object's repairs still keep their back-off.
   */
  explained?: boolean;
}

export type DriftDecision =
  | { action: "repair"; key: string; contested: boolean; newlyContested: boolean }
  | {
      action: "later";
      key: string;
      /** When to repair (epoch ms of the injected clock): call due() then, or drift() again. */
      at: number;
      contested: boolean;
      newlyContested: boolean;
      reason: string;
    };

export interface ContestedObject {
  key: string;
  /** When it became contested. */
  since: number;
  /** The last unexplained drift (the contest ends calmMs after it). */
  lastDriftAt: number;
  /** Unexplained drifts seen since it became contested (one per time it was found wrong after a repair). */
  drifts: number;
  /** The back-off the next repair waits for. */
  backoffMs: number;
  /** When the next repair is due, if one is waiting. */
  nextRepairAt?: number;
  /** What the checks said, most recent last. */
  reasons: string[];
}

interface Entry {
  key: string;
  /** The last drift, explained or not (an entry idle long enough is dropped). */
  lastDriftAt: number;
  /** The last unexplained drift: what keeps a contested object contested. */
  lastCountedAt: number;
  lastRepairAt?: number;
  /** Found wrong and not repaired since: more findings are the same drift, not new relapses. */
  awaiting: boolean;
  relapses: number[];
  contestedSince?: number;
  contestedDrifts: number;
  backoffMs: number;
  failures: number;
  dueAt?: number;
  reasons: string[];
}

/** The key of one repairable thing: a device and what on it ("root", "redirect", "ifb", ...). */
export const driftKey = (dev: string, what: string): string => `${dev}|${what}`;

export class DriftPolicy {
  private readonly entries = new Map<string, Entry>();
  private readonly now: () => number;
  private readonly window: number;
  private readonly threshold: number;
  private readonly backoffMin: number;
  private readonly backoffMax: number;
  private readonly calm: number;
  private readonly maxReasons: number;

  constructor(o: DriftPolicyOptions = {}) {
    this.now = o.now ?? Date.now;
    this.window = o.contestWindowMs ?? 60_000;
    this.threshold = o.relapsesToContest ?? 2;
    this.backoffMin = o.backoffMinMs ?? 1_000;
    this.backoffMax = o.backoffMaxMs ?? 60_000;
    this.calm = o.calmMs ?? 300_000;
    this.maxReasons = o.maxReasons ?? 5;
  }

  /** A check found `key` wrong: repair now, or later (and when). */
  drift(key: string, reason: string, finding: DriftFinding = {}): DriftDecision {
    const now = this.now();
    const explained = finding.explained === true;
    let e = this.entries.get(key);
    if (e) this.settle(e, now);
    else {
      e = {
        key,
        lastDriftAt: now,
        lastCountedAt: now,
        awaiting: false,
        relapses: [],
        contestedDrifts: 0,
        backoffMs: 0,
        failures: 0,
        reasons: [],
      };
      this.entries.set(key, e);
    }
    e.lastDriftAt = now;
    if (!explained) e.lastCountedAt = now;
    if (e.reasons[e.reasons.length - 1] !== reason) {
      e.reasons.push(reason);
      if (e.reasons.length > this.maxReasons) e.reasons.shift();
    }
    let newlyContested = false;
    if (!e.awaiting) {
      e.awaiting = true;
      // An explained drift is the same object found wrong again, but not a relapse: nobody fights virtqos.
      if (explained) return this.decide(e, now, false);
      if (e.lastRepairAt !== undefined) {
        e.relapses = e.relapses.filter((t) => now - t < this.window);
        e.relapses.push(now);
        if (e.contestedSince === undefined && e.relapses.length >= this.threshold) {
          e.contestedSince = now;
          e.backoffMs = this.backoffMin;
          newlyContested = true;
        }
      }
      if (e.contestedSince !== undefined) e.contestedDrifts++;
    }
    return this.decide(e, now, newlyContested);
  }

  /**
   * A repair of `key` finished. A failed one leaves the object wrong: the answer says when to try again.
   * While contested, every repair doubles the wait before the next.
   */
  repaired(key: string, ok = true): DriftDecision | undefined {
    const now = this.now();
    const e = this.entries.get(key);
    if (!e) return undefined;
    e.lastRepairAt = now;
    e.dueAt = undefined;
    if (e.contestedSince !== undefined)
      e.backoffMs = Math.min(Math.max(e.backoffMs, this.backoffMin) * 2, this.backoffMax);
    if (ok) {
      e.failures = 0;
      e.awaiting = false;
      return undefined;
    }
    e.failures++;
    e.awaiting = true;
    return this.decide(e, now, false);
  }

  /** Keys whose deferred repair is due now; each is handed out once (repair it, then call repaired()). */
  due(): string[] {
    const now = this.now();
    const out: string[] = [];
    for (const e of this.entries.values()) {
      if (e.dueAt !== undefined && e.dueAt <= now) {
        e.dueAt = undefined;
        out.push(e.key);
      }
    }
    return out;
  }

  /** When the earliest deferred repair is due, for the caller's one timer. */
  nextDue(): number | undefined {
    let next: number | undefined;
    for (const e of this.entries.values()) {
      if (e.dueAt !== undefined && (next === undefined || e.dueAt < next)) next = e.dueAt;
    }
    return next;
  }

  isContested(key: string): boolean {
    const e = this.entries.get(key);
    if (!e) return false;
    this.settle(e, this.now());
    return e.contestedSince !== undefined;
  }

  /** The contested objects, for status and metrics. */
  contested(): ContestedObject[] {
    const now = this.now();
    const out: ContestedObject[] = [];
    for (const e of [...this.entries.values()]) {
      this.settle(e, now);
      if (e.contestedSince === undefined) continue;
      out.push({
        key: e.key,
        since: e.contestedSince,
        lastDriftAt: e.lastCountedAt,
        drifts: e.contestedDrifts,
        backoffMs: e.backoffMs,
        ...(e.dueAt !== undefined ? { nextRepairAt: e.dueAt } : {}),
        reasons: [...e.reasons],
      });
    }
    return out;
  }

  /** The object is gone (guest stopped, interface unplugged): nothing to repair or report. */
  forget(key: string): void {
    this.entries.delete(key);
  }

  /** Objects tracked now (contested, waiting, or with recent relapses). */
  size(): number {
    for (const e of [...this.entries.values()]) this.settle(e, this.now());
    return this.entries.size;
  }

  private decide(e: Entry, now: number, newlyContested: boolean): DriftDecision {
    const contested = e.contestedSince !== undefined;
    let at = now;
    let reason = "";
    if (contested && e.lastRepairAt !== undefined) {
      at = Math.max(at, e.lastRepairAt + e.backoffMs);
      reason = `contested: repairs back off ${e.backoffMs} ms`;
    }
    if (e.failures > 0 && e.lastRepairAt !== undefined) {
      const wait = Math.min(this.backoffMin * 2 ** (e.failures - 1), this.backoffMax);
      if (e.lastRepairAt + wait > at) {
        at = e.lastRepairAt + wait;
        reason = `${e.failures} failed repair(s): retry after ${wait} ms`;
      }
    }
    if (at <= now) {
      e.dueAt = undefined;
      return { action: "repair", key: e.key, contested, newlyContested };
    }
    e.dueAt = at;
    return { action: "later", key: e.key, at, contested, newlyContested, reason };
  }

  /** Lazily applies the passing of time: calm objects leave the contested state, idle ones are dropped. */
  private settle(e: Entry, now: number): void {
    if (e.contestedSince !== undefined && now - e.lastCountedAt >= this.calm) {
      e.contestedSince = undefined;
      e.contestedDrifts = 0;
      e.backoffMs = 0;
      e.relapses = [];
    }
    const idle = now - e.lastDriftAt >= Math.max(this.window, this.calm);
    if (idle && e.contestedSince === undefined && !e.awaiting && e.dueAt === undefined) {
      this.entries.delete(e.key);
    }
  }
}

// ------------------------------------------------------------------------------------------ coalescing

export interface Timers {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export const realTimers: Timers = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
};

export interface CoalescerOptions {
  /** A batch is handed over once no event came for this long; default 50 ms. */
  quietMs?: number;
  /** ... or this long after its first event, however busy the device; default 200 ms. */
  maxWaitMs?: number;
  /** Items kept per batch (the most recent); default 100. */
  maxItems?: number;
  timers?: Timers;
}

export interface Batch<T> {
  key: string;
  items: T[];
  /** Items pushed, including any dropped beyond maxItems. */
  count: number;
  firstAt: number;
}

/**
 * Turns bursts of events about one key (a device) into one request: an OVS restart or a `tc qdisc del` of a
 * root prints several lines within milliseconds, and each would otherwise start a check of its own.
 */
export class Coalescer<T> {
  private readonly batches = new Map<string, Batch<T> & { quiet?: unknown; cap?: unknown }>();
  private readonly quietMs: number;
  private readonly maxWaitMs: number;
  private readonly maxItems: number;
  private readonly timers: Timers;

  constructor(
    private readonly onBatch: (b: Batch<T>) => void,
    o: CoalescerOptions = {},
  ) {
    this.quietMs = o.quietMs ?? 50;
    this.maxWaitMs = o.maxWaitMs ?? 200;
    this.maxItems = o.maxItems ?? 100;
    this.timers = o.timers ?? realTimers;
  }

  push(key: string, item: T): void {
    let b = this.batches.get(key);
    if (!b) {
      b = { key, items: [], count: 0, firstAt: this.timers.now() };
      this.batches.set(key, b);
      b.cap = this.timers.setTimeout(() => this.flush(key), this.maxWaitMs);
    }
    b.items.push(item);
    b.count++;
    if (b.items.length > this.maxItems) b.items.shift();
    if (b.quiet !== undefined) this.timers.clearTimeout(b.quiet);
    b.quiet = this.timers.setTimeout(() => this.flush(key), this.quietMs);
  }

  /** Hand over `key`'s batch now (if any). */
  flush(key: string): void {
    const b = this.batches.get(key);
    if (!b) return;
    this.batches.delete(key);
    if (b.quiet !== undefined) this.timers.clearTimeout(b.quiet);
    if (b.cap !== undefined) this.timers.clearTimeout(b.cap);
    this.onBatch({ key: b.key, items: b.items, count: b.count, firstAt: b.firstAt });
  }

  flushAll(): void {
    for (const key of [...this.batches.keys()]) this.flush(key);
  }

  /** Drop everything pending without handing it over (shutting down). */
  clear(): void {
    for (const b of this.batches.values()) {
      if (b.quiet !== undefined) this.timers.clearTimeout(b.quiet);
      if (b.cap !== undefined) this.timers.clearTimeout(b.cap);
    }
    this.batches.clear();
  }

  pending(): string[] {
    return [...this.batches.keys()];
  }
}

// ------------------------------------------------------------------------------------------ Open vSwitch

export interface OvsSettleOptions<C> {
  /**
   * A held port is handed over once neither OVSDB (any event) nor the kernel (a change on that port) has
   * changed for this long; default 300 ms.
   */
  settleMs?: number;
  /** ... or this long after the first change held, however busy OVS keeps the port; default 2 s. */
  capMs?: number;
  /** How long an OVS event explains the changes on the ports it concerns; default 5 s. */
  hintMs?: number;
  /**
   * A change on an OVS port that no OVS event explains yet is held at least this long: ovs-vswitchd changes
   * the kernel first and OVSDB shows why 100-200 ms later (another port's row); default 500 ms.
   */
  leadMs?: number;
  /** Orders causes when several OVS events explain a change: lower first. Default: the latest event. */
  rank?: (cause: C) => number;
  timers?: Timers;
}

/** An OVS event that explains kernel changes: on one port, or (no port) on every OVS port. */
export interface OvsHint<C> {
  cause: C;
  at: number;
  port?: string;
}

/** A port handed over by the settler, with everything held for it. */
export interface Settled<C, T> {
  port: string;
  items: T[];
  /** The first change held (the injected clock's ms). */
  since: number;
  /** The OVS event that explains the changes, if one does (within hintMs before `since`, or since then). */
  explained?: OvsHint<C>;
  /** Handed over at the cap while OVS still changed the port. */
  capped: boolean;
}

interface Hold<T> {
  since: number;
  items: T[];
  due: number;
  timer?: unknown;
}

/**
 * Waits out Open vSwitch's reconfigurations, per port. One port added makes ovs-vswitchd reconfigure every
 * port, several times within a second or two (each time re-creating a policed port's `ingress` qdisc, which
 * drops what virtqos had put on it); an ovs-vswitchd restart does the same. A repair between two of those
 * passes is undone by the next. So a change on an OVS port is held until the port has settled: neither OVSDB
 * nor the kernel (changes on that port) changed for settleMs, and at least leadMs after the change when no
 * OVS event explains it yet (the kernel change often comes before the OVSDB row that says why); capped at
 * capMs after the first change held. Pure: the clock and the timers are injected.
 *
 * It also remembers the OVS events (hints) that explain the changes: a change on a port that an OVS event
 * about that port or about every port (a port added, a restart) explains is OVS's, not a fight
 * (DriftFinding.explained).
 */
export class OvsSettler<C, T> {
  private readonly holds = new Map<string, Hold<T>>();
  private readonly hints: OvsHint<C>[] = [];
  private readonly lastKernel = new Map<string, number>();
  private lastOvsdb = Number.NEGATIVE_INFINITY;
  private readonly settleMs: number;
  private readonly capMs: number;
  private readonly hintMs: number;
  private readonly leadMs: number;
  private readonly timers: Timers;

  constructor(
    private readonly onSettled: (s: Settled<C, T>) => void,
    private readonly o: OvsSettleOptions<C> = {},
  ) {
    this.settleMs = o.settleMs ?? 300;
    this.capMs = o.capMs ?? 2_000;
    this.hintMs = o.hintMs ?? 5_000;
    this.leadMs = o.leadMs ?? 500;
    this.timers = o.timers ?? realTimers;
  }

  /**
   * OVSDB reported something (OVSDB is not quiet). With a cause it also explains changes: on `port`, or on
   * every OVS port when `port` is undefined.
   */
  ovsEvent(cause?: C, port?: string): void {
    const now = this.timers.now();
    this.lastOvsdb = now;
    if (cause !== undefined) {
      this.hints.push(port === undefined ? { cause, at: now } : { cause, at: now, port });
      this.prune(now);
    }
    for (const p of [...this.holds.keys()]) this.schedule(p);
  }

  /** The kernel changed something on OVS port `port` (not virtqos's own repair): it has not settled. */
  kernelChange(port: string): void {
    this.lastKernel.set(port, this.timers.now());
    if (this.holds.has(port)) this.schedule(port);
  }

  /** Hold `item` about `port` (first seen at `since`, default now) until the port has settled. */
  hold(port: string, item: T, since = this.timers.now()): void {
    let h = this.holds.get(port);
    if (!h) {
      h = { since, items: [], due: Number.NEGATIVE_INFINITY };
      this.holds.set(port, h);
    } else h.since = Math.min(h.since, since);
    h.items.push(item);
    this.schedule(port);
  }

  /** Whether a change on `port` first seen at `since` would be held now (the port has not settled). */
  wouldHold(port: string, since: number): boolean {
    if (this.holds.has(port)) return true;
    return this.dueOf(port, since, this.timers.now()) > this.timers.now();
  }

  holding(port: string): boolean {
    return this.holds.has(port);
  }

  /** Ports held now. */
  pending(): string[] {
    return [...this.holds.keys()];
  }

  /**
   * The OVS event that explains a change on `port` first seen at `since`: one within hintMs before it, or
   * one since then up to `until` (default now). The best by rank, else the latest.
   */
  explain(port: string, since: number, until = this.timers.now()): OvsHint<C> | undefined {
    let best: OvsHint<C> | undefined;
    for (const h of this.hints) {
      if (h.port !== undefined && h.port !== port) continue;
      if (h.at < since - this.hintMs || h.at > until) continue;
      if (!best || this.better(h, best)) best = h;
    }
    return best;
  }

  /** Hand over every held port now. */
  flushAll(): void {
    for (const p of [...this.holds.keys()]) this.release(p);
  }

  /** Drop everything held, without handing it over (shutting down). */
  clear(): void {
    for (const h of this.holds.values()) if (h.timer !== undefined) this.timers.clearTimeout(h.timer);
    this.holds.clear();
  }

  private better(a: OvsHint<C>, b: OvsHint<C>): boolean {
    const rank = this.o.rank;
    if (rank) {
      const ra = rank(a.cause);
      const rb = rank(b.cause);
      if (ra !== rb) return ra < rb;
    }
    return a.at > b.at;
  }

  /** When a hold of `port` since `since` is due. */
  private dueOf(port: string, since: number, now: number): number {
    const quiet =
      Math.max(this.lastKernel.get(port) ?? Number.NEGATIVE_INFINITY, this.lastOvsdb) + this.settleMs;
    const lead = this.explain(port, since, now) ? Number.NEGATIVE_INFINITY : since + this.leadMs;
    return Math.min(Math.max(quiet, lead), since + this.capMs);
  }

  private schedule(port: string): void {
    const h = this.holds.get(port);
    if (!h) return;
    const now = this.timers.now();
    const due = this.dueOf(port, h.since, now);
    if (due <= now) {
      this.release(port);
      return;
    }
    if (h.timer !== undefined && h.due === due) return;
    if (h.timer !== undefined) this.timers.clearTimeout(h.timer);
    h.due = due;
    h.timer = this.timers.setTimeout(() => {
      h.timer = undefined;
      this.schedule(port);
    }, due - now);
  }

  private release(port: string): void {
    const h = this.holds.get(port);
    if (!h) return;
    this.holds.delete(port);
    if (h.timer !== undefined) this.timers.clearTimeout(h.timer);
    const now = this.timers.now();
    const quiet =
      Math.max(this.lastKernel.get(port) ?? Number.NEGATIVE_INFINITY, this.lastOvsdb) + this.settleMs;
    const explained = this.explain(port, h.since, now);
    this.prune(now);
    this.onSettled({
      port,
      items: h.items,
      since: h.since,
      ...(explained ? { explained } : {}),
      capped: quiet > now,
    });
  }

  /** Forgets hints no change can still be explained by, and kernel changes long settled. */
  private prune(now: number): void {
    const keep = this.hintMs + this.capMs + this.leadMs;
    let drop = 0;
    while (drop < this.hints.length && now - (this.hints[drop] as OvsHint<C>).at > keep) drop++;
    if (drop) this.hints.splice(0, drop);
    if (this.lastKernel.size > 64) {
      for (const [p, t] of this.lastKernel)
        if (now - t > this.settleMs && !this.holds.has(p)) this.lastKernel.delete(p);
    }
  }
}
