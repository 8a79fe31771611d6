/**
 * Throughput measurement between lab guests and the lab peer with iperf3.
 *
 * The iperf3 server always runs on the RECEIVING side and the client sends (no `-R`), so the
 * server's own JSON report is the receiver's view: what actually got through the shaper, with
 * UDP drops already subtracted. The client's report is only used for what only the sender
 * knows (TCP retransmits).
 */
import { type BackgroundProcess, type RunResult, run, sleep, spawnBackground } from "./exec.js";
import type { Lab, LabGuest } from "./topology.js";

/** From the GUEST's point of view: download = peer -> guest, upload = guest -> peer. */
export type Direction = "download" | "upload";

export interface Transfer {
  guest: LabGuest;
  direction: Direction;
  protocol: "tcp" | "udp";
  /** Measured duration in whole seconds (iperf3 `-t` only takes integers). */
  seconds: number;
  family?: 4 | 6;
  /** UDP target rate (`-b`); pass more than the limit under test (e.g. 1.5x) to saturate it. */
  udpRateBitsPerSec?: number;
  /** Control port; allocated automatically when omitted. */
  port?: number;
  /** Report interval, default 1 s (iperf3 accepts 0.1 .. 60). */
  intervalSeconds?: number;
  /** Whole seconds run before measuring and left out of all numbers (`-O`), default 0. */
  omitSeconds?: number;
}

export interface TransferInterval {
  startSec: number;
  endSec: number;
  goodputBitsPerSec: number;
  l2BitsPerSec: number;
}

export interface TransferResult {
  /** Receiver-side payload rate over the whole (non-omitted) test. */
  goodputBitsPerSec: number;
  /** goodput converted to what tc charges: whole Ethernet frames (see L2 factors below). */
  l2BitsPerSec: number;
  /** Receiver-side intervals, omitted ones excluded (times then restart at 0 after the omit). */
  intervals: TransferInterval[];
  /** UDP only: receiver's loss (sequence-number gaps). */
  lostPercent?: number;
  /** TCP only: sender's retransmitted segments. */
  retransmits?: number;
  /** L2 rate over the first measured second: the place where burst/bucket effects show. */
  firstSecondL2BitsPerSec: number;
  raw?: unknown;
}

/*
 * Layer-2 factors. tc (htb/tbf on a tap or ifb) charges every packet with its length from the
 * Ethernet header on, excluding preamble/FCS (GSO packets are charged per resulting segment),
 * while iperf3 counts only the payload it wrote. Converting goodput with these factors lets a
 * measurement be compared with a configured rate. All assume MTU 1500 (frame 1514 on the wire
 * as seen by tc).
 *
 * TCP: the kernel fills each segment to the MSS, and Linux negotiates timestamps by default,
 *   which take 12 bytes of TCP options in every segment:
 *   IPv4: 1500 - 20 (IP) - 20 (TCP) - 12 (timestamps) = 1448 payload per 1514-byte frame.
 *   IPv6: 1500 - 40 (IP) - 20 (TCP) - 12 (timestamps) = 1428 payload per 1514-byte frame.
 *   (ACKs travel the other way and are charged to the other direction.)
 * UDP: one datagram of UDP_PAYLOAD bytes (`-l`, iperf3's own header included) per frame:
 *   IPv4: 1400 + 8 (UDP) + 20 (IP) + 14 (Ethernet) = 1442.
 *   IPv6: 1400 + 8 (UDP) + 40 (IP) + 14 (Ethernet) = 1462.
 */
export const ETHERNET_FRAME_BYTES = 1514;
export const TCP_PAYLOAD_V4 = 1448;
export const TCP_PAYLOAD_V6 = 1428;
export const UDP_PAYLOAD = 1400;
export const L2_FACTOR_TCP_V4 = ETHERNET_FRAME_BYTES / TCP_PAYLOAD_V4;
export const L2_FACTOR_TCP_V6 = ETHERNET_FRAME_BYTES / TCP_PAYLOAD_V6;
export const L2_FACTOR_UDP_V4 = (UDP_PAYLOAD + 8 + 20 + 14) / UDP_PAYLOAD;
export const L2_FACTOR_UDP_V6 = (UDP_PAYLOAD + 8 + 40 + 14) / UDP_PAYLOAD;

