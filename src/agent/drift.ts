// When to repair drift, and when to stop fighting. Pure: the clock and the timers are injected, nothing here
// touches the kernel or the disk.
//
// "Drift" is a finding, not an event: an object a check found wrong (the events from the kernel and OVSDB
// watches only say where to look, and virtqos's own repairs cause them too). The rules:
// - A drifted object is repaired at once.
// - An object that comes back wrong after a repair is a relapse. Two relapses within 60 s make it
//   "contested": someone else keeps changing it (an OVS that resets the port's QoS, a script, another
//   manager). Contested objects are reported (status, metrics) and their repairs back off exponentially
//   (1 s, 2 s, 4 s, ... 60 s between repairs) instead of looping with the other party.
// - An object leaves the contested state after 5 min without drift.
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
  lastDriftAt: number;
  /** Drifts seen since it became contested (one per time it was found wrong after a repair). */
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
  lastDriftAt: number;
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
  drift(key: string, reason: string): DriftDecision {
    const now = this.now();
    let e = this.entries.get(key);
    if (e) this.settle(e, now);
    else {
      e = {
        key,
        lastDriftAt: now,
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
    if (e.reasons[e.reasons.length - 1] !== reason) {
      e.reasons.push(reason);
      if (e.reasons.length > this.maxReasons) e.reasons.shift();
    }
    let newlyContested = false;
    if (!e.awaiting) {
      e.awaiting = true;
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
        lastDriftAt: e.lastDriftAt,
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
    if (e.contestedSince !== undefined && now - e.lastDriftAt >= this.calm) {
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
