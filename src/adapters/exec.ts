import { type ChildProcess, spawn } from "node:child_process";
import type { Writable } from "node:stream";
import { VirtqosError } from "../core/errors.js";

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs iproute2 and friends. Tests substitute a recording runner; nothing else ever builds a shell string. */
export interface Runner {
  run(cmd: string, args: string[], input?: string): Promise<ExecResult>;
  /**
   * Start the command now, write `head` now and `tail` once it resolves, then close its stdin. A batch whose
   * last lines must wait for another process (tc lines on an IFB `ip` is still creating) starts early, so its
   * start-up overlaps that process instead of following it: on a guest start, one process round trip less.
   * Optional: without it, callers wait for `tail` and call run().
   */
  runStaged?(cmd: string, args: string[], head: string, tail: Promise<string>): Promise<ExecResult>;
}

/** A runner that spawns real processes and can stop the ones still running (the hook's wall-clock guard). */
export interface ProcessRunner extends Runner {
  /** SIGKILL every child this runner started that has not exited; returns their command lines. */
  kill(): string[];
  /** Command lines of the children still running. */
  running(): string[];
  /** kill(), and from now on refuse to start anything (a caller that gave up on its work, lock released). */
  close(): string[];
}

export class CommandMissingError extends VirtqosError {
  constructor(message: string) {
    super("COMMAND_MISSING", message);
  }
}

/**
 * The command was killed by a signal (its timeout, the hook's deadline, anyone): its output is incomplete and
 * its exit status means nothing, so this is an error rather than a result. A killed `tc -batch` prints no
 * "Command failed" line, and a caller reading that as success (the probe: "every feature works") would be wrong.
 */
export class CommandKilledError extends VirtqosError {
  constructor(message: string) {
    super("COMMAND_KILLED", message);
  }
}

// Told the pid of every child as it starts: the engine's lock file records them, so a process that finds the
// lock's owner dead can also stop the `tc -batch` that owner left running (SIGKILL does not reach children).
const spawnListeners = new Set<(pid: number) => void>();

export function onChildSpawn(listener: (pid: number) => void): () => void {
  spawnListeners.add(listener);
  return () => spawnListeners.delete(listener);
}

// Every child any processRunner started and that is still running. Node does not kill children when it
// exits: whoever calls process.exit() (the hook's guard, its last-resort error handler) must not leave a
// hung `tc` behind, so they are killed on exit.
const live = new Map<ChildProcess, string>();
let exitHandler = false;

/**
 * SIGKILL a child, but only one that really runs: a child whose spawn failed (a missing command) has no pid
 * until its 'error' event, and killing it then made libuv call kill(0, SIGKILL), which kills the caller's
 * whole process group (the hook's: libvirtd).
 */
function stop(child: ChildProcess): void {
  if (child.pid === undefined || child.pid <= 0) return;
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGKILL");
}

/**
 * Spawn with an argument array; `netns` prefixes `-n <ns>` for tc and ip so one host can hold many labs.
 * A child still running after `timeoutMs` is killed (SIGKILL) and reported as failed.
 */
export function processRunner(opts: { netns?: string; timeoutMs?: number } = {}): ProcessRunner {
  const mine = new Set<ChildProcess>();
  let closed = false;

  function start(cmd: string, args: string[], feed: (stdin: Writable) => void): Promise<ExecResult> {
    const fullArgs = opts.netns && (cmd === "tc" || cmd === "ip") ? ["-n", opts.netns, ...args] : args;
    if (closed)
      return Promise.reject(
        new CommandKilledError(`\`${[cmd, ...fullArgs].join(" ")}\` not started: given up`),
      );
    return new Promise((resolve, reject) => {
      const child = spawn(cmd, fullArgs, { stdio: ["pipe", "pipe", "pipe"] });
      const line = [cmd, ...fullArgs].join(" ");
      if (child.pid !== undefined) for (const l of spawnListeners) l(child.pid);
      live.set(child, line);
      mine.add(child);
      if (!exitHandler) {
        exitHandler = true;
        process.on("exit", () => {
          for (const c of live.keys()) stop(c);
        });
      }
      // Our own timer, not spawn()'s `timeout` option: Node clears that one only on 'exit', which a
      // command that is not installed (ENOENT) never emits, so the process stayed alive for the full
      // timeout after the error had been reported (the hook "hung" for 60 s without ip/tc).
      const timeoutMs = opts.timeoutMs ?? 60_000;
      let timedOut = false;
      const timer = setTimeout(() => {
        timedOut = true;
        stop(child);
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        live.delete(child);
        mine.delete(child);
      };
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      child.stdout.on("data", (b: Buffer) => out.push(b));
      child.stderr.on("data", (b: Buffer) => err.push(b));
      child.on("error", (e: NodeJS.ErrnoException) => {
        done();
        if (e.code === "ENOENT") reject(new CommandMissingError(`${cmd} is not installed or not on PATH`));
        else reject(e);
      });
      child.on("close", (code, signal) => {
        done();
        if (signal)
          reject(
            new CommandKilledError(
              `\`${line}\` was killed by ${signal}${timedOut ? ` after ${timeoutMs} ms` : ""}`,
            ),
          );
        else
          resolve({
            code: code ?? 1,
            stdout: Buffer.concat(out).toString("utf8"),
            stderr: Buffer.concat(err).toString("utf8"),
          });
      });
      child.stdin.on("error", () => {
        // The child may exit before reading all input (e.g. a batch that fails on line 1); its exit code says why.
      });
      feed(child.stdin);
    });
  }

  return {
    run(cmd, args, input) {
      return start(cmd, args, (stdin) => stdin.end(input ?? ""));
    },
    runStaged(cmd, args, head, tail) {
      return start(cmd, args, (stdin) => {
        if (head) stdin.write(head);
        // A tail that failed (the process it waited for did) ends the batch after its head.
        tail.then(
          (rest) => stdin.end(rest),
          () => stdin.end(),
        );
      });
    },
    kill() {
      const running = [...mine].filter((c) => c.pid !== undefined);
      for (const c of running) stop(c);
      return running.map((c) => live.get(c) ?? "?");
    },
    close() {
      closed = true;
      return this.kill();
    },
    running() {
      return [...mine].filter((c) => c.pid !== undefined).map((c) => live.get(c) ?? "?");
    },
  };
}
