import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { release } from "node:os";
import { join } from "node:path";
import { VirtqosError } from "../core/errors.js";
import type { Capabilities } from "../core/recipe.js";
import { readBootId } from "./boot.js";
import type { Runner } from "./exec.js";
import { acquireFileLock, alive } from "./lock.js";
import { randomHex } from "./random.js";

// A kernel feature found missing only during apply leaves a half-applied host. The probe tries each qdisc,
// classifier and action on a throw-away IFB and keeps the answer per boot, so the hook pays ~10 ms once.
// Only an answer the kernel gave about itself is kept: a probe disturbed by anything else (its device taken
// or gone, a busy kernel) says nothing about the kernel, and caching it would disable shaping until reboot.

interface Attempt {
  kind: "qdisc" | "classifier" | "action";
  name: string;
  line: (dev: string) => string;
}

const ATTEMPTS: Attempt[] = [
  { kind: "qdisc", name: "htb", line: (d) => `qdisc add dev ${d} root handle 1: htb default 1` },
  {
    kind: "qdisc",
    name: "htb-class",
    line: (d) => `class add dev ${d} parent 1: classid 1:1 htb rate 1mbit`,
  },
  { kind: "qdisc", name: "fq_codel", line: (d) => `qdisc replace dev ${d} parent 1:1 handle 10: fq_codel` },
  { kind: "qdisc", name: "sfq", line: (d) => `qdisc replace dev ${d} parent 1:1 handle 11: sfq` },
  {
    kind: "qdisc",
    name: "tbf",
    line: (d) => `qdisc replace dev ${d} parent 1:1 handle 12: tbf rate 1mbit burst 10k latency 10ms`,
  },
  {
    kind: "qdisc",
    name: "bfifo",
    line: (d) => `qdisc replace dev ${d} parent 1:1 handle 13: bfifo limit 10000`,
  },
  {
    kind: "classifier",
    name: "u32",
    line: (d) => `filter add dev ${d} parent 1: prio 1 protocol all u32 match u32 0 0 classid 1:1`,
  },
  {
    kind: "classifier",
    name: "matchall",
    line: (d) => `filter add dev ${d} parent 1: prio 2 protocol all matchall classid 1:1`,
  },
  {
    kind: "classifier",
    name: "fw",
    line: (d) => `filter add dev ${d} parent 1: prio 3 protocol all handle 1 fw classid 1:1`,
  },
  {
    kind: "classifier",
    name: "flower",
    line: (d) => `filter add dev ${d} parent 1: prio 4 protocol all flower classid 1:1`,
  },
  {
    kind: "classifier",
    name: "basic",
    line: (d) => `filter add dev ${d} parent 1: prio 5 protocol all basic classid 1:1`,
  },
  { kind: "qdisc", name: "clsact", line: (d) => `qdisc add dev ${d} clsact` },
  {
    kind: "action",
    name: "mirred",
    line: (d) =>
      `filter add dev ${d} ingress prio 6 protocol all u32 match u32 0 0 action mirred egress redirect dev ${d}`,
  },
  {
    kind: "action",
    name: "police",
    line: (d) =>
      `filter add dev ${d} ingress prio 7 protocol all u32 match u32 0 0 police rate 1mbit burst 10k drop flowid :1`,
  },
  {
    kind: "action",
    name: "skbedit",
    line: (d) =>
      `filter add dev ${d} ingress prio 8 protocol all u32 match u32 0 0 action skbedit priority 1:1`,
  },
  {
    kind: "action",
    name: "gact",
    line: (d) => `filter add dev ${d} ingress prio 9 protocol all u32 match u32 0 0 action gact pass`,
  },
  { kind: "qdisc", name: "clsact-del", line: (d) => `qdisc del dev ${d} clsact` },
  { kind: "qdisc", name: "ingress", line: (d) => `qdisc add dev ${d} handle ffff: ingress` },
];

export interface ProbeReport extends Capabilities {
  kernel: string;
  probedAt: string;
  errors: Record<string, string>;
}

/**
 * How a kernel (or iproute2) says "this feature does not exist here", with and without extended ACKs.
 * Anything else a probe line fails with (File exists, Cannot find device, Device or resource busy, a
 * missing parent class because an earlier line was disturbed) is not an answer about the kernel.
 */
const FEATURE_MISSING =
  /kind is unknown|classifier not found|Failed to load TC action|Unknown device type|Unknown qdisc|Unknown filter|Unknown action|Operation not supported|No such file or directory|Protocol not supported/i;

export function isFeatureMissing(stderr: string): boolean {
  return FEATURE_MISSING.test(stderr);
}

/** The probe was disturbed; its result says nothing about the kernel and must not be cached. */
export class ProbeFailedError extends VirtqosError {
  constructor(reason: string) {
    super("PROBE_FAILED", `probing the kernel's tc features failed: ${reason}`);
  }
}

/**
 * A name no other probe (in any process, any run directory) picks, that still says whose it is: "vqp", the
 * pid (6 hex digits hold any Linux pid) and 6 random hex digits: 15 characters, the kernel's limit.
 */
export const probeDeviceName = (pid = process.pid): string =>
  `vqp${pid.toString(16).padStart(6, "0")}${randomHex(6)}`;
const PROBE_DEVICE = /^vqp([0-9a-f]{6})[0-9a-f]{6}$/;