export function l2Factor(protocol: "tcp" | "udp", family: 4 | 6): number {
  if (protocol === "tcp") return family === 4 ? L2_FACTOR_TCP_V4 : L2_FACTOR_TCP_V6;
  return family === 4 ? L2_FACTOR_UDP_V4 : L2_FACTOR_UDP_V6;
}

/** Large writes keep the sender's syscall rate (and CPU) low on a 2-core box at >10 Gbit/s. */
const TCP_WRITE_LEN = "128K";
const FIRST_PORT = 5201;
const LAST_PORT = 5999;
let nextPort = FIRST_PORT;

const CONNECT_ATTEMPTS = 10;
const CONNECT_RETRY_MS = 100;
const LISTEN_WAIT_MS = 3000;
/** Time allowed beyond the test's own duration (connect, param exchange, final results). */
const SLACK_MS = 15_000;

interface Plan {
  transfer: Transfer;
  family: 4 | 6;
  port: number;
  interval: number;
  omit: number;
  serverNs: string;
  serverAddr: string;
  clientNs: string;
  clientAddr: string;
}

function allocatePort(used: Set<string>, ns: string): number {
  for (let i = 0; i <= LAST_PORT - FIRST_PORT; i++) {
    const p = nextPort;
    nextPort = nextPort >= LAST_PORT ? FIRST_PORT : nextPort + 1;
    if (!used.has(`${ns}:${p}`)) return p;
  }
  throw new Error("no free iperf3 port");
}

function plan(lab: Lab, transfers: Transfer[]): Plan[] {
  const used = new Set<string>();
  // Explicit ports first so automatic ones steer around them.
  for (const t of transfers) {
    if (t.port === undefined) continue;
    const serverNs = t.direction === "download" ? t.guest.ns : lab.peerNs;
    const key = `${serverNs}:${t.port}`;
    if (used.has(key)) throw new Error(`port ${t.port} used twice in ${serverNs}`);
    used.add(key);
  }
  return transfers.map((t) => {
    if (!Number.isInteger(t.seconds) || t.seconds < 1)
      throw new Error(`seconds must be a positive integer: ${t.seconds}`);
    const omit = t.omitSeconds ?? 0;
    if (!Number.isInteger(omit) || omit < 0)
      throw new Error(`omitSeconds must be a non-negative integer: ${omit}`);
    const interval = t.intervalSeconds ?? 1;
    if (!(interval >= 0.1 && interval <= 60))
      throw new Error(`intervalSeconds must be within 0.1..60: ${interval}`);
    if (t.protocol === "udp" && !(t.udpRateBitsPerSec !== undefined && t.udpRateBitsPerSec > 0)) {
      throw new Error("UDP transfers need udpRateBitsPerSec > 0");
    }
    const family = t.family ?? 4;
    const guestAddr = family === 4 ? t.guest.ipv4 : t.guest.ipv6;
    const peerAddr = family === 4 ? lab.peerIpv4 : lab.peerIpv6;
    const download = t.direction === "download";
    const serverNs = download ? t.guest.ns : lab.peerNs;
    let port = t.port;
    if (port === undefined) {
      port = allocatePort(used, serverNs);
      used.add(`${serverNs}:${port}`);
    }
    return {
      transfer: t,
      family,
      port,
      interval,
      omit,
      serverNs,
      serverAddr: download ? guestAddr : peerAddr,
      clientNs: download ? lab.peerNs : t.guest.ns,
      clientAddr: download ? peerAddr : guestAddr,
    };
  });
}

// ---- JSON narrowing helpers (iperf3 output is untrusted, loosely typed data) ----

type Json = Record<string, unknown>;

function obj(v: unknown): Json | undefined {
  return typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Json) : undefined;
}

function num(v: unknown): number | undefined {
  return typeof v === "number" && Number.isFinite(v) ? v : undefined;
}

