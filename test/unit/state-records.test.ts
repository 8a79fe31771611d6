// The state record files (<runDir>/domains/<uuid>.json), read and written by adapters/state.ts on real files in
// a temporary run directory: the current format (version 2: generation, appliedBy), the format before it
// (no version; `ifb` and `swapped` stored), and a format from a newer virtqos (refused).
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, test } from "node:test";
import {
  loadRecords,
  RECORD_VERSION,
  RecordVersionError,
  readRecordFile,
  saveRecords,
} from "../../src/adapters/state.js";
import { desiredFromRecords } from "../../src/app/status.js";
import type { DomainRecord } from "../../src/core/model.js";
import { interfaceIfbName } from "../../src/core/names.js";
import { recordIfb } from "../../src/core/plan/records.js";
import { limit } from "../helpers/plan-fixtures.js";

const UUID = "6d0e4a6c-5b0f-4c1e-9d7a-1f2e3d4c5b6a";
const MAC = "52:54:00:00:00:01";
const WHO = { door: "test", user: "tester", uid: 0 };
const T1 = new Date("2026-01-02T03:04:05.000Z");
const T2 = new Date("2026-01-02T03:04:06.000Z");

/**
 * A record exactly as the previous format wrote it (produced by that version's planner and saveRecords): a
 * vhostuser interface (not enforceable), a tap, a macvtap (hooks swapped: download through the IFB) and a tap
 * whose upload is policed (no IFB).
 */
const V1_TEXT = `{
  "domainName": "web1",
  "domainUuid": "${UUID}",
  "interfaces": [
    {
      "mac": "52:54:00:00:00:04",
      "type": "vhostuser",
      "swapped": false,
      "notEnforceable": "interface type \\"vhostuser\\" has no host network device for tc to shape"
    },
    {
      "mac": "52:54:00:00:00:01",
      "dev": "vnet1",
      "ifindex": 15,
      "type": "bridge",
      "swapped": false,
      "inbound": { "rateBitsPerSec": 30000000, "ceilBitsPerSec": 30000000, "mode": "shape", "source": "bandwidth" },
      "outbound": { "rateBitsPerSec": 10000000, "ceilBitsPerSec": 10000000, "mode": "shape", "source": "bandwidth" },
      "ifb": "vqi75d6cba9d0ad",
      "createdHook": true
    },
    {
      "mac": "52:54:00:00:00:02",
      "dev": "macvtap1",
      "ifindex": 18,
      "type": "direct",
      "swapped": true,
      "inbound": { "rateBitsPerSec": 20000000, "ceilBitsPerSec": 20000000, "mode": "shape", "source": "bandwidth" },
      "outbound": { "rateBitsPerSec": 5000000, "ceilBitsPerSec": 5000000, "mode": "shape", "source": "bandwidth" },
      "ifb": "vqi75d6cca9d0ad",
      "createdHook": true
    },
    {
      "mac": "52:54:00:00:00:03",
      "dev": "vnet3",
      "ifindex": 15,
      "type": "bridge",
      "swapped": false,
      "inbound": { "rateBitsPerSec": 8000000, "ceilBitsPerSec": 8000000, "mode": "shape", "source": "bandwidth" },
      "outbound": { "rateBitsPerSec": 4000000, "ceilBitsPerSec": 4000000, "mode": "police", "source": "bandwidth" },
      "createdHook": true
    }
  ]
}
`;

const record = (extra: Partial<DomainRecord> = {}): DomainRecord => ({
  domainName: "web1",
  domainUuid: UUID,
  interfaces: [
    { mac: MAC, dev: "vnet1", ifindex: 7, type: "bridge", inbound: limit(30), outbound: limit(10) },
  ],
  ...extra,
});

let runDir: string;
const file = (uuid = UUID) => join(runDir, "domains", `${uuid}.json`);
const writeRaw = (text: string, uuid = UUID) => {
  mkdirSync(join(runDir, "domains"), { recursive: true });
  writeFileSync(file(uuid), text);
};
const onDisk = (uuid = UUID) => JSON.parse(readFileSync(file(uuid), "utf8"));
/** The same value with every object's keys in reverse order. */
const reverseKeys = (v: unknown): unknown =>
  Array.isArray(v)
    ? v.map(reverseKeys)
    : v && typeof v === "object"
      ? Object.fromEntries(
          Object.entries(v)
            .reverse()
            .map(([k, x]) => [k, reverseKeys(x)]),
        )
      : v;

