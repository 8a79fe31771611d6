// Shared plumbing for the benchmarks: result records, timing, statistics, namespaces we own and clean up.
import { spawn } from "node:child_process";
import { mkdtempSync, statfsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Runner } from "../src/adapters/exec.js";
import { run } from "../src/lab/exec.js";

export interface BenchResult {
  name: string;
  metric: string;
  value: number;
  unit: string;
  /** Human-readable target ("0.98..1.02", "<= 1.10", ">= 20", "< 0.5"); null for report-only rows. */
  target: string | null;
  /** null for report-only rows (no target). */
  pass: boolean | null;
  details: Record<string, unknown>;
}

export interface BenchOptions {
  quick: boolean;
  /** scale: run every rendered line as its own process instead of a sample of the tc lines. */
  fullScale: boolean;
  /** Progress lines go here (stderr), the table goes to stdout. */
  log: (msg: string) => void;
  /**
   * Running inside scripts/kernel-vm.sh (Debian's stock kernel under TCG, `npm run bench -- --kernel`): rates
   * the VM's CPU can carry, and the leaves this kernel adds.
   */
  kernelVm?: boolean;
}

export type Bench = (opts: BenchOptions) => Promise<BenchResult[]>;

/** A result row with a [min, max] target. */
export function between(
  name: string,
  metric: string,
  value: number,
  unit: string,
  min: number,
  max: number,
  details: Record<string, unknown>,
): BenchResult {
  return { name, metric, value, unit, target: `${min}..${max}`, pass: value >= min && value <= max, details };
}

export function atMost(
  name: string,
  metric: string,
  value: number,
  unit: string,
  max: number,
  details: Record<string, unknown>,
  strict = false,
): BenchResult {
  return {
    name,
    metric,
    value,
    unit,
    target: `${strict ? "<" : "<="} ${max}`,
    pass: strict ? value < max : value <= max,
    details,
  };
}

export function atLeast(
  name: string,
  metric: string,
  value: number,
  unit: string,
  min: number,
  details: Record<string, unknown>,
): BenchResult {
  return { name, metric, value, unit, target: `>= ${min}`, pass: value >= min, details };
}

export function info(
  name: string,
  metric: string,
  value: number,
  unit: string,
  details: Record<string, unknown>,
): BenchResult {
  return { name, metric, value, unit, target: null, pass: null, details };
}

/** A row for a benchmark that could not run at all: counted as a failure. */
export function errored(name: string, e: unknown): BenchResult {
  const err = e as Error;
  return {
    name,
    metric: "error",
    value: Number.NaN,
    unit: "",
    target: "runs",
    pass: false,
    details: { error: err?.message ?? String(e), stack: err?.stack?.split("\n").slice(0, 6).join("\n") },
  };
}