function parseReport(text: string, who: string): Json {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new Error(`${who}: output is not JSON: ${text.slice(0, 500)}`);
  }
  const o = obj(parsed);
  if (o === undefined) throw new Error(`${who}: unexpected JSON: ${text.slice(0, 500)}`);
  // iperf3 -J reports failures in an "error" field and may still exit 0.
  if (typeof o.error === "string") throw new Error(`${who}: ${o.error}`);
  return o;
}

function isConnectRefused(res: RunResult): boolean {
  return /connection refused/i.test(res.stdout) || /connection refused/i.test(res.stderr);
}

/** Wait until the server's control socket listens, so the client's first connect normally works. */
async function waitListening(p: Plan, server: BackgroundProcess): Promise<void> {
  const deadline = Date.now() + LISTEN_WAIT_MS;
  while (Date.now() < deadline) {
    if (server.exited) throw await serverDied(p, server);
    const res = await run("ss", ["-H", "-l", "-t", "-n", "sport", "=", `:${p.port}`], {
      netns: p.serverNs,
      allowFail: true,
    });
    if (res.code === 0 && res.stdout.trim().length > 0) return;
    await sleep(20);
  }
  // Not fatal: the client retries on "connection refused" anyway.
}

function serverArgs(p: Plan): string[] {
  return ["-s", "--one-off", "-B", p.serverAddr, "-p", String(p.port), "-J", "-i", String(p.interval)];
}

function clientArgs(p: Plan): string[] {
  const t = p.transfer;
  const args = ["-c", p.serverAddr, "-B", p.clientAddr, "-p", String(p.port), "-J"];
  args.push("-t", String(t.seconds), "-i", String(p.interval), "-O", String(p.omit));
  if (t.protocol === "udp") {
    args.push("-u", "-l", String(UDP_PAYLOAD), "-b", String(Math.round(t.udpRateBitsPerSec ?? 0)));
  } else {
    args.push("-l", TCP_WRITE_LEN);
  }
  return args;
}

/** Resolve with the process result, or stop it and fail once `ms` have passed. */
async function within(proc: BackgroundProcess, ms: number): Promise<RunResult> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<"timeout">((resolve) => {
    timer = setTimeout(() => resolve("timeout"), ms);
  });
  try {
    const r = await Promise.race([proc.done, timeout]);
    if (r === "timeout") {
      await proc.stop();
      throw new Error(`timed out after ${ms} ms: ${proc.commandLine}`);
    }
    return r;
  } finally {
    clearTimeout(timer);
  }
}

/** A one-off server that exits before serving (bind error, bad option) explains itself on stdout. */
async function serverDied(p: Plan, server: BackgroundProcess): Promise<Error> {
  const res = await server.done;
  let why = res.stderr.trim() || `exit ${res.code}`;
  try {
    const report = obj(JSON.parse(res.stdout));
    if (typeof report?.error === "string") why = report.error;
  } catch {
    // not JSON: keep stderr / exit code
  }
  return new Error(`iperf3 server ${p.serverNs} ${p.serverAddr}:${p.port} exited early: ${why}`);
}

async function runClient(p: Plan, server: BackgroundProcess, procs: BackgroundProcess[]): Promise<Json> {
  const limitMs = (p.transfer.seconds + p.omit) * 1000 + SLACK_MS;
  for (let attempt = 1; ; attempt++) {
    const proc = spawnBackground("iperf3", clientArgs(p), { netns: p.clientNs });
    procs.push(proc);
    const res = await within(proc, limitMs);
    if (isConnectRefused(res) && server.exited) throw await serverDied(p, server);
    if (isConnectRefused(res) && attempt < CONNECT_ATTEMPTS) {
      await sleep(CONNECT_RETRY_MS);
      continue;
    }
    if (res.code !== 0 && res.stdout.trim() === "") {
      throw new Error(`${proc.commandLine} failed (exit ${res.code}): ${res.stderr.trim()}`);
    }
    return parseReport(res.stdout, `iperf3 client ${p.clientNs} -> ${p.serverAddr}:${p.port}`);
  }
}

