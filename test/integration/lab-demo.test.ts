import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { SKIP_NOT_ROOT } from "../helpers/netns.js";

// The README's first command as a new user runs it: the built CLI, `virtqos lab`, an output directory that
// has never held a run (no cached capabilities, no code cache, no records). What is judged here is that every
// guest is shaped on that first run (the hook reported no error, nothing ran unshaped); how close each rate
// comes to its limit is the lab's own verdict and the benchmarks' (printed below, not asserted: a 2-core
// machine's TCP noise is not a property of the first run).

const BIN = fileURLToPath(new URL("../../bin/virtqos", import.meta.url));

interface Row {
  guest: string;
  direction: string;
  configuredBitsPerSec: number;
  tcpL2BitsPerSec: number;
  udpL2BitsPerSec: number;
}

test(
  "virtqos lab shapes every guest on its first run from an empty output directory",
  { skip: SKIP_NOT_ROOT },
  (t) => {
    const out = join(mkdtempSync(join(tmpdir(), "virtqos-lab-")), "lab-output");
    try {
      const env = { ...process.env };
      delete env.VIRTQOS_RUN_DIR;
      delete env.VIRTQOS_CONFIG;
      const r = spawnSync(process.execPath, [BIN, "lab", "--quick", "--out", out], {
        encoding: "utf8",
        env,
        timeout: 300_000,
      });
      const output = `${r.stdout}\n${r.stderr}`;
      // 0: every verdict passed; 1: a measured rate outside the lab's tolerance. Anything else is a crash.
      assert.ok(r.status === 0 || r.status === 1, output);
      assert.doesNotMatch(output, /ERROR/, "a hook reported an error on the first run");
      const caps = JSON.parse(readFileSync(join(out, "run", "capabilities.json"), "utf8"));
      assert.equal(caps.ifb, true, "the first run cached 'no IFB'");
      assert.ok(readdirSync(join(out, "run")).includes("capabilities.json"));
      const results = JSON.parse(readFileSync(join(out, "results.json"), "utf8"));
      const rows = results.rows as Row[];
      assert.equal(rows.length, 6, "three guests, two directions each");
      for (const row of rows) {
        // Shaped, not unshaped: the bug this guards against left guests at Gbit/s against a 50 Mbit/s limit.
        for (const measured of [row.tcpL2BitsPerSec, row.udpL2BitsPerSec]) {
          const ratio = measured / row.configuredBitsPerSec;
          assert.ok(
            ratio > 0.5 && ratio < 1.5,
            `${row.guest} ${row.direction}: ${ratio.toFixed(3)} of its limit`,
          );
        }
      }
      t.diagnostic(`lab verdicts: rates ${results.verdict}, groups ${results.groups.verdict}`);
    } finally {
      rmSync(join(out, ".."), { recursive: true, force: true });
    }
  },
);
