import { Counter, collectDefaultMetrics, Gauge, Histogram, type Metric, Registry } from "prom-client";
import type { Logger } from "../adapters/log.js";
import type { StatusRow } from "../app/status.js";
import type { AuditDoor, AuditResult, Health } from "./types.js";

// The agent's Prometheus metrics (docs/observability.md). Interface metrics come from the same status rows as
// `virtqos status`, read when scraped rather than kept up to date by the engine: the kernel's counters are only
// true when read, and a read is a full observe of the host, so scrapes share one read per `cacheMs`.
// A private registry: the agent may be embedded (tests, the lab), and the global one would mix instances.

export type StatusProvider = () => Promise<StatusRow[]>;

export interface MetricsOptions {
  /** The status rows of every shaped interface (collectStatus against the agent's run dir). */
  rows: StatusProvider;
  /** The agent's health (LocalService.health()): libvirt connection, queue depth, uptime. */
  health?: () => Health;
  /** How long one read of the rows serves scrapes, counted from when it finished; default 1000 ms. */
  cacheMs?: number;
  /** prom-client's process and Node.js metrics (CPU, RSS, heap, event loop); default on. */
  processMetrics?: boolean;
  log?: Logger;
  /** Milliseconds, for tests of the cache. */
  now?: () => number;
}

/**
 * The per-interface families. They are written out here rather than kept in prom-client metrics: for 1000
 * shaped taps that is 16 000 series, and prom-client hashes every label set when one is set and escapes every
 * label value again on each scrape (measured: about 100 ms of CPU a scrape, against 20 ms here). The counters are the
 * kernel's own, read rather than counted, so they cannot be prom-client Counters (which only go up by inc) and
 * are exposed as what they are: counters, reset only when tc re-creates the class (rate() copes with that).
 */
interface Family {
  name: string;
  type: "gauge" | "counter";
  help: string;
  /** The limit families also say where the limit comes from and which group the interface is in. */
  limit?: true;
  /** undefined: no sample for this row. */
  value(r: StatusRow): number | undefined;
}

/** An interface virtqos refused to shape has no limit to show, only virtqos_in_force 0. */
const limited = (r: StatusRow, v: number | undefined) => (r.configured.rateBitsPerSec > 0 ? v : undefined);

const FAMILIES: Family[] = [
  {
    name: "virtqos_limit_rate_bits_per_second",
    type: "gauge",
    help: "The limit virtqos applied (HTB rate; a group member's ceiling) per guest interface and direction (inbound = the guest's download), bits per second.",
    limit: true,
    value: (r) => limited(r, r.configured.rateBitsPerSec),
  },
  {
    name: "virtqos_limit_ceil_bits_per_second",
    type: "gauge",
    help: "The ceiling up to which the interface may borrow above its rate (libvirt's peak), bits per second.",
    limit: true,
    value: (r) => limited(r, r.configured.ceilBitsPerSec || r.configured.rateBitsPerSec),
  },
  {
    name: "virtqos_limit_floor_bits_per_second",
    type: "gauge",
    help: "The rate guaranteed to a group member (libvirt's floor), bits per second; group members only.",
    limit: true,
    value: (r) => limited(r, r.configured.floorBitsPerSec),
  },
  {
    name: "virtqos_sent_bytes_total",
    type: "counter",
    help: "Bytes the interface's shaper sent in this direction (link-layer, as tc counts them) since its class was created.",
    value: (r) => r.bytes,
  },
  {
    name: "virtqos_sent_packets_total",
    type: "counter",
    help: "Packets the interface's shaper sent in this direction since its class was created.",
    value: (r) => r.packets,
  },
  {
    name: "virtqos_dropped_packets_total",
    type: "counter",
    help: "Packets the interface's shaper dropped in this direction (queue full, or over a policed rate).",
    value: (r) => r.drops,
  },
  {
    name: "virtqos_overlimits_total",
    type: "counter",
    help: "Times the interface's shaper held a packet back because the limit was reached.",
    value: (r) => r.overlimits,
  },
  {
    name: "virtqos_in_force",
    type: "gauge",
    help: "1 if the kernel has exactly what virtqos applied for this interface and direction, 0 if not (virtqos status says why).",
    value: (r) => (r.matches ? 1 : 0),
  },
];

