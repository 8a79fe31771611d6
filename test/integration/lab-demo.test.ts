import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { SKIP_NOT_ROOT } from "../helpers/netns.js";

// The README's first command as a new user runs it: the built CLI, `virtqos lab`, an output directory that
// has never held a run (no cached capabilities, no code cache, no records). Full length: quick mode's 2 s
// transfers are too short to judge TCP at 10 Mbit/s within the lab's 5 %.

const BIN = fileURLToPath(new URL("../../bin/virtqos", import.meta.url));

test("virtqos lab passes on its first run from an empty output directory", { skip: SKIP_NOT_ROOT }, () => {
  const out = join(mkdtempSync(join(tmpdir(), "virtqos-lab-")), "lab-output");
  try {
    const env = { ...process.env };
    delete env.VIRTQOS_RUN_DIR;
    delete env.VIRTQOS_CONFIG;
    const r = spawnSync(process.execPath, [BIN, "lab", "--out", out], {
      encoding: "utf8",
      env,
      timeout: 600_000,
    });
    const output = `${r.stdout}\n${r.stderr}`;
    assert.equal(r.status, 0, output);
    assert.doesNotMatch(output, /ERROR/, "a hook reported an error on the first run");
    const results = JSON.parse(readFileSync(join(out, "results.json"), "utf8"));
    assert.equal(results.verdict, "PASS", output);
    assert.equal(results.groups.verdict, "PASS", output);
    assert.ok(readdirSync(join(out, "run")).includes("capabilities.json"));
    const caps = JSON.parse(readFileSync(join(out, "run", "capabilities.json"), "utf8"));
    assert.equal(caps.ifb, true);
  } finally {
    rmSync(join(out, ".."), { recursive: true, force: true });
  }
});
