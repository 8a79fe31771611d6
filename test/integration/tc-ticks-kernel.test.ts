import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { maxBucketBytes } from "../../src/core/recipe.js";
import { parseClasses } from "../../src/core/tc/normalise.js";
import { bucketBytesShownAs, shownBucketBytes } from "../../src/core/tc/ticks.js";
import { run } from "../../src/lab/exec.js";
import { SKIP_NOT_ROOT } from "../helpers/netns.js";

// The tick model against the kernel itself: a rollback re-applies sizes read back from `tc show`, and a size
// the model mispredicts restores a class that reads back a few bytes off (seen at 34 Mbit/s: 67048 -> 67039).
const NS = `vqticks${process.pid}`;
const CLASSES = 400;

// Deterministic pseudo-random pairs, spread over rates (8 kbit/s..10 Gbit/s) and bucket sizes (1.5 KiB..4 MiB).
function pairs(): [number, number][] {
  let x = 0x2545f491;
  const next = () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
  // Within what the planner emits (buckets above maxBucketBytes overflow the kernel's 32-bit ticks), plus
  // the sizes virtqos renders most (67050, GSO + frame) at rates that are multiples of 1 Mbit/s.
  const random = Array.from({ length: CLASSES - 100 }, (): [number, number] => {
    const rate = Math.round(1000 * 10 ** (next() * 6.1)); // bytes/s
    return [rate, Math.min(Math.round(1514 * 2 ** (next() * 11.5)), maxBucketBytes(rate))];
  });
  const common = Array.from({ length: 100 }, (_, i): [number, number] => [
    125_000 * (i + 1),
    67_048 + (i % 3),
  ]);
  return [...random, ...common];
}

before(async () => {
  if (SKIP_NOT_ROOT) return;
  await run("ip", ["netns", "add", NS]);
  await run("ip", ["-n", NS, "link", "add", "tk0", "type", "veth", "peer", "name", "tk1"]);
  await run("tc", ["-n", NS, "qdisc", "add", "dev", "tk0", "root", "handle", "1:", "htb"]);
});
after(async () => {
  if (!SKIP_NOT_ROOT) await run("ip", ["netns", "del", NS]).catch(() => {});
});

async function showAll(given: [number, number][]): Promise<Map<string, number>> {
  const lines = given.map(
    ([rate, size], i) =>
      `class replace dev tk0 parent 1: classid 1:${(i + 1).toString(16)} htb rate ${rate * 8}bit burst ${size}b cburst ${size}b quantum 1514`,
  );
  await run("tc", ["-n", NS, "-batch", "-"], { input: `${lines.join("\n")}\n` });
  const text = (await run("tc", ["-n", NS, "-d", "class", "show", "dev", "tk0"])).stdout;
  return new Map(parseClasses(text).map((c) => [c.classid, c.burstBytes]));
}

test(
  "shownBucketBytes predicts what the kernel shows, and bucketBytesShownAs gives back what was read",
  { skip: SKIP_NOT_ROOT },
  async () => {
    const given = pairs();
    const shown = await showAll(given);
    const wrong = given.flatMap(([rate, size], i) => {
      const got = shown.get(`1:${(i + 1).toString(16)}`);
      return got === shownBucketBytes(rate, size)
        ? []
        : [`rate ${rate} B/s size ${size}: kernel ${got}, model ${shownBucketBytes(rate, size)}`];
    });
    assert.deepEqual(wrong.slice(0, 5), [], `${wrong.length} of ${CLASSES} mispredicted`);
    // Restore: give what was read, read again: the same.
    const again = await showAll(
      given.map(([rate], i) => [
        rate,
        bucketBytesShownAs(rate, shown.get(`1:${(i + 1).toString(16)}`) as number),
      ]),
    );
    const drift = given.flatMap(([rate], i) => {
      const id = `1:${(i + 1).toString(16)}`;
      return again.get(id) === shown.get(id)
        ? []
        : [`rate ${rate}: read ${shown.get(id)}, restored reads ${again.get(id)}`];
    });
    assert.deepEqual(drift.slice(0, 5), [], `${drift.length} of ${CLASSES} drift on restore`);
  },
);
