import { type ChildProcess, spawn } from "node:child_process";
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { StringDecoder } from "node:string_decoder";
import { PRIO_MAX, PRIO_MIN, ROOT_MAJOR } from "../core/tc/handles.js";

// The drift watcher's ears on the kernel: `tc monitor` and `ip monitor link` as long-lived children, their
// text turned into events. Sensing only: whether an event means virtqos's state is wrong is for whoever
// re-checks the device (an event is also what virtqos's own applies look like from here).
//
// What iproute2 6.1 prints (found by creating and deleting each kind of object in a scratch namespace with
// `tc -ts monitor` and `ip -ts monitor link` running; kernel 6.18). Every message starts with the `-ts`
// stamp, which is what tells a header line from a continuation line:
//
//   qdisc-changed   [2026-11-29T17:59:09.941027] qdisc htb 7651: dev vqa0 root r2q 10 default 0x1 direct_packets_stat 0 direct_qlen 1000
//                   (an add, a change and a replace all print this; nothing tells them apart)
//   qdisc-deleted   [2026-11-29T17:59:10.333838] deleted qdisc htb 7651: dev vqa0 root r2q 10 default 0x1 direct_packets_stat 0 direct_qlen 1000
//                   [2026-11-29T17:59:10.362518] deleted qdisc clsact ffff: dev vqa0 parent ffff:fff1 refcnt 0
//   class-changed   [2026-11-29T17:59:09.973708] class htb 7651:1 dev vqa0 root prio 0 rate 10Mbit ceil 10Mbit burst 1600b cburst 1600b
//   class-deleted   [2026-11-29T17:59:10.238691] deleted class htb 7651:1 dev vqa0 root prio 0 rate 20Mbit ceil 20Mbit burst 1600b cburst 1600b
//   filter-changed  [2026-11-29T17:59:59.046268] added filter dev vqa0 ingress protocol all pref 64000 u32 chain 0 fh 800::800 order 2048 key ht 800 bkt 0 terminal flowid not_in_hw
//                     match 00000000/00000000 at 0
//                   	action order 1: mirred (Egress Redirect to device vqi1) stolen
//                   (also "replaced filter ...", and "filter ..." without a verb for a `tc filter change`;
//                   "added chain dev vqa0 parent ffff: chain 0" comes before a chain's first filter)
//   filter-deleted  [2026-11-29T17:59:10.218754] deleted filter dev vqa0 parent 7651: protocol all pref 5 u32 chain 0
//                   [2026-11-29T17:59:59.099893] deleted chain dev vqa0 parent ffff: chain 0
//                   (a flush, `tc filter del dev X ingress`, prints one line per filter, then the chain's)
//   link-added      [2026-11-29T17:59:10.386780] 4: vqi0123: <BROADCAST,NOARP> mtu 1500 qdisc noop state DOWN group default
//                       link/ether 72:02:0e:22:a8:0f brd ff:ff:ff:ff:ff:ff
//   link-changed    [2026-11-29T17:59:10.435921] 4: vqi0123: <BROADCAST,NOARP,UP,LOWER_UP> mtu 1500 qdisc pfifo_fast state UNKNOWN group default
//                   [2026-11-29T17:59:09.905626] 2: vqa1@vqa0: <NO-CARRIER,BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue state LOWERLAYERDOWN group default
//   link-deleted    [2026-11-29T17:59:10.459643] Deleted 4: vqi0123: <BROADCAST,NOARP> mtu 1500 qdisc noop state DOWN group default
//
// Facts the parsing relies on:
// - `ip -j monitor` prints text, not JSON, on iproute2 6.1 (-j is ignored), so link lines are parsed as text.
// - A new link and a changed one are the same message (RTM_NEWLINK, no verb): "added" means an ifindex not
//   seen before, which needs a snapshot of the links (`ip -j link show`, JSON there) taken after subscribing.
// - Deleting a device prints only its link's "Deleted" line: no tc line for the qdiscs, classes and filters
//   that die with it. Deleting a root qdisc likewise prints one line, not one per class and child qdisc.
// - Replacing a root qdisc prints the old one's "deleted qdisc" line before the new one's.
// - Both tools fflush() after each message, so a message arrives in one read unless it is over a pipe
//   buffer; when a chunk ends mid-line the event waits a little for the rest.
// - Not every line is a change: Open vSwitch queries a port's root qdisc before deleting it, and the kernel
//   echoes the query to listeners ("qdisc htb 7651: dev vqdwv0 root refcnt 3 ..." just before "deleted
//   qdisc htb 7651: ..."); virtqos's own applies print lines too. An event says where to look, not that
//   something is wrong.
// - On a netlink receive buffer overflow (a burst of thousands of changes) both tools print
//   "netlink receive error No buffer space available (105)" on stderr and go on: events were lost.

