import type { LeafChoice } from "./policy/types.js";
import { TC_SIZE_MAX_BYTES, toKernelBytesPerSec } from "./units.js";

/** What the kernel and iproute2 can do, as probed. The planner never assumes a feature. */
export interface Capabilities {
  iproute2: string;
  qdiscs: string[];
  classifiers: string[];
  actions: string[];
  ifb: boolean;
}

/** HTB class parameters, in the kernel's units (bytes per second, bytes). */
export interface HtbClass {
  rateBytesPerSec: number;
  ceilBytesPerSec: number;
  burstBytes: number;
  cburstBytes: number;
  quantumBytes: number;
}

export type Leaf =
  | { kind: "fq_codel" }
  | { kind: "sfq"; limitPackets: number }
  | { kind: "bfifo"; limitBytes: number }
  /** A byte FIFO that splits GSO packets: TBF at a rate above the class's ceiling, so HTB alone sets the pace. */
  | { kind: "tbf"; rateBytesPerSec: number; burstBytes: number; limitBytes: number };

/** One Ethernet frame as tc accounts it (no FCS, no preamble). */
export const FRAME_BYTES = 1514;
/** Largest GSO super-packet a guest or the host stack hands to a qdisc (64 KiB payload plus headers). */
export const GSO_MAX_BYTES = 65536 + FRAME_BYTES;
/**
 * Dequeue jitter to absorb: HTB refills tokens when it is woken, and a busy 2-core host wakes it late by up to
 * ten milliseconds. A burst shorter than that throws the credit away and TCP stalls below the limit (at
 * 50-70% of it).
 */
const JITTER_SECONDS = 0.01;
/**
 * Never allow more than this share of a second's worth of data as burst, so the first second of a transfer
 * stays within 10% of the limit: a full bucket leaves at line rate before HTB starts pacing, so a deeper one
 * shows as a first second far above the limit.
 */
const MAX_BURST_SHARE_OF_SECOND = 0.05;
/** Queue delay the FIFO leaf may add under load; keeps ping p99 through a saturated link near 20 ms. */
export const FIFO_TARGET_SECONDS = 0.02;
/** HTB warns below 1000 and above 200000 ("quantum of class is big"); stay inside. */
const QUANTUM_MIN = FRAME_BYTES;
const QUANTUM_MAX = 200_000;

/**
 * HTB, TBF and police keep a bucket as the time the rate needs to send it, in 64 ns ticks held in 32 bits:
 * ~274.9 s of data at most. tc 6.1 wraps a larger value around silently (a tiny bucket); newer tc refuses it.
 */
export const TC_BUCKET_MAX_SECONDS = ((2 ** 32 - 1) * 64) / 1e9;
/** SFQ holds at most 127 packets per flow in 128 flows; the kernel silently lowers a larger `limit`. */
export const SFQ_MAX_LIMIT_PACKETS = 127 * 128;

/**
 * The deepest bucket tc can express at a rate: 32-bit bytes and 32-bit ticks, whichever binds first (1 % of
 * headroom for tc's own rounding of the tick count).
 */
export function maxBucketBytes(bytesPerSec: number): number {
  return Math.min(TC_SIZE_MAX_BYTES, Math.floor(bytesPerSec * TC_BUCKET_MAX_SECONDS * 0.99));
}

/**
 * The token-bucket depth for a rate: enough to ride out dequeue jitter and, where the second allows it, one
 * whole GSO packet; never more than 5% of a second of data.
 */
export function burstFor(bytesPerSec: number): number {
  const jitter = bytesPerSec * JITTER_SECONDS;
  const cap = bytesPerSec * MAX_BURST_SHARE_OF_SECOND;
  const gsoWhereAffordable = Math.min(GSO_MAX_BYTES, cap);
  return Math.min(
    maxBucketBytes(bytesPerSec),
    Math.ceil(Math.max(jitter, gsoWhereAffordable, 2 * FRAME_BYTES)),
  );
}

/** libvirt's police bucket when `<outbound>` has no burst: `average` (kB/s) read as KiB, ~1.024 s of data. */
export const LIBVIRT_POLICE_BURST_SECONDS = 1.024;

/**
 * The police action's bucket, libvirt's rule (the given burst, else ~1.024 s of data) with one difference: a
 * policer drops every packet larger than its bucket, and guests hand the host 64 KiB GSO packets, so the
 * bucket never goes below one of them. Clamped to what tc can express.
 */
