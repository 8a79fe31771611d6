import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { loadPolicyCached } from "../../src/adapters/policy-file.js";
import { ERRORS } from "../../src/core/errors.js";
import { PolicyError, parsePolicy } from "../../src/core/policy.js";
import { DEFAULT_HOOK_TIMEOUT_MS, HookDeadline } from "../../src/hook.js";

// `hookTimeout` in the policy file and the hook's deadline (the processes themselves: test/integration/hook-exit).

test("hookTimeout: a duration with its unit", () => {
  const ms = (v: string) => parsePolicy(`hookTimeout: ${v}\n`, "p.yaml").hookTimeoutMs;
  assert.equal(ms("20s"), 20_000);
  assert.equal(ms("2s"), 2_000);
  assert.equal(ms("1500ms"), 1_500);
  assert.equal(ms("1.5s"), 1_500);
  assert.equal(ms("2min"), 120_000);
  assert.equal(ms("1m"), 60_000);
  assert.equal(ms("10S"), 10_000);
  assert.equal(parsePolicy("strict: true\n", "p.yaml").hookTimeoutMs, undefined, "unset: the hook's default");
  assert.equal(DEFAULT_HOOK_TIMEOUT_MS, 20_000);
});

test("hookTimeout: wrong values name the line, the field and the fix", () => {
  const problem = (v: string) => {
    try {
      parsePolicy(`logLevel: info\nhookTimeout: ${v}\n`, "p.yaml");
    } catch (e) {
      assert.ok(e instanceof PolicyError);
      assert.equal(e.problems.length, 1, e.message);
      return e.problems[0];
    }
    assert.fail(`hookTimeout: ${v} was accepted`);
  };
  const bare = problem("20");
  assert.equal(bare.field, "hookTimeout");
  assert.equal(bare.line, 2);
  assert.match(bare.message, /"20" has no unit/);
  assert.match(bare.fix, /"20s"/);
  assert.match(problem("soon").message, /"soon" is not a duration/);
  assert.match(problem("20 seconds").message, /is not a duration/);
  assert.match(problem("500ms").message, /outside 1s\.\.10min/);
  assert.match(problem("11min").message, /outside 1s\.\.10min/);
  assert.match(problem("[1s]").message, /unsupported value|must be/);
});

test("the cached policy carries hookTimeout (the hook reads it from there)", async () => {
  const dir = mkdtempSync(join(tmpdir(), "virtqos-hooktimeout-"));
  try {
    const file = join(dir, "policy.yaml");
    writeFileSync(file, "hookTimeout: 3s\n");
    assert.equal((await loadPolicyCached(file, dir)).hookTimeoutMs, 3_000); // parsed, cache written
    assert.equal((await loadPolicyCached(file, dir)).hookTimeoutMs, 3_000); // from the cache
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("HOOK_TIMEOUT is in the error catalogue", () => {
  assert.equal(ERRORS.HOOK_TIMEOUT.exitCode, 1);
});

test("HookDeadline counts from its start and can be re-armed until it expires", async () => {
  const t0 = Date.now();
  const d = new HookDeadline(t0 - 1_000, 60_000);
  assert.ok(d.remainingMs() <= 59_000 && d.remainingMs() > 58_000);
  d.set(1_050); // already 1 s in: ~50 ms left
  let fired = false;
  void d.expired.then(() => {
    fired = true;
  });
  await new Promise((r) => setTimeout(r, 150));
  assert.ok(fired && d.isExpired);
  d.set(60_000); // too late: an expired deadline stays expired
  assert.ok(d.isExpired);
  assert.equal(d.remainingMs(), 0);
  d.dispose();
});

test("HookDeadline's hard stop comes after the rollback grace, and dispose() cancels everything", async () => {
  let hard = 0;
  const d = new HookDeadline(Date.now(), 10, () => hard++);
  await d.expired;
  d.dispose();
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(hard, 0);
});