/** The label values are guest names and policy text: anything may be in them. */
const esc = (v: string) => v.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');

/** The text exposition of the interface families, each row's label set escaped once. */
export function renderInterfaces(rows: StatusRow[]): string {
  const seen = new Set<string>();
  const sets: { row: StatusRow; labels: string; limitLabels: string }[] = [];
  for (const row of rows) {
    // Two rows for one interface and direction (a record written twice) would be a duplicate series.
    const key = `${row.domainUuid}|${row.mac}|${row.direction}`;
    if (seen.has(key)) continue;
    seen.add(key);
    const labels = `domain="${esc(row.guest)}",domain_uuid="${esc(row.domainUuid)}",mac="${esc(row.mac)}",dev="${esc(row.dev ?? "")}",direction="${row.direction}"`;
    sets.push({
      row,
      labels,
      limitLabels: `${labels},source="${esc(row.configured.source)}",group="${esc(row.group ?? "")}"`,
    });
  }
  const out: string[] = [];
  for (const f of FAMILIES) {
    out.push(`# HELP ${f.name} ${f.help}`, `# TYPE ${f.name} ${f.type}`);
    for (const s of sets) {
      const v = f.value(s.row);
      if (v !== undefined) out.push(`${f.name}{${f.limit ? s.limitLabels : s.labels}} ${v}`);
    }
  }
  out.push("");
  return out.join("\n");
}

/** prom-client's Node.js metrics that are gauges named _total (promtool flags them); each has a twin without. */
const DROPPED_DEFAULTS = new Set([
  "nodejs_active_handles_total",
  "nodejs_active_requests_total",
  "nodejs_active_resources_total",
]);

// Objects rather than arrays so that a door or result added to types.ts fails to compile here until listed:
// every pair is exported from the start (at 0), so that increase() sees the first change of each.
const DOORS = Object.keys({
  cli: 1,
  api: 1,
  nova: 1,
  metadata: 1,
  hook: 1,
  agent: 1,
} satisfies Record<AuditDoor, 1>) as AuditDoor[];
const RESULTS = Object.keys({ ok: 1, failed: 1, refused: 1 } satisfies Record<
  AuditResult,
  1
>) as AuditResult[];

