import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { CommandKilledError, CommandMissingError, type ExecResult } from "./exec.js";

// A long-lived `tc -batch -` / `ip -batch -`, for the agent. Every new tc process first lists every link of
// the namespace to build its name cache (iproute2's ll_init_map): on a host of 3000 links that is 20-40 ms
// before the first line runs, more than the change itself. A process kept open pays it once.
//
// iproute2 in batch mode flushes stdout after every JSON answer, but prints nothing between commands, so the
// end of a request is marked: after the caller's lines comes a query whose answer is known to be one JSON
// line and costs nothing (the filters of the loopback device's ingress: "[]"; a qdisc show would walk every qdisc
// of the namespace). What comes before it is the caller's output.
//
// - tc runs without -force: a failing line ends the process with "Command failed -:N" (N counted over the
//   whole session), exactly as a one-shot batch stops, and the next request starts a fresh process. Its
//   answers are counted: every `qdisc show` and `filter show` prints one JSON line, `class show` only text
//   lines (HTB classes have no JSON form in iproute2 6.1), a change prints nothing.
// - ip runs with -force, so a `link show dev X` of a device that does not exist is an answer ("absent"),
//   not the end of the session; the marker is recognised by its device name, which no request asks for.
//
// tc's name cache is never refreshed: a tap deleted and re-created under the same name keeps its old ifindex
// there, and every line naming it fails with "Cannot find device". That failure is what callers see; they
// retry with fresh processes, and the session is restarted (restart()) when links come and go.

const TC_MARKER = "filter show dev lo ingress";
const IP_MARKER = "link show dev lo";

export interface SessionOptions {
  netns?: string;
  /** Options before `-batch -`: tc takes "-j" or "-d", "-j" (they change what qdiscs print); ip always has "-j", "-force". */
  flags?: readonly string[];
  /** A request without its marker after this long kills the session (a hung tc). Default 5 s. */
  timeoutMs?: number;
}

interface Pending {
  /** JSON lines still expected (tc) before the marker's; the marker itself is the last. */
  jsonLeft: number;
  lines: string[];
  resolve(r: ExecResult): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
  firstLine: number;
  isMarker(line: string): boolean;
}

/** One persistent iproute2 process; requests run one after another. */
export class BatchSession {
  private child?: ChildProcessWithoutNullStreams;
  private pending?: Pending;
  private stderr = "";
  /** Lines written to the current process, for mapping "Command failed -:N" back to a request's line. */
  private written = 0;
  private chain: Promise<unknown> = Promise.resolve();
  private closed = false;
  /** Processes started, for tests and the benchmark. */
  starts = 0;

  constructor(
    readonly tool: "tc" | "ip",
    private readonly opts: SessionOptions = {},
  ) {}

  /**
   * Run `lines` (no newline inside any) and return what a one-shot `<tool> -batch -` would have: exit code
   * 0 and the output, or 1 with iproute2's own "Command failed -:N" numbered within `lines`.
   */
  run(lines: readonly string[]): Promise<ExecResult> {
    const next = this.chain.then(() => this.request(lines));
    this.chain = next.catch(() => undefined);
    return next;
  }

  /** End the current process (the next request starts a fresh one): links came or went. */
  restart(): void {
    const c = this.child;
    this.child = undefined;
    if (c) {
      c.stdin.end();
      c.kill("SIGKILL");
    }
  }

  close(): void {
    this.closed = true;
    this.restart();
  }

  private start(): ChildProcessWithoutNullStreams {
    const ns = this.opts.netns ? ["-n", this.opts.netns] : [];
    const flags = this.tool === "tc" ? (this.opts.flags ?? ["-j"]) : ["-j", "-force"];
    const args = [...ns, ...flags, "-batch", "-"];
    const child = spawn(this.tool, args, { stdio: ["pipe", "pipe", "pipe"] });
    this.starts++;
    this.written = 0;
    this.stderr = "";
    child.stdin.on("error", () => {
      // The process ended (a failed line); its exit reports why.
    });
    child.stderr.setEncoding("utf8").on("data", (s: string) => {
      if (this.child === child) this.stderr += s;
    });
    createInterface({ input: child.stdout }).on("line", (line) => {
      if (this.child === child) this.onLine(line);
    });
    child.on("error", (e: NodeJS.ErrnoException) => {
      if (this.child === child) this.child = undefined;
      this.fail(
        e.code === "ENOENT" ? new CommandMissingError(`${this.tool} is not installed or not on PATH`) : e,
      );
    });
    child.on("close", (code, signal) => {
      if (this.child === child) this.child = undefined;
      const p = this.pending;
      if (!p) return;
      this.pending = undefined;
      clearTimeout(p.timer);
      if (signal) {
        p.reject(new CommandKilledError(`${this.tool} session was killed by ${signal}`));
        return;
      }
      // Numbered over the session: renumber within this request, as a one-shot batch would print it.
      const stderr = this.stderr.replace(
        /Command failed -:(\d+)/g,
        (_, n: string) => `Command failed -:${Number(n) - p.firstLine}`,
      );
      p.resolve({ code: code || 1, stdout: p.lines.map((l) => `${l}\n`).join(""), stderr });
    });
    this.child = child;
    return child;
  }

  private request(lines: readonly string[]): Promise<ExecResult> {
    if (this.closed) return Promise.reject(new CommandKilledError(`${this.tool} session closed`));
    if (lines.some((l) => l.includes("\n"))) throw new Error("a batch line cannot hold a newline");
    const child = this.child ?? this.start();
    const jsonLines = this.tool === "tc" ? lines.filter((l) => /^(qdisc|filter) show\b/.test(l)).length : 0;
    return new Promise<ExecResult>((resolve, reject) => {
      const timeoutMs = this.opts.timeoutMs ?? 5000;
      this.stderr = "";
      this.pending = {
        jsonLeft: jsonLines,
        lines: [],
        resolve,
        reject,
        firstLine: this.written,
        timer: setTimeout(() => {
          this.fail(new CommandKilledError(`${this.tool} session: no answer after ${timeoutMs} ms`));
          this.restart();
        }, timeoutMs),
        isMarker: (line) =>
          this.tool === "tc" ? line.startsWith("[") : /^\[\{[^{}]*"ifname":"lo"[,}]/.test(line),
      };
      this.written += lines.length + 1;
      child.stdin.write(`${[...lines, this.tool === "tc" ? TC_MARKER : IP_MARKER].join("\n")}\n`);
    });
  }

  private onLine(line: string): void {
    const p = this.pending;
    if (!p) return;
    if (this.tool === "tc" && line.startsWith("[") && p.jsonLeft > 0) {
      p.jsonLeft--;
      p.lines.push(line);
      return;
    }
    if (!p.isMarker(line)) {
      p.lines.push(line);
      return;
    }
    this.pending = undefined;
    clearTimeout(p.timer);
    p.resolve({ code: 0, stdout: p.lines.map((l) => `${l}\n`).join(""), stderr: this.stderr });
  }

  private fail(e: Error): void {
    const p = this.pending;
    if (!p) return;
    this.pending = undefined;
    clearTimeout(p.timer);
    p.reject(e);
  }
}
