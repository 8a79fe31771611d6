import { type FSWatcher, readFileSync, watch } from "node:fs";
import { dirname, join } from "node:path";
import { StringDecoder } from "node:string_decoder";
import { preciseNow, sanitize, supervise } from "./kernel-watch.js";

// The drift watcher's ears on Open vSwitch: which ports exist, their ingress policing and QoS, and when
// ovs-vswitchd restarts. OVS matters because it deletes a port's root qdisc (virtqos's HTB) whenever it
// configures the port's QoS: after `add-port` and after every ovs-vswitchd start (docs/kernel-vm.md). The
// deletion itself shows in the kernel watch; these events say why, and that more may follow.
//
// What is observable (OVS 3.1.0, found against a private ovsdb-server + ovs-vswitchd, userspace datapath):
// - `ovsdb-client monitor` takes one table per process; `ALL` (every table and column) is the only way to
//   have one process and one connection, so that is what runs. Its --format=json prints one line per table
//   per update; the initial dump prints nothing for an empty table:
//     {"caption":"Port","data":[["46077bfc-...","insert","vqdwv0",["set",[]],...]],"headings":["row","action",...]}
//     {"caption":"Interface","data":[["46077bfc-...","old",null,0,...],["","new","vqdwv0",1000,...]],"headings":[...]}
//   ("old" carries only the columns that changed, the "new" row after it has them all and an empty uuid;
//   "initial", "insert" and "delete" rows carry every column). The price of ALL: Interface statistics
//   arrive every 5 s per interface (other_config:stats-update-interval) and are parsed to be ignored.
// - ovsdb-server stopping: ovsdb-client exits 1, "receive failed (End of file)"; not running: exits 1,
//   "failed to connect to ... (No such file or directory)". Both mean: restart it with back-off, and compare
//   its new initial dump with what was known (changes made while disconnected become events).
// - ovs-vswitchd restarting leaves no trace in the database: it rewrites the same values (ofport, cur_cfg,
//   datapath_types), which the monitor does not report as changes, and its lock ("ovs_vswitchd") is only
//   observable by taking it, which would stop OVS. What changes is its pidfile (ovs-vswitchd.pid, written
//   with a new pid at every start, removed at a clean exit): watched in the database socket's directory.
//   The pidfile is written before ovs-vswitchd configures its ports, so "vswitchd-restart" comes before
//   the qdisc deletions it causes, not after them.
// - ovs-vswitchd configuring a newly added interface shows as its ofport going from [] to a number
//   ("ofport-changed"), right after it has reset the port's root qdisc.

export type OvsEventKind =
  | "port-added"
  | "port-deleted"
  | "policing-changed"
  | "qos-changed"
  | "ofport-changed"
  | "vswitchd-restart"
  | "vswitchd-stopped";

export interface OvsEvent {
  at: number;
  kind: OvsEventKind | (string & {});
  /** The port (for Interface-table events, the interface name, which is the port's for a tap). */
  port?: string;
  detail: string;
}

export interface OvsInterfaceInfo {
  name: string;
  ingressPolicingRate?: number;
  ingressPolicingBurst?: number;
  ofport?: number;
}

export interface OvsPortInfo {
  name: string;
  /** The type of the port's QoS row ("linux-noop", "linux-htb"), if it has one. */
  qosType?: string;
  interfaces: OvsInterfaceInfo[];
}

export interface OvsWatchOptions {
  /** An OVSDB remote; default unix:/var/run/openvswitch/db.sock. */
  db?: string;
  /**
   * Where ovs-vswitchd writes its pidfile (ovs-vswitchd.pid); default the directory of a unix: db socket.
   * false: do not watch for restarts.
   */
  runDir?: string | false;
  onEvent(e: OvsEvent): void;
  /**
   * true once the monitor has the database's contents, false (with ovsdb-client's error) when it lost or
   * cannot open the connection; on changes only. On every true after a false, what changed in between has
   * been reported as events already.
   */
  onState?(connected: boolean, err?: string): void;
  /** Output that could not be read (a line that is not ovsdb-client's JSON). */
  onError?(err: Error): void;
  /** Back-off before restarting ovsdb-client: starts here (default 250 ms), doubles to backoffMaxMs (5 s). */
  backoffMinMs?: number;
  backoffMaxMs?: number;
  /** How often the pidfile is read besides inotify's notices; default 500 ms. */
  pidPollMs?: number;
  /** The ovsdb-client binary. */
  ovsdbClient?: string;
}