export function policeBurstBytes(rateBytesPerSec: number, burstBytes?: number): number {
  const wanted = burstBytes ?? Math.round(rateBytesPerSec * LIBVIRT_POLICE_BURST_SECONDS);
  return Math.min(Math.max(wanted, GSO_MAX_BYTES), maxBucketBytes(rateBytesPerSec));
}

/** Quantum for DRR among siblings: proportional to the guaranteed rate so borrowing is shared by floors. */
export function quantumFor(bytesPerSec: number): number {
  return Math.round(Math.min(QUANTUM_MAX, Math.max(QUANTUM_MIN, bytesPerSec / 100)));
}

export interface ClassInput {
  rateBitsPerSec: number;
  ceilBitsPerSec: number;
  burstBytes?: number;
}

export function htbClass(input: ClassInput): HtbClass {
  const rate = toKernelBytesPerSec(input.rateBitsPerSec);
  const ceil = Math.max(rate, toKernelBytesPerSec(input.ceilBitsPerSec));
  return {
    rateBytesPerSec: rate,
    ceilBytesPerSec: ceil,
    burstBytes: Math.min(input.burstBytes ?? burstFor(rate), maxBucketBytes(rate)),
    cburstBytes: burstFor(ceil),
    quantumBytes: quantumFor(rate),
  };
}

export interface LeafDecision {
  leaf: Leaf;
  why: string;
}

/** fq_codel where the kernel has it, else sfq, else a FIFO bounded by queueing delay, not by packet count. */
export function chooseLeaf(
  ceilBytesPerSec: number,
  caps: Capabilities,
  choice: LeafChoice,
  /**
   * Group members: HTB lends spare capacity among siblings by DRR over whole packets, so a 64 KiB GSO packet
   * against a quantum of a few KiB makes the split per packet, not per byte (equal, not by floor). A leaf
   * that splits GSO packets keeps the split proportional to the floors.
   */
  segmentGso = false,
): LeafDecision {
  // A byte FIFO holding ~20 ms of data. Below ~54 Mbit/s that is less than two GSO packets (64 KiB each):
  // a plain bfifo then drops whole GSO packets and TCP falls to ~90% of the limit, while counting packets
  // (pfifo) lets 64 KiB packets queue for 280 ms. TBF splits GSO packets into frames before queueing them,
  // which keeps both the latency bound and TCP at the limit; above the threshold a bfifo is cheaper.
  const fifo = (why: string): LeafDecision => {
    const limitBytes = Math.min(
      TC_SIZE_MAX_BYTES,
      Math.max(10 * FRAME_BYTES, Math.round(ceilBytesPerSec * FIFO_TARGET_SECONDS)),
    );
    if ((limitBytes >= 2 * GSO_MAX_BYTES && !segmentGso) || !caps.qdiscs.includes("tbf")) {
      return { leaf: { kind: "bfifo", limitBytes }, why: `${why}: bfifo of ~20 ms` };
    }
    return {
      leaf: { kind: "tbf", rateBytesPerSec: 2 * ceilBytesPerSec, burstBytes: 2 * FRAME_BYTES, limitBytes },
      why: `${why}: tbf as a GSO-splitting FIFO of ~20 ms (${segmentGso ? "group member: byte-fair borrowing" : "rate below 54 Mbit/s"})`,
    };
  };
  const sfq = (why: string): LeafDecision => ({
    leaf: {
      kind: "sfq",
      limitPackets: Math.min(
        SFQ_MAX_LIMIT_PACKETS,
        Math.max(16, Math.round((ceilBytesPerSec * FIFO_TARGET_SECONDS) / FRAME_BYTES)),
      ),
    },
    why,
  });
  const hasFq = caps.qdiscs.includes("fq_codel");
  const hasSfq = caps.qdiscs.includes("sfq");
  switch (choice) {
    case "fq_codel":
      if (hasFq) return { leaf: { kind: "fq_codel" }, why: "policy leaf: fq_codel" };
      break;
    case "sfq":
      if (hasSfq) return sfq("policy leaf: sfq");
      break;
    case "fifo":
      return fifo("policy leaf: fifo");
  }
  if (hasFq) return { leaf: { kind: "fq_codel" }, why: "fq_codel available: flow isolation and AQM" };
  if (hasSfq) return sfq("no fq_codel; sfq available: flow fairness, queue bounded to ~20 ms");
  return fifo("neither fq_codel nor sfq in this kernel");
}
