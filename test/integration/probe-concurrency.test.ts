import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { processRunner } from "../../src/adapters/exec.js";
import { cachedCapabilities } from "../../src/adapters/probe.js";
import { collectStatus } from "../../src/app/status.js";
import { emptyPolicy } from "../../src/core/policy.js";
import { runHook } from "../../src/hook.js";
import { createLab, type Lab } from "../../src/lab/topology.js";
import { domainXml, ifbsIn, SKIP_NOT_ROOT, uuidFor } from "../helpers/netns.js";

// A new host: an empty run directory (no cached capabilities) and many guests starting at once, each hook
// probing the kernel. Every one of them must end shaped in both directions, and the cache must hold the truth.

const GUESTS = 6;

test("concurrent hooks on an empty run dir all end shaped", { skip: SKIP_NOT_ROOT }, async () => {
  let lab: Lab | undefined;
  const runDir = mkdtempSync(join(tmpdir(), "virtqos-probe-run-"));
  const saved = {
    run: process.env.VIRTQOS_RUN_DIR,
    config: process.env.VIRTQOS_CONFIG,
    log: process.env.VIRTQOS_LOG,
  };
  process.env.VIRTQOS_RUN_DIR = runDir;
  process.env.VIRTQOS_CONFIG = join(runDir, "no-policy.yaml");
  process.env.VIRTQOS_LOG = "silent";
  try {
    lab = await createLab({ guests: Array.from({ length: GUESTS }, (_, i) => ({ name: `p${i}` })) });
    const l = lab;
    const xmls = l.guests.map((g) =>
      domainXml(g.name, uuidFor(g.name), [
        { guest: g, bridge: l.bridge, inbound: { average: 1250 }, outbound: { average: 625 } },
      ]),
    );
    const results = await Promise.all(
      l.guests.map((g, i) => runHook([g.name, "start", "begin", "-"], xmls[i] ?? "", { netns: l.hostNs })),
    );
    for (const r of results) assert.equal(r.exitCode, 0);

    const cached = JSON.parse(readFileSync(join(runDir, "capabilities.json"), "utf8"));
    assert.equal(cached.ifb, true, "the cache claims this kernel has no IFB");
    assert.ok(cached.actions.includes("mirred"));

    const runner = processRunner({ netns: l.hostNs });
    const rows = await collectStatus(runner, runDir, await cachedCapabilities(runner, runDir), emptyPolicy());
    assert.equal(rows.length, 2 * GUESTS, JSON.stringify(rows.map((r) => [r.dev, r.direction])));
    for (const r of rows) assert.ok(r.matches, `${r.dev} ${r.direction} does not match the kernel`);
    assert.equal((await ifbsIn(l.hostNs)).length, GUESTS, "one upload IFB per guest");
    // No probe device is left behind.
    const left = await runner.run("ip", ["-j", "link", "show", "type", "ifb"]);
    assert.ok(!/"vqp[0-9a-f]{12}"/.test(left.stdout), left.stdout);
    assert.ok(!existsSync(join(runDir, "probe.lock")), "the probe lock is released");
  } finally {
    await lab?.destroy();
    rmSync(runDir, { recursive: true, force: true });
    for (const [k, v] of Object.entries({
      VIRTQOS_RUN_DIR: saved.run,
      VIRTQOS_CONFIG: saved.config,
      VIRTQOS_LOG: saved.log,
    })) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  }
});