export interface OvsWatch {
  /** Resolves once the first initial dump has been read (pending while OVSDB cannot be reached). */
  readonly ready: Promise<void>;
  close(): Promise<void>;
  /** The ovsdb-client pid running now. */
  pids(): number[];
  /** OVS's ports as last seen. */
  ports(): OvsPortInfo[];
}

export const DEFAULT_OVSDB = "unix:/var/run/openvswitch/db.sock";

// The columns events are made of; every other column (statistics, status, ...) is ignored.
const COLUMNS: Record<string, string[]> = {
  Interface: ["name", "ingress_policing_rate", "ingress_policing_burst", "ofport"],
  Port: ["name", "qos", "interfaces"],
  QoS: ["type", "other_config", "queues"],
};
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
// The initial dump is one reply printed table by table; a pause this long ends it even if no update follows.
const INITIAL_QUIET_MS = 200;
// A database without its Open_vSwitch row prints no initial dump at all: alive this long counts as connected.
const EMPTY_DB_MS = 2_000;
const MAX_LINE = 64 * 1024 * 1024;

type Row = Record<string, string>;
type Table = Map<string, Row>;

/** One OVSDB cell as text: a uuid, a set's members, a map's pairs; [] is "none". */
export function showCell(v: unknown): string {
  if (Array.isArray(v) && v.length === 2 && typeof v[0] === "string") {
    const [tag, body] = v as [string, unknown];
    if (tag === "uuid" || tag === "named-uuid") return String(body);
    if (tag === "set" && Array.isArray(body)) return body.length ? body.map(showCell).join(",") : "none";
    if (tag === "map" && Array.isArray(body)) {
      return body.length
        ? body.map((p) => (Array.isArray(p) ? `${showCell(p[0])}=${showCell(p[1])}` : "?")).join(",")
        : "none";
    }
  }
  if (typeof v === "string") return v;
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  return JSON.stringify(v) ?? "none";
}

const num = (s: string | undefined): number | undefined =>
  s !== undefined && /^-?\d{1,15}$/.test(s) ? Number(s) : undefined;

export interface TableUpdate {
  table: string;
  rows: { uuid: string; action: string; cells: Row }[];
}

/**
 * One line of `ovsdb-client --format=json monitor ... ALL`, reduced to the tables and columns in COLUMNS;
 * undefined for other tables and for anything that is not such a line. "new" rows get the uuid of the
 * "old" row before them.
 */
export function parseMonitorLine(line: string): TableUpdate | undefined {
  let j: unknown;
  try {
    j = JSON.parse(line);
  } catch {
    return undefined;
  }
  if (!j || typeof j !== "object") return undefined;
  const { caption, data, headings } = j as { caption?: unknown; data?: unknown; headings?: unknown };
  if (typeof caption !== "string" || !Array.isArray(data) || !Array.isArray(headings)) return undefined;
  const wanted = COLUMNS[caption];
  if (!wanted) return undefined;
  const index = new Map<string, number>();
  headings.forEach((h, i) => {
    if (typeof h === "string") index.set(h, i);
  });
  const rows: TableUpdate["rows"] = [];
  let lastUuid = "";
  for (const r of data) {
    if (!Array.isArray(r) || typeof r[0] !== "string" || typeof r[1] !== "string") continue;
    const action = r[1];
    const uuid = action === "new" ? lastUuid : r[0];
    if (!UUID_RE.test(uuid)) continue;
    lastUuid = uuid;
    const cells: Row = {};
    for (const c of wanted) {
      const i = index.get(c);
      // null in an "old" row: the column did not change.
      if (i !== undefined && r[i] !== null && r[i] !== undefined) cells[c] = sanitize(showCell(r[i]), 500);
    }
    rows.push({ uuid, action, cells });
  }
  return { table: caption, rows };
}

