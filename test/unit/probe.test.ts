import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import type { ExecResult, Runner } from "../../src/adapters/exec.js";
import {
  cachedCapabilities,
  isFeatureMissing,
  ProbeFailedError,
  probeCapabilities,
  probeDeviceName,
} from "../../src/adapters/probe.js";

// The probe's decision logic against scripted iproute2 answers: which failures are the kernel's word on a
// missing feature (cached for the boot) and which only disturbed the probe (never cached).

const ok = (stdout = ""): ExecResult => ({ code: 0, stdout, stderr: "" });
const fail = (stderr: string): ExecResult => ({ code: 2, stdout: "", stderr });

/** Answers per command; `tc -batch` failures are given per line number as tc prints them. */
function scripted(opts: {
  ifbAdd?: () => ExecResult;
  batchErrors?: () => Record<number, string>;
}): Runner & { calls: string[][] } {
  const calls: string[][] = [];
  return {
    calls,
    async run(cmd, args) {
      calls.push([cmd, ...args]);
      await new Promise((r) => setTimeout(r, 5));
      if (cmd === "tc" && args[0] === "-V") return ok("tc utility, iproute2-6.1.0\n");
      if (cmd === "ip" && args[0] === "link" && args[1] === "add") return opts.ifbAdd?.() ?? ok();
      if (cmd === "tc" && args.includes("-batch")) {
        const errs = opts.batchErrors?.() ?? {};
        const stderr = Object.entries(errs)
          .map(([n, e]) => `${e}\nWe have an error talking to the kernel\nCommand failed -:${n}`)
          .join("\n");
        return stderr ? { code: 1, stdout: "", stderr } : ok();
      }
      if (cmd === "ip" && args[0] === "-j") return ok("[]");
      return ok();
    },
  };
}

const tmp = () => mkdtempSync(join(tmpdir(), "virtqos-probe-"));
const cacheFile = (dir: string) => join(dir, "capabilities.json");

test("probe device names fit IFNAMSIZ, carry the pid and differ between calls", () => {
  const a = probeDeviceName(4194304);
  assert.equal(a.length, 15);
  assert.match(a, /^vqp400000[0-9a-f]{6}$/);
  const names = new Set(Array.from({ length: 200 }, () => probeDeviceName()));
  assert.ok(names.size >= 199, "random part repeats");
});

test("kernel answers about missing features are recognised; disturbances are not", () => {
  for (const e of [
    "Error: Specified qdisc kind is unknown.",
    "Error: TC classifier not found.",
    "Error: Failed to load TC action module.",
    "Error: Unknown device type.",
    "RTNETLINK answers: Operation not supported",
  ])
    assert.ok(isFeatureMissing(e), e);
  for (const e of [
    "RTNETLINK answers: File exists",
    'Cannot find device "vqp0001e2a1b2c3"',
    "RTNETLINK answers: Device or resource busy",
    "Error: Specified class not found.",
  ])
    assert.ok(!isFeatureMissing(e), e);
});

test("missing features (sfq, police) are reported and cached for the boot", async () => {
  const dir = tmp();
  try {
    const runner = scripted({
      batchErrors: () => ({
        4: "Error: Specified qdisc kind is unknown.",
        14: "Error: Failed to load TC action module.",
      }),
    });
    const caps = await cachedCapabilities(runner, dir);
    assert.ok(!caps.qdiscs.includes("sfq"));
    assert.ok(!caps.actions.includes("police"));
    assert.ok(caps.qdiscs.includes("fq_codel") && caps.ifb);
    assert.ok(existsSync(cacheFile(dir)));
    const again = await cachedCapabilities(scripted({ ifbAdd: () => fail("must not be called") }), dir);
    assert.deepEqual(again.qdiscs, caps.qdiscs);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a disturbed probe is retried and only the clean answer is cached", async () => {
  const dir = tmp();
  try {
    let adds = 0;
    const runner = scripted({ ifbAdd: () => (++adds === 1 ? fail("RTNETLINK answers: File exists") : ok()) });
    const caps = await cachedCapabilities(runner, dir);
    assert.equal(adds, 2);
    assert.equal(caps.ifb, true);
    assert.equal(JSON.parse(readFileSync(cacheFile(dir), "utf8")).ifb, true);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("a probe that stays disturbed reports PROBE_FAILED and writes no cache", async () => {
  const dir = tmp();
  try {
    // The device vanished under the probe: every tc line after it fails with "Cannot find device".
    const runner = scripted({
      batchErrors: () =>
        Object.fromEntries(Array.from({ length: 10 }, (_, i) => [i + 8, 'Cannot find device "x"'])),
    });
    await assert.rejects(cachedCapabilities(runner, dir), (e: unknown) => {
      assert.ok(e instanceof ProbeFailedError);
      assert.equal(e.code, "PROBE_FAILED");
      assert.match(e.message, /Cannot find device/);
      return true;
    });
    assert.equal(existsSync(cacheFile(dir)), false, "a disturbed probe must not be cached");
    // Transient IFB creation failures are not "this kernel has no IFB" either.
    await assert.rejects(
      probeCapabilities(scripted({ ifbAdd: () => fail("RTNETLINK answers: Device or resource busy") })),
      ProbeFailedError,
    );
    const noIfb = await probeCapabilities(scripted({ ifbAdd: () => fail("Error: Unknown device type.") }));
    assert.equal(noIfb.ifb, false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("concurrent callers in one process share one probe", async () => {
  const dir = tmp();
  try {
    const runner = scripted({});
    const all = await Promise.all(Array.from({ length: 8 }, () => cachedCapabilities(runner, dir)));
    const probes = runner.calls.filter((c) => c[0] === "ip" && c[2] === "add").length;
    assert.equal(probes, 1);
    for (const c of all) assert.deepEqual(c.qdiscs, all[0]?.qdiscs);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
