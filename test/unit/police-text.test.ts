import assert from "node:assert/strict";
import { test } from "node:test";
import { policeFromText } from "../../src/core/tc/normalise.js";

// iproute2 6.1's JSON leaves a police action's rate and burst out; its text output, as printed on Debian 12's
// stock kernel for virtqos's own police filters (matchall and u32), has them.

test("police parameters per priority, from tc's text output", () => {
  const text = [
    "filter protocol all pref 49152 u32 chain 0 ",
    "filter protocol all pref 49152 u32 chain 0 fh 800: ht divisor 1 ",
    "filter protocol all pref 49152 u32 chain 0 fh 800::800 order 2048 key ht 800 bkt 0 flowid :1 not_in_hw ",
    "  match 00000000/00000000 at 0",
    " police 0x2 rate 20Mbit burst 2500Kb mtu 64Kb action drop overhead 0b ",
    "\tref 1 bind 1",
    "",
    "filter protocol all pref 64000 matchall chain 0 ",
    "filter protocol all pref 64000 matchall chain 0 handle 0x1 ",
    "  not_in_hw",
    "\taction order 1:  police 0x1 rate 10Mbit burst 1250Kb mtu 64Kb action drop overhead 0b ",
    "\tref 1 bind 1",
  ].join("\n");
  const got = policeFromText(text);
  assert.deepEqual(got.get(64000), { rateBitsPerSec: 10_000_000, burstBytes: 1_280_000 });
  assert.deepEqual(got.get(49152), { rateBitsPerSec: 20_000_000, burstBytes: 2_560_000 });
  assert.equal(policeFromText("filter protocol all pref 64000 u32 chain 0 \n").size, 0);
});