function buildResult(p: Plan, server: Json, client: Json): TransferResult {
  const factor = l2Factor(p.transfer.protocol, p.family);
  const end = obj(server.end);
  // The server's "sum_received" is the receiver's total for TCP and UDP alike (for UDP the
  // plain "sum" carries loss figures but reports 0 bytes in iperf3 3.12).
  const received = obj(end?.sum_received) ?? obj(end?.sum);
  const goodput = num(received?.bits_per_second);
  if (goodput === undefined) throw new Error(`iperf3 server on ${p.serverNs}:${p.port}: no receiver summary`);

  const intervals: TransferInterval[] = [];
  for (const entry of Array.isArray(server.intervals) ? server.intervals : []) {
    const sum = obj(obj(entry)?.sum);
    const start = num(sum?.start);
    const stop = num(sum?.end);
    const bps = num(sum?.bits_per_second);
    if (sum === undefined || start === undefined || stop === undefined || bps === undefined) continue;
    if (sum.omitted === true) continue;
    intervals.push({ startSec: start, endSec: stop, goodputBitsPerSec: bps, l2BitsPerSec: bps * factor });
  }
  // The receiver's clock runs a little past the sender's last write, which shows up as a final
  // interval of well under a millisecond whose "rate" is noise; drop such slivers.
  const last = intervals[intervals.length - 1];
  if (intervals.length > 1 && last !== undefined && last.endSec - last.startSec < 0.25 * p.interval)
    intervals.pop();

  const result: TransferResult = {
    goodputBitsPerSec: goodput,
    l2BitsPerSec: goodput * factor,
    intervals,
    firstSecondL2BitsPerSec: firstSecond(intervals) * factor,
    raw: { server, client },
  };
  if (p.transfer.protocol === "udp") {
    const lost = num(received?.lost_percent) ?? num(obj(end?.sum)?.lost_percent);
    if (lost !== undefined) result.lostPercent = lost;
  } else {
    const retr = num(obj(obj(client.end)?.sum_sent)?.retransmits);
    if (retr !== undefined) result.retransmits = retr;
  }
  return result;
}

/**
 * Goodput over the first second, time-weighted across the intervals inside it (several when
 * the interval is below 1 s). Interval boundaries drift by some microseconds, hence the slack.
 * With intervals longer than 1 s, the first interval is the best there is.
 */
function firstSecond(intervals: TransferInterval[]): number {
  const first = intervals[0];
  if (first === undefined) return 0;
  const origin = first.startSec;
  let bits = 0;
  let secs = 0;
  for (const iv of intervals) {
    if (iv.endSec - origin > 1.05) break;
    const d = iv.endSec - iv.startSec;
    bits += iv.goodputBitsPerSec * d;
    secs += d;
  }
  return secs > 0 ? bits / secs : first.goodputBitsPerSec;
}

/**
 * Run all transfers at the same time, each with its own one-off server on its own port.
 * Every iperf3 process started here is stopped before this returns or throws.
 */
export async function runTransfers(lab: Lab, transfers: Transfer[]): Promise<TransferResult[]> {
  const plans = plan(lab, transfers);
  const procs: BackgroundProcess[] = [];
  try {
    const servers = plans.map((p) => {
      const s = spawnBackground("iperf3", serverArgs(p), { netns: p.serverNs });
      procs.push(s);
      return s;
    });
    await Promise.all(plans.map((p, i) => waitListening(p, servers[i])));
    // allSettled: on a failure, no client may still be starting retries after cleanup ran.
    const clientResults = await Promise.allSettled(plans.map((p, i) => runClient(p, servers[i], procs)));
    const clientFailure = clientResults.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (clientFailure) throw clientFailure.reason;

    return await Promise.all(
      plans.map(async (p, i) => {
        const client = (clientResults[i] as PromiseFulfilledResult<Json>).value;
        // A one-off server prints its report and exits right after the client is done.
        const srv = await within(servers[i], SLACK_MS);
        const server = parseReport(srv.stdout, `iperf3 server ${p.serverNs} ${p.serverAddr}:${p.port}`);
        return buildResult(p, server, client);
      }),
    );
  } finally {
    await Promise.all(procs.map((proc) => proc.stop()));
  }
}