/** Splits stdout into lines without the per-chunk copying a long initial dump would otherwise cost. */
class LineSplitter {
  private readonly decoder = new StringDecoder("utf8");
  private parts: string[] = [];
  private size = 0;
  constructor(
    private readonly onLine: (line: string) => void,
    private readonly onChunkEnd: () => void,
  ) {}
  push(chunk: Buffer): void {
    let text = this.decoder.write(chunk);
    let nl = text.indexOf("\n");
    while (nl >= 0) {
      this.parts.push(text.slice(0, nl));
      const line = this.parts.join("");
      this.parts = [];
      this.size = 0;
      if (line.length <= MAX_LINE) this.onLine(line);
      text = text.slice(nl + 1);
      nl = text.indexOf("\n");
    }
    this.size += text.length;
    // A line this long is no ovsdb-client output worth holding: dropped up to its end.
    if (this.size > MAX_LINE) {
      this.parts = [];
      this.size = 0;
    } else if (text) this.parts.push(text);
    this.onChunkEnd();
  }
}

function readPid(file: string): number | undefined {
  try {
    const m = /^\s*(\d{1,10})\s*$/.exec(readFileSync(file, "utf8"));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * Follows OVSDB with `ovsdb-client --format=json monitor DB Open_vSwitch ALL` (restarted with back-off
 * when it exits: ovsdb-server restarted or not running) and ovs-vswitchd's pidfile. The first initial
 * dump is the baseline; every later one (after a reconnect) is compared with what was known.
 */
export function watchOvsdb(opts: OvsWatchOptions): OvsWatch {
  const db = opts.db ?? DEFAULT_OVSDB;
  let closed = false;
  const safely = (what: string, fn: () => void): void => {
    try {
      fn();
    } catch (e) {
      process.emitWarning(`ovsdb watch: ${what} threw: ${(e as Error)?.stack ?? String(e)}`);
    }
  };
  // Events wait for the end of the chunk that carried them: one update prints a line per table (Port
  // before QoS), and a port's new QoS should be described with its type, which comes a line later.
  let queue: (() => OvsEvent)[] = [];
  const emit = (e: OvsEvent | (() => OvsEvent)): void => {
    queue.push(typeof e === "function" ? e : () => e);
  };
  const deliver = (): void => {
    const q = queue;
    queue = [];
    for (const make of q) if (!closed) safely("onEvent", () => opts.onEvent(make()));
  };
  let reported: boolean | undefined;
  const state = (up: boolean, err?: string): void => {
    if (closed || reported === up) return;
    reported = up;
    safely("onState", () => opts.onState?.(up, err));
  };

  const tables: Record<string, Table> = { Interface: new Map(), Port: new Map(), QoS: new Map() };
  let baseline = false;
  let resolveReady!: () => void;
  const ready = new Promise<void>((r) => {
    resolveReady = r;
  });

  // ---- the current session's initial dump
  let dump: Record<string, Table> | undefined;
  let dumpTimer: NodeJS.Timeout | undefined;
  let emptyDbTimer: NodeJS.Timeout | undefined;

  const portsUsingQos = (qos: string): string[] =>
    [...tables.Port.values()].filter((p) => p.qos === qos).map((p) => p.name);
  const qosText = (qos: string | undefined): string => {
    if (!qos || qos === "none") return "none";
    const type = tables.QoS.get(qos)?.type;
    return type ? `${qos} (${type})` : qos;
  };

  /** Events for one row that went from `before` to `after` (either may be missing). */
  const diffRow = (
    table: string,
    before: Row | undefined,
    after: Row | undefined,
    at: number,
    why = "",
  ): void => {
    if (table === "Port") {
      const name = after?.name ?? before?.name;
      if (!before && after) {
        emit(() => {
          const q = after.qos && after.qos !== "none" ? `, qos ${qosText(after.qos)}` : "";
          return { at, kind: "port-added", port: name, detail: `port ${name} added${q}${why}` };
        });
      } else if (before && !after) {
        emit({ at, kind: "port-deleted", port: name, detail: `port ${name} deleted${why}` });
      } else if (before && after && after.qos !== undefined && before.qos !== after.qos) {
        emit(() => ({
          at,
          kind: "qos-changed",
          port: name,
          detail: `port ${name} qos: ${qosText(before.qos)} -> ${qosText(after.qos)}${why}`,
        }));
      }
    } else if (table === "Interface" && before && after) {
      const name = after.name ?? before.name;
      const changed = (c: string) => after[c] !== undefined && before[c] !== after[c];
      if (changed("ingress_policing_rate") || changed("ingress_policing_burst")) {
        emit({
          at,
          kind: "policing-changed",
          port: name,
          detail: `interface ${name} ingress_policing_rate ${before.ingress_policing_rate} -> ${after.ingress_policing_rate}, burst ${before.ingress_policing_burst} -> ${after.ingress_policing_burst}${why}`,
        });
      }
      if (changed("ofport")) {
        emit({
          at,
          kind: "ofport-changed",
          port: name,
          detail: `interface ${name} ofport ${before.ofport} -> ${after.ofport}${why}`,
        });
      }
    } else if (table === "QoS" && before && after) {
      const what = ["type", "other_config", "queues"]
        .filter((c) => after[c] !== undefined && before[c] !== after[c])
        .map((c) => `${c} ${before[c]} -> ${after[c]}`);
      if (!what.length) return;
      for (const port of portsUsingQos(after.uuid ?? "")) {
        emit({ at, kind: "qos-changed", port, detail: `QoS of port ${port}: ${what.join(", ")}${why}` });
      }
    }
  };

  const finishDump = (): void => {
    if (dumpTimer) clearTimeout(dumpTimer);
    dumpTimer = undefined;
    const d = dump;
    dump = undefined;
    if (!d || closed) return;
    const at = preciseNow();
    const why = baseline ? " (while the monitor was disconnected)" : "";
    // Tables in an order that lets each diff see the others' new state: QoS types for the Port events,
    // the ports referencing a QoS row for the QoS events.
    const old = { ...tables };
    for (const t of ["QoS", "Port", "Interface"]) tables[t] = d[t] ?? new Map();
    if (baseline) {
      for (const t of ["Port", "Interface", "QoS"]) {
        for (const [uuid, before] of old[t]) diffRow(t, before, tables[t].get(uuid), at, why);
        for (const [uuid, after] of tables[t]) if (!old[t].has(uuid)) diffRow(t, undefined, after, at, why);
      }
    }
    baseline = true;
    deliver();
    resolveReady();
  };

  const onLine = (line: string): void => {
    if (closed || line === "") return;
    if (emptyDbTimer) clearTimeout(emptyDbTimer);
    emptyDbTimer = undefined;
    state(true);
    const u = parseMonitorLine(line);
    if (!u) {
      if (!/^\{"caption":"/.test(line)) {
        safely("onError", () =>
          opts.onError?.(new Error(`ovsdb-client: unreadable line: ${sanitize(line, 200)}`)),
        );
      }
      // Another table: part of the initial dump (which it may end) or an update; either way nothing to us.
      if (dump) {
        if (dumpTimer) clearTimeout(dumpTimer);
        dumpTimer = setTimeout(finishDump, INITIAL_QUIET_MS);
      }
      return;
    }
    const initial = u.rows.length > 0 && u.rows.every((r) => r.action === "initial");
    if (dump && initial) {
      const t: Table = new Map();
      for (const r of u.rows) t.set(r.uuid, { ...r.cells, uuid: r.uuid });
      dump[u.table] = t;
      if (dumpTimer) clearTimeout(dumpTimer);
      dumpTimer = setTimeout(finishDump, INITIAL_QUIET_MS);
      return;
    }
    // The first update after the dump ends it: the reply that carries the dump comes before any update.
    if (dump) finishDump();
    const at = preciseNow();
    const table = tables[u.table];
    for (const r of u.rows) {
      const before = table.get(r.uuid);
      if (r.action === "insert" || r.action === "initial") {
        const row = { ...r.cells, uuid: r.uuid };
        table.set(r.uuid, row);
        diffRow(u.table, undefined, row, at);
      } else if (r.action === "delete") {
        table.delete(r.uuid);
        if (before) diffRow(u.table, before, undefined, at);
      } else if (r.action === "new") {
        const row = { ...before, ...r.cells, uuid: r.uuid };
        table.set(r.uuid, row);
        diffRow(u.table, before ?? {}, row, at);
      }
    }
  };

  let splitter: LineSplitter | undefined;
  const client = supervise({
    name: "ovsdb-client monitor",
    cmd: opts.ovsdbClient ?? "ovsdb-client",
    args: ["--format=json", "monitor", db, "Open_vSwitch", "ALL"],
    backoffMinMs: opts.backoffMinMs ?? 250,
    backoffMaxMs: opts.backoffMaxMs ?? 5_000,
    onSpawn(child) {
      splitter = new LineSplitter(onLine, deliver);
      dump = {};
      emptyDbTimer = setTimeout(() => {
        if (child.exitCode === null && child.signalCode === null) {
          state(true);
          finishDump();
        }
      }, EMPTY_DB_MS);
    },
    onStdout: (b) => splitter?.push(b),
    onExit(reason, wait) {
      if (emptyDbTimer) clearTimeout(emptyDbTimer);
      if (dumpTimer) clearTimeout(dumpTimer);
      emptyDbTimer = dumpTimer = undefined;
      // A dump cut short is not the database's contents: comparing it would report deletions.
      dump = undefined;
      state(false, `${reason}; retrying in ${wait} ms`);
    },
  });

  // ---- ovs-vswitchd's pidfile
  const runDir = opts.runDir ?? (db.startsWith("unix:") ? dirname(db.slice(5)) : false);
  let pidTimer: NodeJS.Timeout | undefined;
  let watcher: FSWatcher | undefined;
  if (runDir) {
    const pidfile = join(runDir, "ovs-vswitchd.pid");
    let observed = false;
    let last: number | undefined;
    let running = false;
    const check = (): void => {
      if (closed) return;
      const pid = readPid(pidfile);
      const cur = pid !== undefined && alive(pid) ? pid : undefined;
      if (!observed) {
        observed = true;
        last = cur;
        running = cur !== undefined;
        return;
      }
      const at = preciseNow();
      if (cur === undefined) {
        if (running) emit({ at, kind: "vswitchd-stopped", detail: `ovs-vswitchd (pid ${last}) stopped` });
        running = false;
        deliver();
        return;
      }
      if (!running || cur !== last) {
        emit({
          at,
          kind: "vswitchd-restart",
          detail:
            last === undefined
              ? `ovs-vswitchd started (pid ${cur})`
              : last === cur
                ? `ovs-vswitchd (pid ${cur}) running again`
                : `ovs-vswitchd restarted: pid ${last} -> ${cur}`,
        });
      }
      running = true;
      last = cur;
      deliver();
    };
    check();
    pidTimer = setInterval(check, opts.pidPollMs ?? 500);
    pidTimer.unref();
    try {
      // inotify on the directory: the pidfile is written to a temporary name and renamed over.
      watcher = watch(runDir, { persistent: false }, (_e, name) => {
        if (!name || String(name).startsWith("ovs-vswitchd.pid")) check();
      });
      watcher.on("error", () => {
        watcher?.close();
        watcher = undefined;
      });
    } catch {
      // No such directory (OVS not installed or not started yet): the poll still notices a start.
    }
  }

  return {
    ready,
    close() {
      closed = true;
      if (pidTimer) clearInterval(pidTimer);
      if (dumpTimer) clearTimeout(dumpTimer);
      if (emptyDbTimer) clearTimeout(emptyDbTimer);
      watcher?.close();
      return client.close();
    },
    pids() {
      const pid = client.child()?.pid;
      return pid === undefined ? [] : [pid];
    },
    ports() {
      return [...tables.Port.values()].map((p) => {
        const qos = p.qos && p.qos !== "none" ? tables.QoS.get(p.qos)?.type : undefined;
        const ids = new Set((p.interfaces ?? "").split(","));
        const interfaces = [...tables.Interface.values()]
          .filter((i) => ids.has(i.uuid))
          .map((i) => ({
            name: i.name,
            ingressPolicingRate: num(i.ingress_policing_rate),
            ingressPolicingBurst: num(i.ingress_policing_burst),
            ofport: num(i.ofport),
          }));
        return { name: p.name, ...(qos ? { qosType: qos } : {}), interfaces };
      });
    },
  };
}
