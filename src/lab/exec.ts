/**
 * Process helpers for the lab: every command is spawned from an argument array (never a shell
 * string), so names and addresses coming from callers can never be interpreted by a shell.
 */
import { type ChildProcess, spawn } from "node:child_process";

export interface RunOptions {
  /** Written to the child's stdin, which is then closed. */
  input?: string;
  /** Run inside this network namespace (via `ip netns exec`). */
  netns?: string;
  /** Kill the child (SIGKILL) and reject after this many milliseconds. */
  timeoutMs?: number;
  /** Resolve with the exit code instead of throwing when the command fails. */
  allowFail?: boolean;
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export class CommandError extends Error {
  constructor(
    message: string,
    readonly commandLine: string,
    readonly result: RunResult | undefined,
  ) {
    super(message);
    this.name = "CommandError";
  }
}

/**
 * `ip netns exec` setns()es and then execs the command in place, so the pid we get back is the
 * command itself: signals reach it directly and no wrapper process can be left behind.
 */
function argv(cmd: string, args: string[], netns: string | undefined): [string, string[]] {
  return netns === undefined ? [cmd, args] : ["ip", ["netns", "exec", netns, cmd, ...args]];
}

/** Quoting only for messages; nothing is ever executed from this string. */
export function formatCommandLine(cmd: string, args: string[], netns?: string): string {
  const [c, a] = argv(cmd, args, netns);
  return [c, ...a].map((s) => (/^[\w@%+=:,./-]+$/.test(s) ? s : JSON.stringify(s))).join(" ");
}

/**
 * Background children still alive. Node does not kill children when it exits, so a crashed test
 * would otherwise leave iperf3 servers running inside namespaces (which also keeps them busy).
 */
const liveChildren = new Set<ChildProcess>();
let exitHookInstalled = false;

function track(child: ChildProcess): void {
  liveChildren.add(child);
  child.once("exit", () => liveChildren.delete(child));
  child.once("error", () => liveChildren.delete(child));
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    // 'exit' handlers must be synchronous; process.kill is, which is all we need here.
    process.on("exit", () => {
      for (const c of liveChildren) {
        try {
          c.kill("SIGKILL");
        } catch {
          // already gone
        }
      }
    });
  }
}

export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const [c, a] = argv(cmd, args, opts.netns);
  const commandLine = formatCommandLine(cmd, args, opts.netns);
  return new Promise<RunResult>((resolve, reject) => {
    const child = spawn(c, a, { stdio: ["pipe", "pipe", "pipe"] });
    track(child);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    let settled = false;
    const timer =
      opts.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            timedOut = true;
            child.kill("SIGKILL");
          }, opts.timeoutMs);

    child.stdout?.on("data", (d: Buffer) => out.push(d));
    child.stderr?.on("data", (d: Buffer) => err.push(d));
    child.on("error", (e) => {
      if (settled) return;
      settled = true;
      if (timer) clearTimeout(timer);
      reject(new CommandError(`failed to start ${commandLine}: ${e.message}`, commandLine, undefined));
    });
    // 'close' (not 'exit') so that all output has been read.
    child.on("close", (code, signal) => {
      if (settled) return;
      settled = true;
      if (timer) clearTimeout(timer);
      const result: RunResult = {
        code: code ?? 128,
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8"),
      };
      if (timedOut) {
        reject(new CommandError(`timed out after ${opts.timeoutMs} ms: ${commandLine}`, commandLine, result));
        return;
      }
      if (result.code !== 0 && !opts.allowFail) {
        const why = signal ? `killed by ${signal}` : `exit code ${result.code}`;
        const detail = (result.stderr.trim() || result.stdout.trim()).slice(0, 2000);
        reject(new CommandError(`${commandLine} failed (${why}): ${detail}`, commandLine, result));
        return;
      }
      resolve(result);
    });

    // A child that exits without reading stdin makes our write fail with EPIPE; that is not an
    // error of the command, its exit status says what happened.
    child.stdin?.on("error", () => {});
    child.stdin?.end(opts.input ?? "");
  });
}

export interface BackgroundOptions {
  netns?: string;
}

export interface BackgroundProcess {
  readonly pid: number | undefined;
  readonly commandLine: string;
  /** Resolves when the process has exited, with everything it printed. Never rejects. */
  readonly done: Promise<RunResult>;
  /** True once the process has exited. */
  readonly exited: boolean;
  /**
   * Terminate (SIGTERM, then SIGKILL after graceMs) and wait for exit. Safe to call repeatedly
   * and after the process ended by itself.
   */
  stop(graceMs?: number): Promise<RunResult>;
}

/** Start a long-running process (e.g. `iperf3 -s`); output is collected until it exits. */
export function spawnBackground(
  cmd: string,
  args: string[],
  opts: BackgroundOptions = {},
): BackgroundProcess {
  const [c, a] = argv(cmd, args, opts.netns);
  const commandLine = formatCommandLine(cmd, args, opts.netns);
  // stdin is /dev/null: servers never need it and an open pipe would keep nothing useful alive.
  const child = spawn(c, a, { stdio: ["ignore", "pipe", "pipe"] });
  track(child);
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  child.stdout?.on("data", (d: Buffer) => out.push(d));
  child.stderr?.on("data", (d: Buffer) => err.push(d));
  let exited = false;
  const done = new Promise<RunResult>((resolve) => {
    const finish = (code: number, extraErr = ""): void => {
      if (exited) return;
      exited = true;
      resolve({
        code,
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8") + extraErr,
      });
    };
    child.on("error", (e) => finish(127, `failed to start: ${e.message}`));
    child.on("close", (code) => finish(code ?? 128));
  });

  return {
    pid: child.pid,
    commandLine,
    done,
    get exited() {
      return exited;
    },
    async stop(graceMs = 1000) {
      if (!exited) {
        child.kill("SIGTERM");
        const timer = setTimeout(() => {
          if (!exited) child.kill("SIGKILL");
        }, graceMs);
        try {
          await done;
        } finally {
          clearTimeout(timer);
        }
      }
      return done;
    },
  };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