export type KernelEventKind =
  | "qdisc-deleted"
  | "qdisc-changed"
  | "class-deleted"
  | "class-changed"
  | "filter-deleted"
  | "filter-changed"
  | "link-deleted"
  | "link-added"
  | "link-changed";

export interface KernelEvent {
  /** When the line was read (epoch ms, sub-millisecond). */
  at: number;
  kind: KernelEventKind;
  dev: string;
  /** The message as printed (stamp removed, control characters escaped, capped); for logs, not for parsing. */
  detail: string;
  /** tc: the qdisc/class kind ("htb", "clsact"), the filter kind ("u32"), or "chain". */
  tcKind?: string;
  /** tc: qdisc handle ("7651:"), classid ("7651:1"), filter handle ("800::800"). */
  handle?: string;
  /** tc: "root", "ingress", "egress" or a parent handle ("ffff:fff1", "7651:1"). */
  parent?: string;
  /** tc filters: the priority. */
  pref?: number;
  /** Links: the ifindex (a re-created tap has a new one). */
  ifindex?: number;
}

export type MonitorName = "tc" | "link";

export interface KernelWatchOptions {
  /** A network namespace name (`ip netns`); the host's when undefined. */
  netns?: string;
  onEvent(e: KernelEvent): void;
  /** A monitor exited (it is restarted with back-off), could not start, or lost events. */
  onError?(err: Error): void;
  /**
   * Events may have been missed (a monitor was restarted, or its socket overflowed): check every device
   * again. For links the watch has already reported what differs from before; for tc nothing can be.
   */
  onResync?(monitor: MonitorName, reason: string): void;
  /** Back-off before restarting a monitor that exited: starts here, doubles to backoffMaxMs. */
  backoffMinMs?: number;
  backoffMaxMs?: number;
}

export interface KernelWatch {
  /**
   * Both monitors subscribed and the link snapshot taken: from here on nothing is missed. Pending while a
   * monitor cannot start (onError says why, every retry).
   */
  readonly ready: Promise<void>;
  /** Stop both monitors; resolves once they have exited. */
  close(): Promise<void>;
  /** Pids of the monitor processes running now. */
  pids(): number[];
}

// What the kernel accepts as a name (no "/", ":" or whitespace), minus control characters: no name of
// virtqos's, and not one to pass on.
// biome-ignore lint/suspicious/noControlCharactersInRegex: refusing them is the point
const DEV_RE = /^[^\s/:\x00-\x1f\x7f]{1,15}$/;
const STAMP_RE = /^\[[0-9T:.\- ]{1,40}\] ?/;
const MAX_LINE = 64 * 1024;
const MAX_DETAIL = 2000;
const MAX_CONTINUATION_LINES = 64;
// How long an event whose chunk ended mid-line waits for the rest of its lines.
const CONTINUATION_WAIT_MS = 20;
const STABLE_MS = 10_000;
const READY_POLL_MS = 5;
const READY_TIMEOUT_MS = 5_000;
const SNAPSHOT_TIMEOUT_MS = 15_000;

