import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, test } from "node:test";
import { acquireFileLock, LockTimeoutError } from "../../src/adapters/lock.js";

// Real files, real processes: the lock is the one thing every writer (hook, CLI, tx watcher) shares.
const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
function runDir(): string {
  const d = mkdtempSync(join(tmpdir(), "vq-lock-"));
  dirs.push(d);
  return d;
}

test("the lock file holds the owner's pid from the moment it exists, and nothing is left aside", async () => {
  const dir = runDir();
  const release = await acquireFileLock(dir, 1000);
  assert.equal(readFileSync(join(dir, "lock"), "utf8").split("\n")[0], String(process.pid));
  assert.deepEqual(readdirSync(dir), ["lock"]);
  release();
  assert.deepEqual(readdirSync(dir), []);
});

test("an empty lock file (an owner killed between create and write) is stolen after a short grace", async () => {
  const dir = runDir();
  writeFileSync(join(dir, "lock"), "");
  const old = new Date(Date.now() - 10_000);
  utimesSync(join(dir, "lock"), old, old);
  const t0 = Date.now();
  const release = await acquireFileLock(dir, 5000);
  assert.ok(Date.now() - t0 < 1000, `took ${Date.now() - t0} ms`);
  release();
});

test("a fresh empty lock file is respected until the grace ends", async () => {
  const dir = runDir();
  writeFileSync(join(dir, "lock"), "");
  await assert.rejects(acquireFileLock(dir, 300), LockTimeoutError);
});

test("a live owner's lock is never stolen; a dead owner's is, with its aside file swept", async () => {
  const dir = runDir();
  const child = spawn(process.execPath, ["-e", "setTimeout(() => {}, 60000)"], { stdio: "ignore" });
  await new Promise((r) => child.once("spawn", r));
  const pid = child.pid as number;
  writeFileSync(join(dir, "lock"), String(pid));
  await assert.rejects(acquireFileLock(dir, 300), /pid \d+/);
  child.kill("SIGKILL");
  await new Promise((r) => child.once("exit", r));
  writeFileSync(join(dir, `lock.${pid}.tmp`), String(pid));
  const release = await acquireFileLock(dir, 2000);
  assert.deepEqual(readdirSync(dir), ["lock"]);
  release();
});
