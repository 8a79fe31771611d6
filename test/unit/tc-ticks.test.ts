import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { parseTcSize, printTcSize } from "../../src/core/tc/normalise.js";
import {
  bucketBytesShownAs,
  shownBucketBytes,
  shownTbfBurstBytes,
  shownTbfLatencyUs,
  tbfShownAs,
} from "../../src/core/tc/ticks.js";
import { tbfBurstRoundTrip, tbfLatency, ticksRoundTrip } from "../helpers/fake-kernel.js";

// Read back from kernel 6.18 with iproute2 6.1 (the fake kernel's own figures, test/helpers/fake-kernel.ts).
describe("what tc shows of a bucket", () => {
  test("HTB and police: whole microseconds, then whole ticks, printed with print_size", () => {
    assert.equal(shownBucketBytes(3_750_000, 62_500), 62_493);
    assert.equal(shownBucketBytes(3_750_000, 67_050), 67_050);
    assert.equal(shownBucketBytes(1_250_000, 62_500), 62_500);
    assert.equal(shownBucketBytes(3_750_000, 62_493), 62_490, "showing what was shown drifts");
    // tc divides first, in doubles: 1e6 * (67048 / 4250000) = 15775.999... µs (read from a real kernel).
    assert.equal(shownBucketBytes(4_250_000, 67_048), 67_039);
    assert.equal(shownBucketBytes(4_250_000, bucketBytesShownAs(4_250_000, 67_048)), 67_048);
  });

  test("TBF: bytes in, nanoseconds kept, ticks dumped; the limit only through the latency", () => {
    assert.equal(shownTbfBurstBytes(7_500_000, 3028), 3022);
    assert.equal(shownTbfLatencyUs(7_500_000, 75_000, 3028), 9597);
    assert.equal(shownTbfBurstBytes(2_500_000, 3028), 3027);
    assert.equal(shownTbfLatencyUs(2_500_000, 25_000, 3028), 8789);
  });

  test("the same figures as the fake kernel's independent model, over a range of rates and sizes", () => {
    for (const rate of [1000, 125_000, 1_250_000, 3_750_000, 7_500_000, 125_000_000, 2_500_000_000]) {
      for (const bytes of [1514, 3028, 62_500, 67_050, 1_250_000, 12_800_000]) {
        assert.equal(shownBucketBytes(rate, bytes), parseTcSize(printTcSize(ticksRoundTrip(rate, bytes))));
        assert.equal(shownTbfBurstBytes(rate, bytes), tbfBurstRoundTrip(rate, bytes));
        assert.equal(shownTbfLatencyUs(rate, 20 * bytes, bytes), tbfLatency(rate, 20 * bytes, bytes));
      }
    }
  });
});

describe("a size that shows as what was read", () => {
  test("HTB/police: the size itself where it shows as itself, else one that does", () => {
    assert.equal(bucketBytesShownAs(3_750_000, 67_050), 67_050);
    const y = bucketBytesShownAs(3_750_000, 62_493);
    assert.equal(shownBucketBytes(3_750_000, y), 62_493);
    for (const rate of [125_000, 1_250_000, 3_750_000, 125_000_000, 5_000_000_000]) {
      for (const given of [3028, 62_500, 65_536, 1_048_576, 12_800_000]) {
        const shown = shownBucketBytes(rate, given);
        assert.equal(shownBucketBytes(rate, bucketBytesShownAs(rate, shown)), shown, `${rate} ${given}`);
      }
    }
  });

  test("TBF: a burst and limit that show the burst and latency read", () => {
    for (const rate of [2000, 250_000, 2_500_000, 7_500_000, 250_000_000, 10_000_000_000]) {
      for (const [burst, limit] of [
        [3028, 25_000],
        [3028, 75_000],
        [131_072, 5_000_000],
      ]) {
        const shownBurst = shownTbfBurstBytes(rate, burst);
        const lat = shownTbfLatencyUs(rate, limit, burst);
        if (lat < 0) continue;
        const back = tbfShownAs(rate, shownBurst, lat);
        assert.ok(back, `${rate} ${burst} ${limit}`);
        assert.equal(shownTbfBurstBytes(rate, back.burstBytes), shownBurst);
        assert.equal(shownTbfLatencyUs(rate, back.limitBytes, back.burstBytes), lat);
      }
    }
  });

  test("nothing sensible to invert: the value read, or nothing", () => {
    assert.equal(bucketBytesShownAs(0, 3028), 3028);
    assert.equal(bucketBytesShownAs(125_000, Number.NaN), Number.NaN);
    assert.equal(tbfShownAs(0, 3028, 100), undefined);
    assert.equal(tbfShownAs(7_500_000, 3023, 9597), undefined, "3023 is never shown at 7.5 MB/s");
  });
});