// biome-ignore lint/suspicious/noControlCharactersInRegex: escaping them is the point
const CONTROL_RE = /[\x00-\x08\x0b-\x1f\x7f]/g;

/** Monitor output is untrusted text: escaped so a device name or alias cannot drive a terminal or a log. */
export function sanitize(text: string, max = MAX_DETAIL): string {
  const clean = text.replace(CONTROL_RE, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
  return clean.length > max ? `${clean.slice(0, max)}...` : clean;
}

// ------------------------------------------------------------------------------------------ parsing

export type ParsedHeader = Omit<KernelEvent, "at" | "detail">;

const QDISC_RE = /^(deleted )?(qdisc|class) (\S+) (\S+) dev (\S+)(?: (.*))?$/;
const FILTER_RE = /^(?:(added|replaced|deleted) )?(filter|chain) dev (\S+)(?: (.*))?$/;
const LINK_RE = /^(Deleted )?(\d{1,10}): (\S+?)(?:@\S*)?: <[^>]*>/;

function parentOf(rest: string): string | undefined {
  const m = /^(root|ingress|egress)\b|^parent (\S+)/.exec(rest);
  return m ? (m[1] ?? m[2]) : undefined;
}

/** A tc monitor header line (stamp removed); undefined for continuation lines and messages not about a device. */
export function parseTcLine(line: string): ParsedHeader | undefined {
  const q = QDISC_RE.exec(line);
  if (q) {
    const [, deleted, what, tcKind, handle, dev, rest = ""] = q;
    if (!DEV_RE.test(dev)) return undefined;
    const kind = `${what}-${deleted ? "deleted" : "changed"}` as KernelEventKind;
    return { kind, dev, tcKind, handle, parent: parentOf(rest) };
  }
  const f = FILTER_RE.exec(line);
  if (f) {
    const [, verb, what, dev, rest = ""] = f;
    if (!DEV_RE.test(dev)) return undefined;
    const e: ParsedHeader = {
      kind: verb === "deleted" ? "filter-deleted" : "filter-changed",
      dev,
      parent: parentOf(rest),
    };
    if (what === "chain") e.tcKind = "chain";
    else {
      const pref = /\bpref (\d{1,5})\b/.exec(rest);
      if (pref) e.pref = Number(pref[1]);
      const kind = /\bpref \d+ (\S+)/.exec(rest);
      if (kind) e.tcKind = kind[1];
      const fh = /\bfh (\S+)/.exec(rest);
      if (fh) e.handle = fh[1];
    }
    return e;
  }
  return undefined;
}

/** An `ip monitor link` header line (stamp removed): added/changed is decided later, by ifindex. */
export function parseLinkLine(line: string): { deleted: boolean; ifindex: number; dev: string } | undefined {
  const m = LINK_RE.exec(line);
  if (!m || !DEV_RE.test(m[3])) return undefined;
  return { deleted: m[1] !== undefined, ifindex: Number(m[2]), dev: m[3] };
}

/** Whether a tc event is about one of virtqos's own objects, by the handles and priorities it uses. */
export function isVirtqosTcObject(e: KernelEvent): boolean {
  const major = (h: string | undefined) => h?.split(":")[0];
  if (e.kind.startsWith("qdisc-") || e.kind.startsWith("class-")) {
    return major(e.handle) === ROOT_MAJOR || major(e.parent) === ROOT_MAJOR;
  }
  if (e.kind.startsWith("filter-")) {
    if (e.pref !== undefined) return e.pref >= PRIO_MIN && e.pref <= PRIO_MAX;
    return major(e.parent) === ROOT_MAJOR;
  }
  return false;
}

/**
 * Splits a monitor's stdout into messages: a header line and the continuation lines after it. A message
 * is complete when the next header comes or the chunk that carried it ends on a line boundary.
 */
export class MessageReader {
  private partial = "";
  private readonly decoder = new StringDecoder("utf8");
  private pending: { at: number; lines: string[] } | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly emit: (lines: string[], at: number) => void,
    private readonly isHeader: (line: string) => boolean = (l) => STAMP_RE.test(l),
  ) {}

  push(chunk: Buffer, at: number): void {
    const lines = (this.partial + this.decoder.write(chunk)).split("\n");
    this.partial = lines.pop() ?? "";
    // A line this long is no monitor output: dropped rather than held.
    if (this.partial.length > MAX_LINE) this.partial = "";
    for (const line of lines) this.line(line, at);
    if (this.partial === "") this.flush();
    else if (this.pending && !this.timer) this.timer = setTimeout(() => this.flush(), CONTINUATION_WAIT_MS);
  }

  end(): void {
    if (this.partial !== "") this.line(this.partial, Date.now());
    this.partial = "";
    this.flush();
  }

  private line(raw: string, at: number): void {
    const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    if (this.isHeader(line)) {
      this.flush();
      this.pending = { at, lines: [line] };
    } else if (line.trim() !== "" && this.pending && this.pending.lines.length < MAX_CONTINUATION_LINES) {
      this.pending.lines.push(line);
    }
  }

  private flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const p = this.pending;
    this.pending = undefined;
    if (p) this.emit(p.lines, p.at);
  }
}

