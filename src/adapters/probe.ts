import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { release } from "node:os";
import { join } from "node:path";
import type { Capabilities } from "../core/recipe.js";
import type { Runner } from "./exec.js";

// Missing kernel features must be found before apply, not during it (field note 16). The probe tries each
// qdisc, classifier and action on a throw-away IFB and keeps the answer per boot, so the hook pays ~10 ms once.

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

export async function probeCapabilities(runner: Runner): Promise<ProbeReport> {
  const version = await runner.run("tc", ["-V"]);
  const iproute2 = /iproute2-([\w.-]+)/.exec(version.stdout)?.[1] ?? "unknown";
  const dev = `vqprobe${process.pid % 100000}`;
  await runner.run("ip", ["link", "del", "dev", dev]);
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
    // Without an IFB there is nothing to try filters on; HTB on egress still works and is all we can offer.
    report.errors.ifb = add.stderr.trim();
    report.qdiscs = ["htb"];
    return report;
  }
  try {
    await runner.run("ip", ["link", "set", "dev", dev, "up"]);
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
      if (a.name.includes("-")) return;
      const err = failed.get(i + 1);
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

/** Capabilities are per kernel boot; cache them so the libvirt hook does not probe on every guest start. */
export async function cachedCapabilities(runner: Runner, runDir: string): Promise<Capabilities> {
  const bootId = readBootId();
  const file = join(runDir, "capabilities.json");
  try {
    const cached = JSON.parse(readFileSync(file, "utf8")) as ProbeReport & { bootId?: string };
    if (cached.bootId === bootId && cached.kernel === release()) return cached;
  } catch {
    // No cache yet or unreadable: probe.
  }
  const report = await probeCapabilities(runner);
  try {
    mkdirSync(runDir, { recursive: true });
    const tmp = `${file}.${process.pid}`;
    writeFileSync(tmp, JSON.stringify({ ...report, bootId }, null, 2));
    renameSync(tmp, file);
  } catch {
    // A read-only /run only costs a re-probe next time.
  }
  return report;
}

function readBootId(): string {
  try {
    return readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  } catch {
    return "unknown";
  }
}
