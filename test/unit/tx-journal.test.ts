import assert from "node:assert/strict";
import { appendFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import {
  appendEvent,
  JOURNAL_VERSION,
  type OpenTx,
  readEvents,
  readLog,
  readOpenTx,
  readSnapshot,
  sweepEnded,
  writeBegin,
  writeEnd,
} from "../../src/adapters/tx-journal.js";
import { installRecoverUnit } from "../../src/cli/install-hook.js";
import { lineDiff } from "../../src/core/line-diff.js";

// The transaction journal on a real filesystem: what a crash at each step leaves, and that readers cope.

const actor = { uid: 0, user: "root", door: "cli" };

function openTx(id: string): OpenTx {
  return {
    version: JOURNAL_VERSION,
    id,
    who: actor,
    begunAt: "2026-11-29T12:00:00.000Z",
    bootId: "b",
    state: "open",
    runDir: "/run/virtqos",
    policy: { path: "/etc/virtqos/policy.yaml", bytesBase64: Buffer.from("a: 1\n").toString("base64") },
  };
}

function withDir(fn: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), "virtqos-journal-"));
  try {
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test("begin writes the snapshot before the open marker; end logs before removing it", () =>
  withDir((dir) => {
    assert.equal(readOpenTx(dir), undefined);
    writeBegin(dir, openTx("tx-1"), { records: [], kernel: { links: [], devices: [] } });
    assert.equal(readOpenTx(dir)?.id, "tx-1");
    assert.deepEqual(readSnapshot(dir, "tx-1").records, []);
    appendEvent(dir, "tx-1", { at: "t", who: actor, domains: [], scope: ["u"], devs: ["vnet1"] });
    appendEvent(dir, "tx-1", { at: "t", who: actor, domains: [], scope: ["u"], devs: ["vnet2"] });
    assert.deepEqual(
      readEvents(dir, "tx-1").map((e) => e.devs[0]),
      ["vnet1", "vnet2"],
    );
    writeEnd(dir, "tx-1", {
      id: "tx-1",
      who: actor,
      begunAt: "a",
      endedAt: "b",
      outcome: "commit",
      endedBy: actor,
      devices: ["vnet1"],
      domains: [],
      policyDiff: [],
    });
    assert.equal(readOpenTx(dir), undefined);
    assert.deepEqual(
      readLog(dir).map((e) => [e.id, e.outcome]),
      [["tx-1", "commit"]],
    );
    assert.deepEqual(readdirSync(join(dir, "tx")).sort(), ["log.jsonl"]);
  }));

test("a line torn by a crash mid-append is skipped, the rest is read", () =>
  withDir((dir) => {
    writeBegin(dir, openTx("tx-2"), { records: [], kernel: { links: [], devices: [] } });
    appendEvent(dir, "tx-2", { at: "t", who: actor, domains: [], scope: "all", devs: ["a"] });
    appendFileSync(join(dir, "tx", "tx-2.events.jsonl"), '{"at":"t","who":');
    assert.equal(readEvents(dir, "tx-2").length, 1);
  }));

test("files of ended transactions left by a crash are swept; the open one's are kept", () =>
  withDir((dir) => {
    writeBegin(dir, openTx("tx-old"), { records: [], kernel: { links: [], devices: [] } });
    // Crash after the log line and the open marker went, before the snapshot was removed:
    rmSync(join(dir, "tx", "open.json"));
    writeBegin(dir, openTx("tx-new"), { records: [], kernel: { links: [], devices: [] } });
    sweepEnded(dir);
    assert.ok(!existsSync(join(dir, "tx", "tx-old.snapshot.json")));
    assert.ok(existsSync(join(dir, "tx", "tx-new.snapshot.json")));
  }));

test("a journal of another version is refused, not misread", () =>
  withDir((dir) => {
    writeBegin(dir, { ...openTx("tx-3"), version: 99 }, { records: [], kernel: { links: [], devices: [] } });
    assert.throws(() => readOpenTx(dir), /version 99, expected 1/);
  }));

test("lineDiff: removed and added lines in order", () => {
  assert.deepEqual(lineDiff("a\nb\nc\n", "a\nB\nc\nd\n"), ["-b", "+B", "+d"]);
  assert.deepEqual(lineDiff("", "x\n"), ["+x"]);
  assert.deepEqual(lineDiff("x\n", "x\n"), []);
});

test("virtqos-recover.service: runs `tx recover` before libvirtd, with this install's paths", () =>
  withDir((dir) => {
    const none = installRecoverUnit(dir, { systemdRunning: false });
    assert.equal(none.path, undefined);
    assert.match(none.message, /systemd is not running/);
    const r = installRecoverUnit(dir, { systemdRunning: true, enable: false, stateDir: "/var/lib/vq-test" });
    const unit = readFileSync(r.path ?? "", "utf8");
    assert.match(unit, /^Before=libvirtd\.service virtqemud\.service/m);
    assert.match(
      unit,
      new RegExp(`^ExecStart=${process.execPath.replace(/[/.]/g, "\\$&")} \\S+/bin/virtqos tx recover$`, "m"),
    );
    assert.match(unit, /^ConditionPathExists=\/var\/lib\/vq-test\/tx\/open\.json$/m);
    assert.match(unit, /^Environment=VIRTQOS_STATE_DIR=\/var\/lib\/vq-test$/m);
    assert.doesNotMatch(unit, /@[A-Z_]+@/);
  }));
