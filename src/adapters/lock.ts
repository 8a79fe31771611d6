import { closeSync, mkdirSync, openSync, readFileSync, unlinkSync, writeSync } from "node:fs";
import { join } from "node:path";

// libvirt starts guests in parallel, and each start runs the hook: they must not observe and apply at once.
// Node has no flock(2), so: an O_EXCL lock file holding the owner's pid, stolen only from a dead owner.
// Callers inside one process (the lab, tests) queue on a promise first: the file lock is not reentrant.

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
let inProcess: Promise<void> = Promise.resolve();

export class LockTimeoutError extends Error {
  readonly code = "LOCK_TIMEOUT";
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

async function acquireFileLock(runDir: string, timeoutMs: number): Promise<() => void> {
  mkdirSync(runDir, { recursive: true });
  const file = join(runDir, "lock");
  const deadline = Date.now() + timeoutMs;
  let wait = 2;
  for (;;) {
    try {
      const fd = openSync(file, "wx", 0o600);
      writeSync(fd, String(process.pid));
      closeSync(fd);
      let released = false;
      return () => {
        if (released) return;
        released = true;
        try {
          unlinkSync(file);
        } catch {
          // Already gone: nothing to release.
        }
      };
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    }
    const owner = readOwner(file);
    if (owner !== undefined && !alive(owner)) {
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

function readOwner(file: string): number | undefined {
  try {
    const pid = Number(readFileSync(file, "utf8").trim());
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
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
