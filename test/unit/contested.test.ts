import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { processRunner } from "../../src/adapters/exec.js";
import { createLogger } from "../../src/adapters/log.js";
import { socketAuthenticator } from "../../src/agent/api/listen.js";
import { buildApi } from "../../src/agent/api/server.js";
import { writeContestedFile } from "../../src/agent/repair.js";
import { LocalService } from "../../src/agent/service.js";
import type { Health } from "../../src/agent/types.js";
import {
  CONTESTED_VERSION,
  type ContestedEntry,
  contestedPath,
  inForce,
  markContested,
  readContested,
  type StatusRow,
  statusTable,
} from "../../src/app/status.js";
import { emptyPolicy } from "../../src/core/policy.js";
import { MemorySource } from "../../src/lab/memory-source.js";
import { FakeAgentService } from "../helpers/fake-agent.js";

// The contested set the agent's drift repair persists for `virtqos status` and /v1/health (<runDir>/contested.json):
// written atomically, read by another process, and a missing, torn or stale file ignored without a crash. The
// repairer writing it during a real fight is test/integration/repair.test.ts.

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), "vq-contested-"));
  dirs.push(d);
  return d;
}

const HOUR = 3_600_000;
const iso = (ms: number) => new Date(ms).toISOString();

function entry(extra: Partial<ContestedEntry> = {}): ContestedEntry {
  const now = Date.now();
  return {
    dev: "vnet3",
    object: "root qdisc",
    domains: [{ name: "web1", uuid: "11111111-2222-3333-4444-555555555555" }],
    since: iso(now - 20_000),
    lastDriftAt: iso(now - 1000),
    drifts: 4,
    backoffMs: 8000,
    nextRepairAt: iso(now + 7000),
    until: iso(now + HOUR),
    reasons: ["missing root qdisc (tc qdisc del)"],
    ...extra,
  };
}

function row(extra: Partial<StatusRow> = {}): StatusRow {
  return {
    guest: "web1",
    domainUuid: "11111111-2222-3333-4444-555555555555",
    mac: "52:54:00:00:00:01",
    dev: "vnet3",
    direction: "inbound",
    enforcedOn: "vnet3",
    configured: { rateBitsPerSec: 1e7, ceilBitsPerSec: 1e7, source: "policy", mode: "shape" },
    bytes: 0,
    packets: 0,
    drops: 0,
    overlimits: 0,
    matches: true,
    generation: 1,
    ...extra,
  };
}