beforeEach(() => {
  runDir = mkdtempSync(join(tmpdir(), "virtqos-records-"));
});
afterEach(() => rmSync(runDir, { recursive: true, force: true }));

describe("state records: the current format", () => {
  test("a new record is written with version, generation 1 and who applied it", () => {
    saveRecords(runDir, [record()], [], WHO, T1);
    const raw = onDisk();
    assert.deepEqual(Object.keys(raw).slice(0, 3), ["version", "generation", "appliedBy"]);
    assert.equal(raw.version, RECORD_VERSION);
    assert.equal(raw.generation, 1);
    assert.deepEqual(raw.appliedBy, { ...WHO, pid: process.pid, at: T1.toISOString() });
    assert.ok(!("ifb" in raw.interfaces[0]) && !("swapped" in raw.interfaces[0]));
    const [r] = loadRecords(runDir);
    assert.deepEqual(r, { version: 2, generation: 1, appliedBy: raw.appliedBy, ...record() });
  });

  test("unchanged content is not rewritten, whatever stamp or key order the caller's copy has", () => {
    saveRecords(runDir, [record()], [], WHO, T1);
    const before = readFileSync(file(), "utf8");
    const mtime = statSync(file()).mtimeMs;
    // The loaded record (stamped) and a copy with its keys in another order: the same content.
    const loaded = loadRecords(runDir)[0];
    const reordered = reverseKeys(record()) as DomainRecord;
    saveRecords(runDir, [loaded, reordered, record()], [], { door: "hook" }, T2);
    assert.equal(readFileSync(file(), "utf8"), before);
    assert.equal(statSync(file()).mtimeMs, mtime);
  });

  test("each change bumps the generation and says who made it", () => {
    saveRecords(runDir, [record()], [], WHO, T1);
    const changed = record();
    changed.interfaces[0].inbound = limit(40);
    saveRecords(runDir, [changed], [], { door: "hook", user: "root", uid: 0 }, T2);
    let r = loadRecords(runDir)[0];
    assert.equal(r.generation, 2);
    assert.deepEqual(r.appliedBy, {
      door: "hook",
      user: "root",
      uid: 0,
      pid: process.pid,
      at: T2.toISOString(),
    });
    assert.equal(r.interfaces[0].inbound?.rateBitsPerSec, 40e6);
    // A record handed back from an earlier state (a transaction's snapshot, stamped with generation 1) is a
    // change too: the generation keeps counting up, it never goes back.
    saveRecords(runDir, [{ ...record(), version: 2, generation: 1 } as DomainRecord], [], { door: "tx" }, T2);
    r = loadRecords(runDir)[0];
    assert.equal(r.generation, 3);
    assert.equal(r.appliedBy?.door, "tx");
    assert.equal(r.interfaces[0].inbound?.rateBitsPerSec, 30e6);
  });

  test("forgotten domains lose their file; torn and foreign files are not records", () => {
    const other = "aaaaaaaa-0000-4000-8000-000000000001";
    saveRecords(runDir, [record(), record({ domainUuid: other })], [], WHO, T1);
    saveRecords(runDir, [], [other], WHO, T1);
    assert.deepEqual(
      loadRecords(runDir).map((r) => r.domainUuid),
      [UUID],
    );
    writeRaw(`{"domainName": "torn", "domainUu`, "torn");
    writeRaw(`[1, 2, 3]`, "array");
    writeRaw(`{"hello": "world"}`, "foreign");
    assert.deepEqual(
      loadRecords(runDir).map((r) => r.domainUuid),
      [UUID],
    );
    assert.equal(readRecordFile(join(runDir, "domains", "missing.json")), undefined);
  });
});