export function median(xs: number[]): number {
  if (!xs.length) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function round(x: number, digits = 3): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

export function nowMs(): number {
  return Number(process.hrtime.bigint()) / 1e6;
}

export interface TimedRun {
  ms: number;
  code: number;
  stdout: string;
  stderr: string;
}

/** Spawn a process and measure its wall time from spawn() to 'close' (all output read). */
export function timedSpawn(
  cmd: string,
  args: string[],
  opts: { input?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<TimedRun> {
  return new Promise((resolve, reject) => {
    const t0 = nowMs();
    const child = spawn(cmd, args, { stdio: ["pipe", "pipe", "pipe"], env: opts.env ?? process.env });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.on("data", (b: Buffer) => err.push(b));
    child.on("error", reject);
    child.on("close", (code) =>
      resolve({
        ms: nowMs() - t0,
        code: code ?? 128,
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8"),
      }),
    );
    child.stdin.on("error", () => {});
    child.stdin.end(opts.input ?? "");
  });
}

// ---- namespaces owned by this bench run ----

export const NS_PREFIX = "vqbench-";
let nsCounter = 0;
const liveNamespaces = new Set<string>();

/** A fresh, uniquely named namespace (`vqbench-<pid>-<tag><n>`), deleted by deleteNamespace or cleanupAll. */
export async function createNamespace(tag: string): Promise<string> {
  const name = `${NS_PREFIX}${process.pid}-${tag}${nsCounter++}`;
  await run("ip", ["netns", "add", name]);
  liveNamespaces.add(name);
  await run("ip", ["-n", name, "link", "set", "lo", "up"]);
  return name;
}

export async function deleteNamespace(name: string): Promise<void> {
  // Kill whatever we left running inside (only our own namespace, so only our own processes).
  const pids = await run("ip", ["netns", "pids", name], { allowFail: true });
  for (const line of pids.stdout.split("\n")) {
    const pid = Number.parseInt(line.trim(), 10);
    if (Number.isInteger(pid) && pid > 1 && pid !== process.pid) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // gone
      }
    }
  }
  await run("ip", ["netns", "del", name], { allowFail: true });
  liveNamespaces.delete(name);
}

export async function cleanupNamespaces(): Promise<void> {
  for (const ns of [...liveNamespaces]) await deleteNamespace(ns).catch(() => {});
}

/** Namespaces left by an earlier bench run whose process is gone (a crash or SIGKILL). */
export async function removeStaleNamespaces(log: (m: string) => void): Promise<void> {
  const res = await run("ip", ["netns", "list"], { allowFail: true });
  for (const line of res.stdout.split("\n")) {
    const ns = line.trim().split(/\s+/)[0] ?? "";
    const m = new RegExp(`^${NS_PREFIX}(\\d+)-`).exec(ns);
    if (!m) continue;
    const pid = Number(m[1]);
    if (pid === process.pid) continue;
    let alive = true;
    try {
      process.kill(pid, 0);
    } catch {
      alive = false;
    }
    if (!alive) {
      log(`removing stale namespace ${ns} (from dead bench process ${pid})`);
      await deleteNamespace(ns);
    }
  }
}

/** Split a rendered batch line into argv. virtqos's lines never contain quotes or spaces inside one argument. */
export function splitLine(line: string): string[] {
  return line.trim().split(/\s+/);
}

// ---- cleanup on signals: try/finally does not run when the process is interrupted ----

const cleanups = new Set<() => Promise<void>>();

/** Register a cleanup that must also run on SIGINT/SIGTERM; call the returned function once done normally. */
export function onCleanup(fn: () => Promise<void>): () => void {
  cleanups.add(fn);
  return () => {
    cleanups.delete(fn);
  };
}

export async function runAllCleanups(): Promise<void> {
  for (const fn of [...cleanups]) {
    cleanups.delete(fn);
    await fn().catch(() => {});
  }
  await cleanupNamespaces();
}

// ---- run directories ----

const TMPFS_MAGIC = 0x01021994;

/**
 * A private run directory on tmpfs, like /run/virtqos on a real host (systemd mounts /run as tmpfs). Falls back
 * to the OS temp dir, which on some machines (this one included) is a disk filesystem where every record
 * write is a flushed rename.
 */
export function tmpfsRunDir(prefix: string): { dir: string; tmpfs: boolean } {
  for (const base of ["/run", "/dev/shm"]) {
    try {
      if (statfsSync(base).type === TMPFS_MAGIC) return { dir: mkdtempSync(join(base, prefix)), tmpfs: true };
    } catch {
      // not there
    }
  }
  return { dir: mkdtempSync(join(tmpdir(), prefix)), tmpfs: false };
}

// ---- where an engine run spends its time ----

export interface RunnerCall {
  cmd: string;
  args: string;
  ms: number;
  stdoutKB: number;
  inputLines: number;
}

/** Wrap a Runner to record every process it starts, for time breakdowns (observe vs apply vs JavaScript). */
export function timingRunner(inner: Runner): { runner: Runner; calls: RunnerCall[] } {
  const calls: RunnerCall[] = [];
  return {
    calls,
    runner: {
      async run(cmd, args, input) {
        // Recorded in start order (parallel calls finish in any order).
        const call: RunnerCall = {
          cmd,
          args: args
            .filter((a) => a !== "-n")
            .join(" ")
            .slice(0, 60),
          ms: 0,
          stdoutKB: 0,
          inputLines: input ? input.split("\n").filter(Boolean).length : 0,
        };
        calls.push(call);
        const t0 = nowMs();
        const r = await inner.run(cmd, args, input);
        call.ms = round(nowMs() - t0, 1);
        call.stdoutKB = round(r.stdout.length / 1024, 1);
        return r;
      },
    },
  };
}
