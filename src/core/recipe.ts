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

/** A qdisc virtqos puts under its GSO-splitting TBF (TBF's one class, `<tbf handle>1`). */
export type ChildLeaf = { kind: "fq_codel" };

export type Leaf =
  | { kind: "fq_codel" }
  | { kind: "sfq"; limitPackets: number }
  | { kind: "bfifo"; limitBytes: number }
  /**
   * TBF at twice the class's ceiling with a small burst (two frames; in front of fq_codel at least 1 ms at its
   * rate), so HTB alone sets the pace: it exists to split GSO packets into frames at enqueue
   * (net/sched/sch_tbf.c, tbf_segment: a GSO packet longer than the burst is segmented and every segment is
   * enqueued to TBF's child qdisc). Without `child` it is a byte FIFO (TBF's default bfifo child, `limitBytes`
   * deep); with one, `child` is grafted in its place and does the queueing:
   * `limitBytes` then only sizes the default bfifo between TBF's creation and the graft (the kernel passes a
   * changed limit on to FIFO children only: fifo_set_limit).
   */
  | {
      kind: "tbf";
      rateBytesPerSec: number;
      burstBytes: number;
      limitBytes: number;
      child?: ChildLeaf;
    };

/**
 * What a leaf is for handle purposes: its qdisc kind, or `tbf+<child>` for a TBF with a child qdisc. A TBF with
 * a child is another recipe than a TBF FIFO and gets its own handle: `qdisc replace` with the same handle would
 * change the TBF in place and keep whatever child it has.
 */
export type LeafKey = Leaf["kind"] | `tbf+${ChildLeaf["kind"]}`;
export const leafKey = (leaf: Leaf): LeafKey =>
  leaf.kind === "tbf" && leaf.child ? `tbf+${leaf.child.kind}` : leaf.kind;

/** A leaf in words, as `virtqos doctor` names it: "fq_codel under a GSO-splitting tbf". */
export function describeLeaf(leaf: Leaf): string {
  if (leaf.kind === "tbf" && leaf.child) return `${leaf.child.kind} under a GSO-splitting tbf`;
  return leaf.kind;
}

/** One Ethernet frame as tc accounts it (no FCS, no preamble). */
export const FRAME_BYTES = 1514;
/** Ethernet header plus one VLAN tag, on top of the MTU. */
const L2_OVERHEAD_BYTES = 18;

/**
 * The largest frame a device sends, from its MTU (1500 unless said otherwise). A TBF drops every packet larger
 * than its bucket that it cannot split (jumbo frames are not GSO packets), so a GSO-splitting TBF's bucket
 * must hold one.
 */
export function maxFrameBytes(mtuBytes: number | undefined): number {
  return Math.max(FRAME_BYTES, (mtuBytes ?? 1500) + L2_OVERHEAD_BYTES);
}
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
/** fq_codel's target: the standing queue delay its AQM allows (the kernel's default, 5 ms). */
export const FQ_CODEL_TARGET_SECONDS = 0.005;
/**
 * Below this ceiling one GSO packet takes longer than twice fq_codel's target to send (67,050 B / 10 ms =
 * 6,705,000 B/s, 53.64 Mbit/s; the FIFO's threshold too), so fq_codel gets a GSO-splitting TBF in front of it.
 * HTB dequeues whole packets from its leaf and then waits until the class has the tokens back: a ping that
 * arrives behind a 64 KiB GSO packet waits for that packet's transmission time (54 ms at 10 Mbit/s) however
 * well fq_codel schedules. Not higher: the TBF is not work-conserving (when its bucket is empty HTB waits for
 * its timer), and at 100 Mbit/s it cost UDP 3-18 % of the limit in the test VM, where fq_codel alone got
 * 0.98-1.00; above this rate a GSO packet adds at most 10 ms.
 */
export const FQ_CODEL_SPLIT_BELOW_BYTES_PER_SEC = GSO_MAX_BYTES / (2 * FQ_CODEL_TARGET_SECONDS);
/**
 * The GSO-splitting TBF's bucket in front of fq_codel, as time at its own rate (twice the ceiling): 1 ms. TBF
 * refills only when its watchdog fires, and a bucket shallower than the timer's lateness loses tokens for good:
 * with two frames (121 µs at 200 Mbit/s) TCP reached 0.73-0.97 of 100 Mbit/s in the test VM, with 1 ms 0.99. It
 * also bounds what passes unsplit (a GSO packet no longer than the bucket): 2 ms at the ceiling, below the 5 ms
 * target. Never below two frames (at 10 Mbit/s that is 1.2 ms of bucket, and splitting into single frames).
 */