describe("state records: the format before versions (a host upgraded with guests running)", () => {
  test("is read: version 1, generation 0, no appliedBy, without the derived fields", () => {
    writeRaw(V1_TEXT);
    const [r] = loadRecords(runDir);
    assert.equal(r.version, 1);
    assert.equal(r.generation, 0);
    assert.equal(r.appliedBy, undefined);
    assert.equal(r.domainName, "web1");
    assert.deepEqual(
      r.interfaces.map((i) => [i.mac, i.dev, i.ifindex, i.type, i.createdHook, i.notEnforceable]),
      [
        ["52:54:00:00:00:04", undefined, undefined, "vhostuser", undefined, r.interfaces[0].notEnforceable],
        ["52:54:00:00:00:01", "vnet1", 15, "bridge", true, undefined],
        ["52:54:00:00:00:02", "macvtap1", 18, "direct", true, undefined],
        ["52:54:00:00:00:03", "vnet3", 15, "bridge", true, undefined],
      ],
    );
    assert.match(r.interfaces[0].notEnforceable ?? "", /vhostuser/);
    assert.deepEqual(r.interfaces[1].inbound, limit(30));
    assert.deepEqual(r.interfaces[3].outbound, limit(4, { mode: "police" }));
    for (const i of r.interfaces) assert.ok(!("ifb" in i) && !("swapped" in i), i.mac);
  });

  test("what it stored as `ifb` and `swapped` is what virtqos derives now", () => {
    writeRaw(V1_TEXT);
    const old = JSON.parse(V1_TEXT) as { interfaces: { mac: string; ifb?: string; swapped: boolean }[] };
    const [r] = loadRecords(runDir);
    assert.deepEqual(
      r.interfaces.map((i) => recordIfb(r.domainUuid, i)),
      old.interfaces.map((i) => i.ifb),
    );
    assert.equal(recordIfb(r.domainUuid, r.interfaces[1]), interfaceIfbName(UUID, "52:54:00:00:00:01"));
    assert.deepEqual(
      desiredFromRecords([r]).map((d) => d.swapped),
      old.interfaces.map((i) => i.swapped),
    );
  });

  test("stays as it is until its content changes, then is written in the current format", () => {
    writeRaw(V1_TEXT);
    const [r] = loadRecords(runDir);
    saveRecords(runDir, [r], [], WHO, T1);
    assert.equal(readFileSync(file(), "utf8"), V1_TEXT, "same content: not rewritten");
    const changed = { ...r, interfaces: r.interfaces.slice(1) };
    saveRecords(runDir, [changed], [], WHO, T1);
    const raw = onDisk();
    assert.equal(raw.version, RECORD_VERSION);
    assert.equal(raw.generation, 1);
    assert.equal(raw.appliedBy.door, "test");
    assert.ok(raw.interfaces.every((i: object) => !("ifb" in i) && !("swapped" in i)));
    assert.deepEqual(loadRecords(runDir)[0].interfaces, changed.interfaces);
  });

  test("a record from a transaction snapshot taken before the upgrade is written without the old fields", () => {
    const old = JSON.parse(V1_TEXT) as DomainRecord;
    saveRecords(runDir, [old], [], { door: "tx" }, T1);
    const raw = onDisk();
    assert.equal(raw.version, RECORD_VERSION);
    assert.ok(raw.interfaces.every((i: object) => !("ifb" in i) && !("swapped" in i)));
  });
});

describe("state records: a format from a newer virtqos", () => {
  const future = JSON.stringify({
    version: RECORD_VERSION + 1,
    generation: 9,
    domainUuid: UUID,
    interfaces: [],
  });

  test("is refused with an error naming the file", () => {
    writeRaw(future);
    assert.throws(
      () => loadRecords(runDir),
      (e: unknown) =>
        e instanceof RecordVersionError &&
        e.file === file() &&
        e.message.includes(file()) &&
        /version 3 is not one this virtqos reads/.test(e.message),
    );
  });

  test("is refused whatever its shape, and never overwritten", () => {
    writeRaw(JSON.stringify({ version: "3.0", something: "else" }));
    assert.throws(() => loadRecords(runDir), RecordVersionError);
    writeRaw(future);
    assert.throws(() => saveRecords(runDir, [record()], [], WHO, T1), RecordVersionError);
    assert.equal(readFileSync(file(), "utf8"), future);
  });
});