/** Reconciles run tc batches: tens of milliseconds normally, seconds when the host is loaded or many taps move. */
const RECONCILE_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export class Metrics {
  private readonly registry = new Registry();
  private readonly opts: MetricsOptions & { cacheMs: number; now: () => number };
  private readonly statusDuration: Gauge;
  private readonly statusErrors: Counter;
  private readonly driftRepairs: Counter<"cause">;
  private readonly contested: Gauge;
  private readonly liveChanges: Counter<"door" | "result">;
  private readonly reconcile: Histogram;

  /** The interface families as of the last read of the rows, and when that read finished. */
  private interfaces = "";
  private readAt?: number;
  private inflight?: Promise<void>;

  constructor(opts: MetricsOptions) {
    this.opts = { cacheMs: 1000, now: () => Date.now(), ...opts };
    const registers = [this.registry];
    this.statusDuration = new Gauge({
      name: "virtqos_status_read_duration_seconds",
      help: "How long the last read of the kernel's state (for the interface metrics) took.",
      registers,
    });
    this.statusErrors = new Counter({
      name: "virtqos_status_read_errors_total",
      help: "Reads of the kernel's state that failed; the interface metrics are missing from those scrapes.",
      registers,
    });
    this.driftRepairs = new Counter({
      name: "virtqos_drift_repairs_total",
      help: "Times the agent put back shaping that had changed under it, by cause.",
      labelNames: ["cause"],
      registers,
    });
    this.contested = new Gauge({
      name: "virtqos_contested_objects",
      help: "tc objects another tool keeps changing back, which the agent has stopped repairing.",
      registers,
    });
    this.liveChanges = new Counter({
      name: "virtqos_live_changes_total",
      help: "Live limit changes (virtqos set, the REST API, the Nova action), by door and result.",
      labelNames: ["door", "result"],
      registers,
    });
    for (const door of DOORS) for (const result of RESULTS) this.liveChanges.inc({ door, result }, 0);
    this.reconcile = new Histogram({
      name: "virtqos_reconcile_duration_seconds",
      help: "How long one reconcile (plan and tc batch for a domain) took.",
      buckets: RECONCILE_BUCKETS,
      registers,
    });

    const { health } = opts;
    if (health) {
      // Read at scrape time, so never older than the scrape.
      new Gauge({
        name: "virtqos_libvirt_connected",
        help: "1 while the agent is connected to libvirt (and follows its events), 0 while it reconnects.",
        registers,
        collect() {
          this.set(health().libvirt.connected ? 1 : 0);
        },
      });
      new Gauge({
        name: "virtqos_queue_depth",
        help: "Changes waiting in the agent's queue (live changes, events, repairs).",
        registers,
        collect() {
          this.set(health().queueDepth);
        },
      });
      new Gauge({
        name: "virtqos_agent_uptime_seconds",
        help: "Seconds since the agent started.",
        registers,
        collect() {
          this.set(health().uptimeSeconds);
        },
      });
    }
    if (opts.processMetrics !== false) {
      // prom-client offers no way to leave some out: collect into a scratch registry, move the rest over.
      const scratch = new Registry();
      collectDefaultMetrics({ register: scratch });
      for (const m of scratch.getMetricsAsArray()) {
        // getMetricsAsArray() is typed as the plain objects get() returns, but holds the metrics themselves.
        if (!DROPPED_DEFAULTS.has(m.name)) this.registry.registerMetric(m as unknown as Metric);
      }
    }
  }

  /** The agent put back shaping that had changed; `cause` is one of a few fixed words, never a name. */
  driftRepaired(cause: string): void {
    this.driftRepairs.inc({ cause });
  }

  setContested(n: number): void {
    this.contested.set(n);
  }

  liveChange(door: AuditDoor, result: AuditResult): void {
    this.liveChanges.inc({ door, result });
  }

  observeReconcile(seconds: number): void {
    this.reconcile.observe(seconds);
  }

  /** The Prometheus text exposition of every metric, the interface metrics at most `cacheMs` old. */
  async render(): Promise<{ contentType: string; body: string }> {
    await this.refresh();
    const agent = await this.registry.metrics();
    return { contentType: this.registry.contentType, body: `${this.interfaces}\n${agent}` };
  }

  /** One read for concurrent scrapes, and none while the last one is fresh. */
  private refresh(): Promise<void> {
    if (this.inflight) return this.inflight;
    const { now, cacheMs } = this.opts;
    if (this.readAt !== undefined && now() - this.readAt < cacheMs) return Promise.resolve();
    this.inflight = this.read().finally(() => {
      this.readAt = now();
      this.inflight = undefined;
    });
    return this.inflight;
  }

  private async read(): Promise<void> {
    const t0 = performance.now();
    let rows: StatusRow[];
    try {
      rows = await this.opts.rows();
    } catch (e) {
      // Stale numbers would hide the failure: the interface series go missing (a gap in every graph) instead.
      this.statusErrors.inc();
      this.opts.log?.warning(`metrics: reading the interfaces' state: ${(e as Error).message}`);
      rows = [];
    }
    this.statusDuration.set((performance.now() - t0) / 1000);
    this.interfaces = renderInterfaces(rows);
  }
}