// ------------------------------------------------------------------------------------------ processes

/** Epoch milliseconds with the monotonic clock's resolution, for latencies below a millisecond. */
export const preciseNow = (): number => performance.timeOrigin + performance.now();

// Monitors still running, killed when this process exits: Node does not, and a `tc monitor` left behind
// keeps a namespace's netlink socket and runs forever.
const live = new Set<ChildProcess>();
let exitHook = false;

function stop(child: ChildProcess, signal: NodeJS.Signals = "SIGKILL"): void {
  // A child whose spawn failed has no pid; kill() on it would signal pid 0 (our own process group).
  if (child.pid === undefined || child.pid <= 0) return;
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill(signal);
}

export interface SupervisedChild {
  /** The running child, if any. */
  child(): ChildProcess | undefined;
  /** Kill the child now (it is restarted with back-off, as if it had died). */
  restart(): void;
  close(): Promise<void>;
}

export interface SuperviseOptions {
  name: string;
  cmd: string;
  args: string[];
  env?: NodeJS.ProcessEnv;
  backoffMinMs: number;
  backoffMaxMs: number;
  /** A new child runs; `restarted` is false for the first one. */
  onSpawn(child: ChildProcess, restarted: boolean): void;
  onStdout(chunk: Buffer, at: number): void;
  onStderr?(text: string): void;
  /** The child exited (not by close()): why, and the delay before the next one. */
  onExit(reason: string, retryInMs: number): void;
}

/**
 * One long-lived child, restarted with exponential back-off whenever it exits; a child that ran for
 * STABLE_MS was a good one and resets the back-off. Arguments are an array, never a shell string.
 */
