import { parseTcSize, printTcSize } from "./normalise.js";

// How the kernel keeps a token bucket and how tc shows it back. HTB classes and police take a bucket as a time
// in psched ticks (64 ns each), which tc computes from the size through whole microseconds; TBF takes the size
// in bytes and keeps nanoseconds. tc shows each back as the size that whole microseconds of the dumped ticks
// carry at the rate, printed with print_size ("62493b", "64Kb", "1Mb"): what `tc show` says is not what was
// given, and giving back what it says can show something else again (62500 shows as 62493, 62493 as 62490).
// Putting a device back exactly as it was read therefore needs a size that shows as what was read: these find
// one.

const NS_PER_TICK = 64;
const TICKS_PER_US = 1000 / NS_PER_TICK;
const US_PER_SEC = 1_000_000;
/** Sizes are 32-bit in netlink. */
const SIZE_MAX_BYTES = 2 ** 32 - 1;

/** tc_core_tick2time: ticks to whole microseconds. */
const ticksToUs = (ticks: number): number => Math.floor(ticks / TICKS_PER_US);
/** tc_calc_xmitsize: the bytes `us` microseconds carry at the rate. */
const usToBytes = (rateBytesPerSec: number, us: number): number =>
  Math.floor((rateBytesPerSec * us) / US_PER_SEC);

/** What tc shows (as parsed back) for an HTB or police bucket given as `bytes`. */
export function shownBucketBytes(rateBytesPerSec: number, bytes: number): number {
  // tc_calc_xmittime: whole microseconds, then whole ticks; the kernel keeps and dumps the ticks. In tc's
  // own double arithmetic and order, size / rate first: 1e6 * (67048 / 4250000) is 15775.999..., 15775 µs,
  // so 67048 shows as 67039 at 34 Mbit/s, which exact arithmetic (15776 µs) does not predict.
  const us = Math.floor(US_PER_SEC * (bytes / rateBytesPerSec));
  const shown = usToBytes(rateBytesPerSec, ticksToUs(Math.floor(us * TICKS_PER_US)));
  return parseTcSize(printTcSize(shown));
}

/** The microseconds a TBF bucket of `bytes` holds as the kernel dumps it (nanoseconds kept, ticks dumped). */
function tbfBucketUs(rateBytesPerSec: number, bytes: number): number {
  // In BigInt: bytes x 1e9 passes 2^53 from 9 MB on, and the kernel's nanoseconds are whole.
  const ns = (BigInt(Math.floor(bytes)) * 1_000_000_000n) / BigInt(Math.max(1, Math.round(rateBytesPerSec)));
  return ticksToUs(Number(ns / BigInt(NS_PER_TICK)));
}

/** What `tc -j qdisc show` says of a TBF's burst. */
export const shownTbfBurstBytes = (rateBytesPerSec: number, burstBytes: number): number =>
  usToBytes(rateBytesPerSec, tbfBucketUs(rateBytesPerSec, burstBytes));

/** What `tc -j qdisc show` says of a TBF's queue limit: "lat", the µs the queue holds beyond the burst. */
export const shownTbfLatencyUs = (rateBytesPerSec: number, limitBytes: number, burstBytes: number): number =>
  Math.floor((US_PER_SEC * limitBytes) / rateBytesPerSec - tbfBucketUs(rateBytesPerSec, burstBytes));

/** The sizes in [lo, hi] whose shown value is `target`, for a shown value that grows with the size. */
function sizesShownAs(
  shown: (bytes: number) => number,
  target: number,
  lo = 0,
  hi = SIZE_MAX_BYTES,
): [number, number] | undefined {
  const first = (atLeast: number): number => {
    let [a, b] = [lo, hi + 1];
    while (a < b) {
      const m = Math.floor((a + b) / 2);
      if (shown(m) >= atLeast) b = m;
      else a = m + 1;
    }
    return a;
  };
  const from = first(target);
  const to = first(target + 1) - 1;
  return from <= to && from <= hi ? [from, to] : undefined;
}

const middle = ([a, b]: [number, number]): number => a + Math.floor((b - a) / 2);

/**
 * An HTB or police bucket size that tc shows as `shownBytes`: that size itself where it shows as itself (the
 * ticks are whole numbers both ways, so it is exact), else the middle of those that do, else `shownBytes`.
 */
export function bucketBytesShownAs(rateBytesPerSec: number, shownBytes: number): number {
  if (!(rateBytesPerSec > 0) || !Number.isFinite(shownBytes)) return shownBytes;
  if (shownBucketBytes(rateBytesPerSec, shownBytes) === shownBytes) return shownBytes;
  const range = sizesShownAs((b) => shownBucketBytes(rateBytesPerSec, b), shownBytes);
  return range ? middle(range) : shownBytes;
}

/**
 * A TBF burst and queue limit that tc shows as `burstBytes` and `latUs`; undefined if none does. The limit is
 * only shown through the latency, which also depends on the burst's microseconds: each candidate burst is
 * tried with the smallest limit that could show that latency.
 */
export function tbfShownAs(
  rateBytesPerSec: number,
  burstBytes: number,
  latUs: number,
): { burstBytes: number; limitBytes: number } | undefined {
  if (!(rateBytesPerSec > 0) || !Number.isFinite(burstBytes) || !Number.isFinite(latUs)) return undefined;
  // Every microsecond count that shows as `burstBytes`, fewest first.
  for (let us = Math.ceil((burstBytes * US_PER_SEC) / rateBytesPerSec); ; us++) {
    const carried = usToBytes(rateBytesPerSec, us);
    if (carried > burstBytes) return undefined;
    if (carried < burstBytes) continue;
    const range = sizesShownAs((b) => tbfBucketUs(rateBytesPerSec, b), us);
    if (!range) continue;
    const burst = middle(range);
    const limitBytes = Math.ceil(((latUs + us) * rateBytesPerSec) / US_PER_SEC);
    if (shownTbfLatencyUs(rateBytesPerSec, limitBytes, burst) === latUs)
      return { burstBytes: burst, limitBytes };
  }
}
