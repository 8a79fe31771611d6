import {
  appendFileSync,
  linkSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { VirtqosError } from "../core/errors.js";
import { onChildSpawn } from "./exec.js";

// libvirt starts guests in parallel, and each start runs the hook: they must not observe and apply at once.
// Node has no flock(2), so: a lock file holding the owner's pid, stolen only from a dead owner. It is
// written aside and hard-linked into place (link(2) fails with EEXIST atomically), so it never exists
// without its pid: an owner killed between open() and write() used to leave an empty file nobody could
// judge, and every later caller waited for its timeout.
// Callers inside one process (the lab, tests) queue on a promise first: the file lock is not reentrant.

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
let inProcess: Promise<void> = Promise.resolve();

// Lock files this process holds. One that exits through process.exit() while holding one (the hook's
// wall-clock guard, its last-resort error handler) releases it on the way out: a dead owner's lock is
// stolen by the next waiter anyway, but only after it has polled the owner's pid.
const held = new Set<() => void>();
let exitHandler = false;

function holdUntilExit(release: () => void): void {
  held.add(release);
  if (exitHandler) return;
  exitHandler = true;
  process.on("exit", releaseHeldLocks);
}

/** Release every lock file this process holds (idempotent); returns how many there were. */
export function releaseHeldLocks(): number {
  const all = [...held];
  for (const release of all) release();
  return all.length;
}

export class LockTimeoutError extends VirtqosError {
  constructor(message: string) {
    super("LOCK_TIMEOUT", message);
  }
}

export async function acquireLock(runDir: string, timeoutMs = 30_000): Promise<() => void> {
  let releaseQueue: () => void = () => {};
  const previous = inProcess;
  inProcess = new Promise((r) => {
    releaseQueue = r;
  });
  await previous;
  try {
    const releaseFile = await acquireFileLock(runDir, timeoutMs);
    return () => {
      releaseFile();
      releaseQueue();
    };
  } catch (e) {
    releaseQueue();
    throw e;
  }
}

/** The cross-process part alone, on any lock file of the run directory (the probe has its own). */
export async function acquireFileLock(runDir: string, timeoutMs: number, name = "lock"): Promise<() => void> {
  mkdirSync(runDir, { recursive: true });
  const file = join(runDir, name);
  const deadline = Date.now() + timeoutMs;
  let wait = 2;
  for (;;) {
    try {
      takeFile(file);
      let released = false;
      // Every tc/ip this process starts while it holds the lock is listed in the lock file after the owner.
      const unlisten = onChildSpawn((pid) => {
        try {
          appendFileSync(file, `\n${pid}`);
        } catch {
          // The lock file is gone (released meanwhile): nothing to record.
        }
      });
      const release = () => {
        if (released) return;
        released = true;
        unlisten();
        held.delete(release);
        try {
          unlinkSync(file);
        } catch {
          // Already gone: nothing to release.
        }
      };
      holdUntilExit(release);
      return release;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    }
    const owner = readOwner(file);
    if (owner === undefined ? ageMs(file) > EMPTY_LOCK_STALE_MS : !alive(owner)) {
      // A killed owner's children live on (a `tc -batch` half way through its lines): stop them first, or
      // they would change the kernel under the new owner's feet after it observed it.
      await stopOrphans(file);
      // Where one owner died, another may have died between writing its pid aside and linking it: the
      // stale path, not every acquire, clears those files (a guest start pays for no directory read).
      sweepAside(file);
      try {
        unlinkSync(file);
      } catch {
        // Someone else stole it first; go round again.
      }
      continue;
    }
    if (Date.now() > deadline) {
      throw new LockTimeoutError(
        `another virtqos (pid ${owner ?? "?"}) holds ${file} for more than ${timeoutMs} ms`,
      );
    }
    await sleep(wait);
    wait = Math.min(wait * 2, 50);
  }
}

// A lock file without a pid can only be a leftover of an older virtqos (which wrote it after creating it);
// give a writer that slow a generous moment before calling it stale.
const EMPTY_LOCK_STALE_MS = 2_000;

/** Create `file` holding our pid, or throw EEXIST: never visible empty. */
function takeFile(file: string): void {
  const aside = `${file}.${process.pid}.tmp`;
  writeFileSync(aside, String(process.pid), { mode: 0o600 });
  try {
    linkSync(aside, file);
  } finally {
    try {
      unlinkSync(aside);
    } catch {
      // Already gone.
    }
  }
}

/** Remove `<lock>.<pid>.tmp` files of dead processes (one killed between its write and its link). */
function sweepAside(file: string): void {
  const slash = file.lastIndexOf("/");
  const dir = file.slice(0, slash);
  const prefix = `${file.slice(slash + 1)}.`;
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return;
  }
  for (const name of names) {
    if (!name.startsWith(prefix) || !name.endsWith(".tmp")) continue;
    const pid = Number(name.slice(prefix.length, -".tmp".length));
    if (!Number.isInteger(pid) || pid <= 0 || alive(pid)) continue;
    try {
      unlinkSync(`${dir}/${name}`);
    } catch {
      // Someone else swept it.
    }
  }
}

function ageMs(file: string): number {
  try {
    return Date.now() - statSync(file).mtimeMs;
  } catch {
    return 0;
  }
}

function readPids(file: string): number[] {
  try {
    return readFileSync(file, "utf8")
      .split("\n")
      .map((l) => Number(l.trim()))
      .filter((pid) => Number.isInteger(pid) && pid > 0);
  } catch {
    return [];
  }
}

function readOwner(file: string): number | undefined {
  return readPids(file)[0];
}

/** Kill the tc/ip children a dead owner listed (only if they still are tc or ip: pids are reused). */
async function stopOrphans(file: string): Promise<void> {
  const orphans = readPids(file)
    .slice(1)
    .filter((pid) => alive(pid) && isIproute2(pid));
  for (const pid of orphans) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // Gone meanwhile.
    }
  }
  for (let i = 0; i < 100 && orphans.some(alive); i++) await sleep(10);
}

function isIproute2(pid: number): boolean {
  try {
    const comm = readFileSync(`/proc/${pid}/comm`, "utf8").trim();
    return comm === "tc" || comm === "ip";
  } catch {
    return false;
  }
}

/** Whether a process exists (EPERM: it does, as another user). */
export function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}