export function supervise(o: SuperviseOptions): SupervisedChild {
  let closed = false;
  let current: ChildProcess | undefined;
  let retry: NodeJS.Timeout | undefined;
  let delay = o.backoffMinMs;
  let started = 0;
  const exited = new Set<Promise<void>>();

  const start = (): void => {
    retry = undefined;
    if (closed) return;
    const c = spawn(o.cmd, o.args, {
      stdio: ["ignore", "pipe", "pipe"],
      env: o.env ?? { ...process.env, LC_ALL: "C" },
    });
    current = c;
    live.add(c);
    if (!exitHook) {
      exitHook = true;
      process.on("exit", () => {
        for (const x of live) stop(x);
      });
    }
    const upSince = Date.now();
    let stderr = "";
    let spawnError: string | undefined;
    const done = new Promise<void>((resolve) => c.once("close", () => resolve()));
    exited.add(done);
    void done.then(() => exited.delete(done));
    c.stdout?.on("data", (b: Buffer) => {
      if (!closed) o.onStdout(b, preciseNow());
    });
    c.stderr?.on("data", (b: Buffer) => {
      const text = b.toString("utf8");
      stderr = (stderr + text).slice(-4096);
      if (!closed) o.onStderr?.(text);
    });
    c.on("error", (e: NodeJS.ErrnoException) => {
      spawnError = e.code === "ENOENT" ? `${o.cmd} is not installed or not on PATH` : e.message;
    });
    c.on("close", (code, signal) => {
      live.delete(c);
      if (current === c) current = undefined;
      if (closed) return;
      if (Date.now() - upSince >= STABLE_MS) delay = o.backoffMinMs;
      const wait = delay;
      delay = Math.min(delay * 2, o.backoffMaxMs);
      const last = sanitize(stderr.trim().split("\n").pop() ?? "", 300);
      const reason =
        spawnError ??
        `${o.name} exited ${signal ? `by ${signal}` : `with ${code}`}${last ? `: ${last}` : ""}`;
      retry = setTimeout(start, wait);
      o.onExit(reason, wait);
    });
    o.onSpawn(c, started++ > 0);
  };

  start();
  return {
    child: () => current,
    restart() {
      if (current) stop(current);
    },
    close() {
      closed = true;
      if (retry) clearTimeout(retry);
      retry = undefined;
      const c = current;
      current = undefined;
      if (c) {
        stop(c, "SIGTERM");
        // A monitor blocked writing to a full pipe or stopped by a debugger does not answer SIGTERM.
        const hard = setTimeout(() => stop(c), 1000);
        c.once("close", () => clearTimeout(hard));
      }
      return Promise.all([...exited]).then(() => undefined);
    },
  };
}

/**
 * Resolves once the process `pid` holds a netlink socket bound to multicast groups, i.e. the monitor is
 * subscribed and the next change reaches it. Read from /proc: the socket inodes among its fds, looked up
 * in its own namespace's /proc/<pid>/net/netlink (Groups column non-zero).
 */
export function netlinkSubscribed(pid: number, timeoutMs = READY_TIMEOUT_MS): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  const check = (): boolean => {
    const inodes = new Set<string>();
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      try {
        const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
        if (m) inodes.add(m[1]);
      } catch {
        // The fd closed while we looked.
      }
    }
    if (!inodes.size) return false;
    const rows = readFileSync(`/proc/${pid}/net/netlink`, "utf8").split("\n").slice(1);
    return rows.some((row) => {
      const f = row.trim().split(/\s+/);
      // sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
      return f.length >= 10 && f[1] === "0" && !/^0+$/.test(f[3]) && inodes.has(f[9]);
    });
  };
  return new Promise((resolve) => {
    const poll = (): void => {
      let ok = false;
      try {
        ok = check();
      } catch {
        // The process is gone (or not yet exec'd into the monitor): "not yet".
      }
      if (ok) resolve(true);
      else if (Date.now() >= deadline) resolve(false);
      else setTimeout(poll, READY_POLL_MS);
    };
    poll();
  });
}

/** `ip -j link show` as ifindex → name; the one place ip speaks JSON on this iproute2. */
function linkSnapshot(netns: string | undefined): Promise<Map<number, string>> {
  return new Promise((resolve, reject) => {
    const args = [...(netns ? ["-n", netns] : []), "-j", "link", "show"];
    const c = spawn("ip", args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, LC_ALL: "C" } });
    const out: Buffer[] = [];
    let err = "";
    const timer = setTimeout(() => stop(c), SNAPSHOT_TIMEOUT_MS);
    c.stdout.on("data", (b: Buffer) => out.push(b));
    c.stderr.on("data", (b: Buffer) => {
      err = (err + b.toString("utf8")).slice(-2000);
    });
    c.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    c.on("close", (code) => {
      clearTimeout(timer);
      if (code !== 0)
        return reject(new Error(`ip ${args.join(" ")} exited ${code}: ${sanitize(err.trim(), 300)}`));
      try {
        const parsed: unknown = JSON.parse(Buffer.concat(out).toString("utf8") || "[]");
        const links = new Map<number, string>();
        for (const l of Array.isArray(parsed) ? parsed : []) {
          const { ifindex, ifname } = (l ?? {}) as { ifindex?: unknown; ifname?: unknown };
          if (Number.isInteger(ifindex) && typeof ifname === "string" && DEV_RE.test(ifname)) {
            links.set(ifindex as number, ifname);
          }
        }
        resolve(links);
      } catch (e) {
        reject(new Error(`ip -j link show: unreadable output (${(e as Error).message})`));
      }
    });
  });
}