/** A pid nobody has: a process that ran and was reaped. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ["-e", "process.stdout.write(String(process.pid))"], {
    encoding: "utf8",
  });
  return Number(r.stdout);
}

describe("contested.json: reading", () => {
  test("no file, no run dir: nothing contested", () => {
    const dir = tmp();
    assert.deepEqual(readContested(dir), []);
    assert.deepEqual(readContested(join(dir, "does", "not", "exist")), []);
  });

  test("a torn file (a writer killed half-way, or an older non-atomic one) is ignored, no crash", () => {
    const dir = tmp();
    const whole = JSON.stringify({
      version: CONTESTED_VERSION,
      pid: process.pid,
      writtenAt: iso(Date.now()),
      objects: [entry()],
    });
    assert.equal(readContested(dir).length, 0);
    writeFileSync(contestedPath(dir), whole);
    assert.equal(readContested(dir).length, 1, "the whole file is read");
    // Every prefix of it: none parses as the file, none throws.
    for (let n = 0; n < whole.length; n += 7) {
      writeFileSync(contestedPath(dir), whole.slice(0, n));
      assert.deepEqual(readContested(dir), [], `torn at ${n} bytes`);
    }
    for (const junk of ["", "\0\0\0\0", "null", "[]", "42", '"x"', "{}", "\uFEFF{", '{"version":1']) {
      writeFileSync(contestedPath(dir), junk);
      assert.deepEqual(readContested(dir), [], JSON.stringify(junk));
    }
  });

  test("another version, a missing or dead writer, objects not a list: ignored", () => {
    const dir = tmp();
    const put = (doc: unknown) => writeFileSync(contestedPath(dir), JSON.stringify(doc));
    const good = {
      version: CONTESTED_VERSION,
      pid: process.pid,
      writtenAt: iso(Date.now()),
      objects: [entry()],
    };
    put(good);
    assert.equal(readContested(dir).length, 1);
    put({ ...good, version: 2 });
    assert.deepEqual(readContested(dir), [], "a newer format");
    put({ ...good, pid: undefined });
    assert.deepEqual(readContested(dir), [], "no writer");
    put({ ...good, pid: -1 });
    assert.deepEqual(readContested(dir), []);
    put({ ...good, pid: deadPid() });
    assert.deepEqual(readContested(dir), [], "its agent is gone (killed): nobody repairs, nothing contested");
    put({ ...good, objects: { vnet3: entry() } });
    assert.deepEqual(readContested(dir), []);
  });

  test("malformed objects are dropped one by one; objects past their `until` are no longer contested", () => {
    const dir = tmp();
    const ok = entry({ dev: "vnet7" });
    const objects: unknown[] = [
      ok,
      entry({ until: iso(Date.now() - 1) }),
      { ...entry(), drifts: "4" },
      { ...entry(), dev: undefined },
      { ...entry(), domains: [{ name: "x" }] },
      { ...entry(), until: "soon" },
      null,
      "vnet3|root qdisc",
    ];
    writeFileSync(
      contestedPath(dir),
      JSON.stringify({ version: CONTESTED_VERSION, pid: process.pid, writtenAt: iso(Date.now()), objects }),
    );
    assert.deepEqual(readContested(dir), [ok]);
    // At a later time, ok's `until` has passed too.
    assert.deepEqual(readContested(dir, Date.now() + 2 * HOUR), []);
  });
});

describe("contested.json: writing", () => {
  test("written whole (temporary file renamed into place), read back, removed when empty", () => {
    const dir = tmp();
    const objects = [entry(), entry({ dev: "vqi0123456789ab", object: "ifb root qdisc", drifts: 1 })];
    writeContestedFile(dir, objects);
    assert.deepEqual(readContested(dir), objects);
    assert.deepEqual(readdirSync(dir), ["contested.json"], "no temporary file left");
    const doc = JSON.parse(readFileSync(contestedPath(dir), "utf8"));
    assert.equal(doc.version, CONTESTED_VERSION);
    assert.equal(doc.pid, process.pid);
    writeContestedFile(dir, [objects[1]]);
    assert.deepEqual(readContested(dir), [objects[1]]);
    writeContestedFile(dir, []);
    assert.ok(!existsSync(contestedPath(dir)), "none contested: no file");
    writeContestedFile(dir, []); // removing what is not there is fine
    writeContestedFile(join(dir, "new"), objects);
    assert.deepEqual(readContested(join(dir, "new")), objects, "the run dir is created if need be");
  });

  test("the service's health says what the file says, [] for none (wired as src/agent/main.ts does)", () => {
    const dir = tmp();
    const service = new LocalService({
      source: new MemorySource(),
      runner: processRunner(),
      runDir: dir,
      log: createLogger({ level: "error", target: "silent" }),
      policy: async () => emptyPolicy(),
      contested: () => readContested(dir),
    });
    assert.deepEqual(service.health().contested, []);
    const e = entry();
    writeContestedFile(dir, [e]);
    assert.deepEqual(service.health().contested, [e]);
  });

  test("GET /v1/health answers the contested objects (the schema lets them through)", async () => {
    const dir = tmp();
    const service = new FakeAgentService();
    const plain = service.health.bind(service);
    service.health = (): Health => ({ ...plain(), contested: readContested(dir) });
    const app = buildApi({ service, auth: socketAuthenticator() });
    try {
      let r = await app.inject({ method: "GET", url: "/v1/health" });
      assert.equal(r.statusCode, 200, r.body);
      assert.deepEqual(r.json().contested, []);
      const e = entry();
      writeContestedFile(dir, [e]);
      r = await app.inject({ method: "GET", url: "/v1/health" });
      assert.equal(r.statusCode, 200, r.body);
      assert.deepEqual(r.json().contested, [e]);
      const doc = (await app.inject({ method: "GET", url: "/v1/openapi.json" })).json();
      assert.ok(doc.components.schemas.ContestedObject, "the document lists the schema");
    } finally {
      await app.close();
    }
  });
});

describe("status rows", () => {
  test("a tap's object marks both its rows; an IFB's the direction it carries; a group IFB's every member", () => {
    const rows = [
      row({ direction: "inbound", enforcedOn: "vnet3" }),
      row({ direction: "outbound", enforcedOn: "vqi0000000000aa" }),
      row({ dev: "vnet4", mac: "52:54:00:00:00:02", direction: "inbound", enforcedOn: "vnet4" }),
      row({ dev: "vnet4", mac: "52:54:00:00:00:02", direction: "outbound", enforcedOn: "vqi0000000000bb" }),
      row({ guest: "g1", dev: "vnet5", direction: "inbound", enforcedOn: "vqd0000000000cc" }),
      row({ guest: "g2", dev: "vnet6", direction: "inbound", enforcedOn: "vqd0000000000cc" }),
      row({ guest: "g2", dev: "vnet6", direction: "outbound", enforcedOn: "vqu0000000000cc" }),
    ];
    markContested(rows, [
      entry({ dev: "vnet3", object: "root qdisc" }),
      entry({ dev: "vqi0000000000bb", object: "class", drifts: 2 }),
      entry({ dev: "vqd0000000000cc", object: "class" }),
    ]);
    const marked = rows.map((r) => r.contested?.map((c) => `${c.dev}|${c.object}`).join(",") ?? "");
    assert.deepEqual(marked, [
      "vnet3|root qdisc",
      "vnet3|root qdisc",
      "",
      "vqi0000000000bb|class",
      "vqd0000000000cc|class",
      "vqd0000000000cc|class",
      "",
    ]);
    assert.equal(rows[3].contested?.[0].drifts, 2);
    assert.deepEqual(
      rows.map((r) => inForce(r)),
      [false, false, true, false, false, false, true],
      "contested rows are not in force even where the kernel matches now",
    );
    assert.equal(markContested([row()], [])[0].contested, undefined, "nothing contested: no field");
  });

  test("the table: a CONTESTED column only when something is", () => {
    const plain = statusTable([row()]);
    assert.doesNotMatch(plain, /CONTESTED/);
    const [marked] = markContested(
      [row(), row({ direction: "outbound", enforcedOn: "vqi0000000000aa" })],
      [entry({ dev: "vqi0000000000aa", object: "class", drifts: 1 })],
    ).slice(1);
    const table = statusTable([row(), marked]);
    const lines = table.split("\n");
    assert.match(lines[0], /MATCH +CONTESTED$/);
    assert.match(lines[1], / no$/);
    assert.match(lines[2], /YES: class on vqi0000000000aa since \d\d:\d\d:\d\d, 1 drift$/);
  });
});
