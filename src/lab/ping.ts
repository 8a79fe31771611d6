/**
 * Latency probing with iputils ping, e.g. to show how much queueing delay a shaper adds while a
 * bulk transfer fills it.
 */
import { run } from "./exec.js";

export interface PingOptions {
  count: number;
  /** Seconds between probes; below 0.2 needs root (the lab runs as root anyway). */
  intervalSec: number;
  /** Seconds to wait for a late reply after the last probe; default 2. */
  lingerSec?: number;
}

export interface PingResult {
  /** NaN when no reply came back at all. */
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  lossPercent: number;
  /** Round-trip times in the order the replies arrived (duplicates ignored). */
  samplesMs: number[];
}

// "64 bytes from fd00:99::1: icmp_seq=3 ttl=64 time=0.041 ms" (time may be "time<1 ms" on old
// builds, which we cannot use as a number and skip).
const REPLY_RE = /icmp_seq=(\d+).*?\btime=([\d.]+)\s*ms/;
// "10 packets transmitted, 9 received, +1 duplicates, 10% packet loss, time 93ms"
const SUMMARY_RE = /(\d+) packets transmitted, (\d+) (?:packets )?received/;

/** Nearest-rank percentile of an ascending list. */
function percentile(sorted: number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil(q * sorted.length)));
  return sorted[rank - 1] ?? Number.NaN;
}

export async function pingLatency(fromNs: string, toAddress: string, opts: PingOptions): Promise<PingResult> {
  if (!Number.isInteger(opts.count) || opts.count < 1)
    throw new Error(`count must be a positive integer: ${opts.count}`);
  if (!(opts.intervalSec > 0)) throw new Error(`intervalSec must be > 0: ${opts.intervalSec}`);
  const linger = opts.lingerSec ?? 2;
  // -w bounds the whole run, so a dead target costs count*interval + linger, not forever.
  const deadline = Math.ceil(opts.count * opts.intervalSec + linger);
  const args = [
    "-n",
    "-i",
    String(opts.intervalSec),
    "-c",
    String(opts.count),
    "-w",
    String(deadline),
    toAddress,
  ];
  // ping exits 1 when replies are missing; that is a measurement result, not a failure.
  const res = await run("ping", args, { netns: fromNs, allowFail: true, timeoutMs: (deadline + 10) * 1000 });
  if (res.code !== 0 && res.code !== 1) {
    throw new Error(`ping ${toAddress} from ${fromNs} failed (exit ${res.code}): ${res.stderr.trim()}`);
  }

  const seen = new Set<number>();
  const samplesMs: number[] = [];
  for (const line of res.stdout.split("\n")) {
    if (line.includes("(DUP!)")) continue;
    const m = REPLY_RE.exec(line);
    if (!m) continue;
    const seq = Number(m[1]);
    if (seen.has(seq)) continue;
    seen.add(seq);
    samplesMs.push(Number(m[2]));
  }

  const summary = SUMMARY_RE.exec(res.stdout);
  const sent = summary ? Number(summary[1]) : opts.count;
  const received = summary ? Number(summary[2]) : samplesMs.length;
  const lossPercent = sent > 0 ? (100 * (sent - Math.min(received, sent))) / sent : 100;

  const sorted = [...samplesMs].sort((a, b) => a - b);
  return {
    p50Ms: percentile(sorted, 0.5),
    p99Ms: percentile(sorted, 0.99),
    maxMs: sorted.length > 0 ? (sorted[sorted.length - 1] ?? Number.NaN) : Number.NaN,
    lossPercent,
    samplesMs,
  };
}