// ------------------------------------------------------------------------------------------ the watch

/**
 * Follows the kernel's tc and link changes in one namespace with `tc -ts monitor` and `ip -ts monitor
 * link` (`-n NS` for a namespace). Each monitor is restarted with back-off if it exits; after a restart
 * (and after a netlink overflow) onResync says events may be missing. Callbacks that throw cannot break
 * the watch: what they throw becomes a warning.
 */
export function watchKernel(opts: KernelWatchOptions): KernelWatch {
  const nsArgs = opts.netns ? ["-n", opts.netns] : [];
  const backoffMinMs = opts.backoffMinMs ?? 100;
  const backoffMaxMs = opts.backoffMaxMs ?? 10_000;
  let closed = false;
  const safely = (what: string, fn: () => void): void => {
    try {
      fn();
    } catch (e) {
      process.emitWarning(`kernel watch: ${what} threw: ${(e as Error)?.stack ?? String(e)}`);
    }
  };
  const emit = (e: KernelEvent): void => {
    if (!closed) safely("onEvent", () => opts.onEvent(e));
  };
  const error = (err: Error): void => {
    if (!closed) safely("onError", () => opts.onError?.(err));
  };
  const resync = (m: MonitorName, reason: string): void => {
    if (!closed) safely("onResync", () => opts.onResync?.(m, reason));
  };
  const overflow = (m: MonitorName) => (text: string) => {
    if (/No buffer space|ENOBUFS/.test(text)) {
      error(new Error(`${m} monitor lost events: ${sanitize(text.trim(), 300)}`));
      resync(m, "netlink receive buffer overflow");
    }
  };

  // ---- tc
  let resolveTc!: () => void;
  const tcReady = new Promise<void>((r) => {
    resolveTc = r;
  });
  let tcReader: MessageReader | undefined;
  let tcUp = false;
  const tc = supervise({
    name: "tc monitor",
    cmd: "tc",
    args: [...nsArgs, "-ts", "monitor"],
    backoffMinMs,
    backoffMaxMs,
    onSpawn(child) {
      tcReader = new MessageReader((lines, at) => {
        const header = lines[0].replace(STAMP_RE, "");
        const p = parseTcLine(header);
        if (p) emit({ at, ...p, detail: sanitize([header, ...lines.slice(1)].join("\n")) });
      });
      void subscribed(child, "tc").then((ok) => {
        if (!ok) return;
        // Only a monitor that had been listening can have missed anything.
        if (tcUp) resync("tc", "tc monitor restarted");
        tcUp = true;
        resolveTc();
      });
    },
    onStdout: (b, at) => tcReader?.push(b, at),
    onStderr: overflow("tc"),
    onExit(reason, wait) {
      tcReader?.end();
      error(new Error(`${reason}; restarting in ${wait} ms`));
    },
  });

  // ---- links
  let known: Map<number, string> | undefined;
  // Messages that arrived between subscribing and the snapshot: applied on top of it.
  let queued: { lines: string[]; at: number }[] | undefined;
  let resolveLink!: () => void;
  const linkReady = new Promise<void>((r) => {
    resolveLink = r;
  });
  let linkReader: MessageReader | undefined;
  let linkUp = false;
  let linkGen = 0;

  const onLinkMessage = (lines: string[], at: number): void => {
    if (queued) {
      queued.push({ lines, at });
      return;
    }
    const header = lines[0].replace(STAMP_RE, "");
    const p = parseLinkLine(header);
    if (!p) return;
    const detail = sanitize([header, ...lines.slice(1)].join("\n"));
    const before = known?.get(p.ifindex);
    if (p.deleted) {
      known?.delete(p.ifindex);
      emit({ at, kind: "link-deleted", dev: p.dev, ifindex: p.ifindex, detail });
      return;
    }
    known?.set(p.ifindex, p.dev);
    // Without a snapshot (it failed) nothing is known to be new: "changed" is the safe word.
    const added = known !== undefined && before === undefined;
    const renamed = before !== undefined && before !== p.dev ? `\n(renamed from ${before})` : "";
    emit({
      at,
      kind: added ? "link-added" : "link-changed",
      dev: p.dev,
      ifindex: p.ifindex,
      detail: detail + renamed,
    });
  };

  const takeSnapshot = async (gen: number): Promise<boolean> => {
    let fresh: Map<number, string> | undefined;
    try {
      fresh = await linkSnapshot(opts.netns);
    } catch (e) {
      error(new Error(`link snapshot failed: ${(e as Error).message}`));
    }
    if (closed || gen !== linkGen) return false;
    if (known && fresh) {
      const at = preciseNow();
      for (const [ifindex, dev] of known) {
        if (!fresh.has(ifindex)) {
          emit({
            at,
            kind: "link-deleted",
            dev,
            ifindex,
            detail: `${ifindex}: ${dev} gone while the link monitor was down`,
          });
        }
      }
      for (const [ifindex, dev] of fresh) {
        const was = known.get(ifindex);
        if (was === undefined) {
          emit({
            at,
            kind: "link-added",
            dev,
            ifindex,
            detail: `${ifindex}: ${dev} appeared while the link monitor was down`,
          });
        } else if (was !== dev) {
          emit({
            at,
            kind: "link-changed",
            dev,
            ifindex,
            detail: `${ifindex}: ${dev} renamed from ${was} while the link monitor was down`,
          });
        }
      }
    }
    known = fresh;
    const backlog = queued ?? [];
    queued = undefined;
    for (const m of backlog) onLinkMessage(m.lines, m.at);
    return true;
  };

  const link = supervise({
    name: "ip monitor link",
    cmd: "ip",
    args: [...nsArgs, "-ts", "monitor", "link"],
    backoffMinMs,
    backoffMaxMs,
    onSpawn(child) {
      const gen = ++linkGen;
      queued = [];
      linkReader = new MessageReader(onLinkMessage);
      void subscribed(child, "link").then(async (ok) => {
        if (!ok) return;
        // Superseded (this monitor died during its snapshot): the next one takes its own.
        if (!(await takeSnapshot(gen))) return;
        if (linkUp) resync("link", "ip monitor restarted");
        linkUp = true;
        resolveLink();
      });
    },
    onStdout: (b, at) => linkReader?.push(b, at),
    onStderr: overflow("link"),
    onExit(reason, wait) {
      linkReader?.end();
      error(new Error(`${reason}; restarting in ${wait} ms`));
    },
  });

  async function subscribed(child: ChildProcess, m: MonitorName): Promise<boolean> {
    if (child.pid === undefined) return false;
    const ok = await netlinkSubscribed(child.pid);
    if (closed || child.exitCode !== null || child.signalCode !== null) return false;
    if (!ok) {
      // It runs but shows no subscription (no /proc?): proceed, at worst the first changes are missed.
      error(new Error(`${m} monitor (pid ${child.pid}) not seen subscribed within ${READY_TIMEOUT_MS} ms`));
    }
    return true;
  }

  return {
    ready: Promise.all([tcReady, linkReady]).then(() => undefined),
    close() {
      closed = true;
      return Promise.all([tc.close(), link.close()]).then(() => undefined);
    },
    pids() {
      return [tc.child()?.pid, link.child()?.pid].filter((p): p is number => p !== undefined);
    },
  };
}
