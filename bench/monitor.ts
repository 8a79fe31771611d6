// Side measurements during a transfer, to tell the shaper's own output from what the receiver managed to take:
// the shaper's dequeued bytes (root HTB qdisc counters, polled), the receiver's UDP socket drops and host CPU.
import { readFileSync } from "node:fs";
import { run, sleep } from "../src/lab/exec.js";
import { nowMs, round } from "./common.js";

interface Sample {
  t: number;
  bytes: number;
  drops: number;
}

export interface MonitorReport {
  /** Shaper output (root HTB qdisc, bytes as tc charges them) over the measured window, Mbit/s. */
  shaperL2Mbit?: number;
  /** Lowest 0.5 s rate inside that window. */
  shaperMinL2Mbit?: number;
  shaperDrops: number;
  /** Receiver namespace UDP counters over the whole run. */
  udpInDatagrams?: number;
  udpRcvbufErrors?: number;
  /** Whole machine over the run: share of the 2 CPUs busy, and of softirq and steal time. */
  cpuBusyPct: number;
  cpuSoftirqPct: number;
  cpuStealPct: number;
}

async function sample(ns: string, dev: string): Promise<Sample | undefined> {
  const r = await run("tc", ["-n", ns, "-s", "-j", "qdisc", "show", "dev", dev], { allowFail: true });
  try {
    const qs = JSON.parse(r.stdout || "[]") as {
      handle?: string;
      root?: boolean;
      bytes?: number;
      drops?: number;
    }[];
    const root = qs.find((q) => q.root && q.handle === "7651:");
    return root ? { t: nowMs(), bytes: root.bytes ?? 0, drops: root.drops ?? 0 } : undefined;
  } catch {
    return undefined;
  }
}

async function udpCounters(ns: string): Promise<{ inDatagrams: number; rcvbufErrors: number } | undefined> {
  const r = await run("cat", ["/proc/net/snmp"], { netns: ns, allowFail: true });
  const lines = r.stdout.split("\n").filter((l) => l.startsWith("Udp:"));
  if (lines.length < 2) return undefined;
  const names = lines[0].split(/\s+/);
  const values = lines[1].split(/\s+/).map(Number);
  const get = (n: string) => values[names.indexOf(n)] ?? 0;
  return { inDatagrams: get("InDatagrams"), rcvbufErrors: get("RcvbufErrors") };
}

function cpuTimes(): number[] {
  // cpu user nice system idle iowait irq softirq steal ...
  return readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
}

/**
 * Start polling `dev`'s shaper in `ns` every 500 ms (or `intervalMs`). `stop(windowStart, windowEnd)` (times from nowMs()) gives
 * the shaper's rate over the window the transfer tool measured.
 */
export function startMonitor(opts: {
  ns: string;
  dev: string;
  receiverNs: string;
  /** Polling period, default 500 ms; longer in the kernel VM, where every `tc` started costs the senders CPU. */
  intervalMs?: number;
}) {
  const samples: Sample[] = [];
  let running = true;
  const cpu0 = cpuTimes();
  const udp0 = udpCounters(opts.receiverNs);
  const loop = (async () => {
    while (running) {
      const s = await sample(opts.ns, opts.dev);
      if (s) samples.push(s);
      await sleep(opts.intervalMs ?? 500);
    }
  })();
  let stopped: Promise<void> | undefined;
  let cpu1: number[] = [];
  let udp1: Promise<{ inDatagrams: number; rcvbufErrors: number } | undefined> = Promise.resolve(undefined);
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      running = false;
      await loop;
      const last = await sample(opts.ns, opts.dev);
      if (last) samples.push(last);
      cpu1 = cpuTimes();
      udp1 = udpCounters(opts.receiverNs);
      await udp1;
    })();
    return stopped;
  };
  return {
    /** Stop polling (idempotent); call as soon as the transfer ends. */
    stop,
    /** The numbers, with the shaper's rate over [windowStart, windowEnd] (nowMs() times). */
    async report(windowStart: number, windowEnd: number): Promise<MonitorReport> {
      await stop();
      const d = cpu1.map((v, i) => v - (cpu0[i] ?? 0));
      const total = d.reduce((a, b) => a + b, 0) || 1;
      const idle = (d[3] ?? 0) + (d[4] ?? 0);
      const [u0, u1] = [await udp0, await udp1];
      const inWindow = samples.filter((s) => s.t >= windowStart && s.t <= windowEnd);
      const report: MonitorReport = {
        shaperDrops: samples.length ? samples[samples.length - 1].drops - samples[0].drops : 0,
        cpuBusyPct: round((100 * (total - idle)) / total, 1),
        cpuSoftirqPct: round((100 * (d[6] ?? 0)) / total, 1),
        cpuStealPct: round((100 * (d[7] ?? 0)) / total, 1),
      };
      if (inWindow.length >= 2) {
        const a = inWindow[0];
        const b = inWindow[inWindow.length - 1];
        report.shaperL2Mbit = round(((b.bytes - a.bytes) * 8) / ((b.t - a.t) / 1000) / 1e6, 3);
        let min = Number.POSITIVE_INFINITY;
        for (let i = 1; i < inWindow.length; i++) {
          const x = inWindow[i - 1];
          const y = inWindow[i];
          min = Math.min(min, ((y.bytes - x.bytes) * 8) / ((y.t - x.t) / 1000) / 1e6);
        }
        report.shaperMinL2Mbit = round(min, 2);
      }
      if (u0 && u1) {
        report.udpInDatagrams = u1.inDatagrams - u0.inDatagrams;
        report.udpRcvbufErrors = u1.rcvbufErrors - u0.rcvbufErrors;
      }
      return report;
    },
  };
}