/** Probe devices left by a probe that was killed (SIGKILL, a hook timeout): their owner is gone. */
async function sweepProbeDevices(runner: Runner): Promise<void> {
  const res = await runner.run("ip", ["-j", "link", "show", "type", "ifb"]);
  if (res.code !== 0) return;
  for (const link of JSON.parse(res.stdout || "[]") as { ifname?: string }[]) {
    const m = PROBE_DEVICE.exec(link.ifname ?? "");
    if (m && !alive(Number.parseInt(m[1], 16))) await runner.run("ip", ["link", "del", "dev", link.ifname!]);
  }
}

/**
 * Try every feature on a fresh IFB. Throws ProbeFailedError when a failure is not the kernel saying "I do
 * not have this" (the caller may retry), so a disturbed probe never reads as a missing feature.
 */
export async function probeCapabilities(runner: Runner, dev = probeDeviceName()): Promise<ProbeReport> {
  await sweepProbeDevices(runner);
  const version = await runner.run("tc", ["-V"]);
  const iproute2 = /iproute2-([\w.-]+)/.exec(version.stdout)?.[1] ?? "unknown";
  const add = await runner.run("ip", ["link", "add", dev, "type", "ifb"]);
  const report: ProbeReport = {
    iproute2,
    kernel: release(),
    probedAt: new Date().toISOString(),
    qdiscs: [],
    classifiers: [],
    actions: [],
    ifb: add.code === 0,
    errors: {},
  };
  if (!report.ifb) {
    if (!isFeatureMissing(add.stderr))
      throw new ProbeFailedError(`ip link add ${dev} type ifb: ${add.stderr.trim()}`);
    // Without an IFB there is nothing to try filters on; HTB on egress still works and is all we can offer.
    report.errors.ifb = add.stderr.trim();
    report.qdiscs = ["htb"];
    return report;
  }
  try {
    const up = await runner.run("ip", ["link", "set", "dev", dev, "up"]);
    if (up.code !== 0) throw new ProbeFailedError(`ip link set dev ${dev} up: ${up.stderr.trim()}`);
    const lines = ATTEMPTS.map((a) => a.line(dev));
    const res = await runner.run("tc", ["-force", "-batch", "-"], `${lines.join("\n")}\n`);
    const failed = new Map<number, string>();
    const errLines = res.stderr.split("\n");
    for (let i = 0; i < errLines.length; i++) {
      const m = /Command failed -:(\d+)/.exec(errLines[i]);
      if (m)
        failed.set(
          Number(m[1]),
          errLines
            .slice(Math.max(0, i - 2), i)
            .join(" ")
            .trim(),
        );
    }
    ATTEMPTS.forEach((a, i) => {
      const err = failed.get(i + 1);
      // Helper lines ("htb-class", "clsact-del") must succeed: a failure there means the probe was disturbed.
      if (err && (a.name.includes("-") || !isFeatureMissing(err))) {
        throw new ProbeFailedError(`${a.name}: ${err}`);
      }
      if (a.name.includes("-")) return;
      if (err) {
        report.errors[a.name] = err;
        return;
      }
      if (a.kind === "qdisc") report.qdiscs.push(a.name);
      else if (a.kind === "classifier") report.classifiers.push(a.name);
      else report.actions.push(a.name);
    });
  } finally {
    await runner.run("ip", ["link", "del", "dev", dev]);
  }
  return report;
}

const PROBE_ATTEMPTS = 3;
/** Concurrent callers in one process share one probe per run directory. */
const inFlight = new Map<string, Promise<Capabilities>>();

/**
 * Capabilities are per kernel boot; cache them so the libvirt hook does not probe on every guest start.
 * One probe at a time per run directory (its own lock file: the caller may hold the engine's lock), and a
 * probe that was disturbed is retried, then reported as PROBE_FAILED, never cached.
 */
export function cachedCapabilities(runner: Runner, runDir: string): Promise<Capabilities> {
  const cached = readCache(runDir);
  if (cached) return Promise.resolve(cached);
  let p = inFlight.get(runDir);
  if (!p) {
    p = probeOnce(runner, runDir).finally(() => inFlight.delete(runDir));
    inFlight.set(runDir, p);
  }
  return p;
}

async function probeOnce(runner: Runner, runDir: string): Promise<Capabilities> {
  const release = await acquireFileLock(runDir, 30_000, "probe.lock");
  try {
    // Another process may have probed while we waited for its lock.
    const cached = readCache(runDir);
    if (cached) return cached;
    let last: unknown;
    for (let attempt = 1; attempt <= PROBE_ATTEMPTS; attempt++) {
      try {
        const report = await probeCapabilities(runner);
        writeCache(runDir, report);
        return report;
      } catch (e) {
        if (!(e instanceof ProbeFailedError)) throw e;
        last = e;
      }
    }
    throw last;
  } finally {
    release();
  }
}

function readCache(runDir: string): ProbeReport | undefined {
  try {
    const cached = JSON.parse(readFileSync(join(runDir, "capabilities.json"), "utf8")) as ProbeReport & {
      bootId?: string;
    };
    if (cached.bootId === readBootId() && cached.kernel === release()) return cached;
  } catch {
    // No cache yet or unreadable: probe.
  }
  return undefined;
}

/** Exported for tests: only a complete report reaches here (a disturbed probe throws before). */
export function writeCache(runDir: string, report: ProbeReport): void {
  const file = join(runDir, "capabilities.json");
  try {
    mkdirSync(runDir, { recursive: true });
    const tmp = `${file}.${process.pid}.${randomHex(6)}`;
    writeFileSync(tmp, JSON.stringify({ ...report, bootId: readBootId() }, null, 2));
    renameSync(tmp, file);
  } catch {
    // A read-only /run only costs a re-probe next time.
  }
}