export const GSO_SPLIT_BUCKET_SECONDS = 0.001;
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

/**
 * fq_codel where the kernel has it (under a GSO-splitting tbf below ~54 Mbit/s), else sfq, else a FIFO bounded
 * by queueing delay, not by packet count.
 */
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
  /** The largest frame the leaf must pass (maxFrameBytes of the device's MTU). */
  frameBytes = FRAME_BYTES,
): LeafDecision {
  const hasTbf = caps.qdiscs.includes("tbf");
  // A byte FIFO holding ~20 ms of data, at least 10 frames.
  const fifoLimitBytes = Math.min(
    TC_SIZE_MAX_BYTES,
    Math.max(10 * FRAME_BYTES, Math.round(ceilBytesPerSec * FIFO_TARGET_SECONDS)),
  );
  const gsoSplitter = (burstBytes: number, child?: ChildLeaf): Leaf => ({
    kind: "tbf",
    rateBytesPerSec: 2 * ceilBytesPerSec,
    // Never below one whole frame of the device: a jumbo frame larger than the bucket would be dropped.
    burstBytes: Math.max(burstBytes, frameBytes),
    limitBytes: fifoLimitBytes,
    ...(child ? { child } : {}),
  });
  // Below ~54 Mbit/s the ~20 ms FIFO holds less than two GSO packets (64 KiB each): a plain bfifo then drops
  // whole GSO packets and TCP falls to ~90% of the limit, while counting packets (pfifo) lets 64 KiB packets
  // queue for 280 ms. TBF splits GSO packets into frames before queueing them, which keeps both the latency
  // bound and TCP at the limit; above the threshold a bfifo is cheaper.
  const fifo = (why: string): LeafDecision => {
    if ((fifoLimitBytes >= 2 * GSO_MAX_BYTES && !segmentGso) || !hasTbf) {
      return { leaf: { kind: "bfifo", limitBytes: fifoLimitBytes }, why: `${why}: bfifo of ~20 ms` };
    }
    return {
      leaf: gsoSplitter(2 * FRAME_BYTES),
      why: `${why}: tbf as a GSO-splitting FIFO of ~20 ms (${segmentGso ? "group member: byte-fair borrowing" : "rate below 54 Mbit/s"})`,
    };
  };
  // fq_codel, behind the GSO-splitting TBF where one GSO packet takes longer than fq_codel's 5 ms target at the
  // ceiling (below ~54 Mbit/s), and for group members at every rate (byte-fair borrowing, as for the FIFO).
  // Members keep the FIFO's bucket of two frames: what passes unsplit must stay within a small HTB quantum.
  const fqCodel = (why: string): LeafDecision => {
    const slow = ceilBytesPerSec < FQ_CODEL_SPLIT_BELOW_BYTES_PER_SEC;
    if (!hasTbf || !(slow || segmentGso)) return { leaf: { kind: "fq_codel" }, why };
    const bucket = Math.round(2 * ceilBytesPerSec * GSO_SPLIT_BUCKET_SECONDS);
    return {
      leaf: gsoSplitter(segmentGso ? 2 * FRAME_BYTES : Math.max(2 * FRAME_BYTES, bucket), {
        kind: "fq_codel",
      }),
      why: `${why}; under a tbf at twice the rate that splits GSO packets into frames (${segmentGso ? "group member: byte-fair borrowing" : "below 54 Mbit/s a 64 KiB GSO packet takes longer than 10 ms, twice fq_codel's target"})`,
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
      if (hasFq) return fqCodel("policy leaf: fq_codel");
      break;
    case "sfq":
      if (hasSfq) return sfq("policy leaf: sfq");
      break;
    case "fifo":
      return fifo("policy leaf: fifo");
  }
  if (hasFq) return fqCodel("fq_codel available: flow isolation and AQM");
  if (hasSfq) return sfq("no fq_codel; sfq available: flow fairness, queue bounded to ~20 ms");
  return fifo("neither fq_codel nor sfq in this kernel");
}
