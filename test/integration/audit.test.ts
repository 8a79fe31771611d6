import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { chmodSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";
import Database from "better-sqlite3";
import { AUDIT_SCHEMA_VERSION, AuditStore } from "../../src/adapters/audit.js";
import type { AuditEntry } from "../../src/agent/types.js";
import { VirtqosError } from "../../src/core/errors.js";

// The audit log on a real SQLite file: what goes in comes out, the filters, and two processes writing at
// once (the agent and a CLI) without SQLITE_BUSY.

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const AUDIT_MODULE = pathToFileURL(join(ROOT, "src/adapters/audit.ts")).href;

function withDir(fn: (dir: string) => void | Promise<void>): () => Promise<void> {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), "virtqos-audit-"));
    try {
      await fn(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

const limit10M = { rateBitsPerSec: 10e6, ceilBitsPerSec: 10e6, burstBytes: 12_500, source: "live" };

function entry(over: Partial<AuditEntry> = {}): AuditEntry {
  return {
    at: "2026-11-29T17:00:00.000Z",
    who: "nova",
    door: "api",
    domainUuid: "0b5c7e4e-7a5d-4c3b-9d6e-1f2a3b4c5d6e",
    domainName: "instance-0000abcd",
    iface: "52:54:00:12:34:56",
    before: { inbound: null },
    after: { inbound: limit10M },
    result: "ok",
    txId: "tx-20261129T170000-abcdef",
    ...over,
  };
}

/** Run a node process with tsx (its arguments from process.argv[1] on); exit status, stdout and stderr. */
function runNode(
  code: string,
  args: string[],
  opts: { uid?: number; gid?: number; onStdout?: (chunk: string) => void } = {},
): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ["--import", "tsx", "--input-type=module", "-e", code, "--", ...args],
      { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"], uid: opts.uid, gid: opts.gid, timeout: 60_000 },
    );
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (c: string) => {
      stdout += c;
      opts.onStdout?.(c);
    });
    child.stderr.setEncoding("utf8").on("data", (c: string) => {
      stderr += c;
    });
    child.on("error", reject);
    child.on("close", (status) => resolve({ status, stdout, stderr }));
  });
}

function auditFailed(e: unknown, words: RegExp): boolean {
  return e instanceof VirtqosError && e.code === "AUDIT_FAILED" && words.test(e.message);
}

describe("AuditStore on a real SQLite file", () => {
  it(
    "records and returns entries as given, with ids, JSON before/after, a 0700 directory and a 0600 file",
    withDir((dir) => {
      const file = join(dir, "state", "audit.db");
      const store = AuditStore.open(file);
      try {
        const a = entry();
        const b = entry({
          at: "2026-11-29T17:01:00.000Z",
          who: "uid:0",
          door: "cli",
          before: { inbound: limit10M, outbound: null },
          after: null,
          result: "failed",
          code: "TC_BATCH_FAILED",
          message: "tc said no",
          txId: undefined,
        });
        const c: AuditEntry = {
          at: "2026-11-29T17:02:00.000Z",
          who: "hook",
          door: "hook",
          result: "refused",
        };
        const ids = [a, b, c].map((e) => store.record(e));
        assert.deepEqual(ids, [1, 2, 3]);
        const got = store.query({});
        assert.deepEqual(got, [
          { ...a, id: 1 },
          { ...Object.fromEntries(Object.entries(b).filter(([, v]) => v !== undefined)), id: 2 },
          { ...c, id: 3 },
        ]);
        assert.equal(got[1].after, null, "null (cleared) stays null, not absent");
        assert.ok(!("after" in got[2]), "absent stays absent");
        // A time in another offset is stored in the one form the log compares as text.
        const id = store.record(entry({ at: "2026-11-29T18:30:00+01:00" }));
        assert.equal(store.query({ limit: 1 })[0].at, "2026-11-29T17:30:00.000Z");
        assert.equal(id, 4);
      } finally {
        store.close();
        store.close();
      }
      assert.equal(statSync(join(dir, "state")).mode & 0o777, 0o700);
      assert.equal(statSync(file).mode & 0o777, 0o600);
      const db = new Database(file, { readonly: true });
      assert.equal(db.pragma("journal_mode", { simple: true }), "wal");
      assert.equal(db.pragma("user_version", { simple: true }), AUDIT_SCHEMA_VERSION);
      db.close();
      const again = AuditStore.open(file);
      assert.equal(again.query({}).length, 4, "reopened: the entries are still there");
      again.close();
    }),
  );

  it(
    "filters: domain by name or UUID (any case), since, limit (the newest, oldest first)",
    withDir((dir) => {
      const store = AuditStore.open(join(dir, "audit.db"));
      try {
        const uuidA = "0b5c7e4e-7a5d-4c3b-9d6e-1f2a3b4c5d6e";
        const uuidB = "9f8e7d6c-5b4a-4321-8765-0fedcba98765";
        for (let i = 0; i < 10; i++) {
          store.record(
            entry({
              at: new Date(Date.UTC(2026, 10, 29, 17, i)).toISOString(),
              domainName: i % 2 ? "web-1" : "instance-0000abcd",
              domainUuid: i % 2 ? uuidB : uuidA,
              message: `n${i}`,
            }),
          );
        }
        const msgs = (q: Parameters<AuditStore["query"]>[0]) => store.query(q).map((e) => e.message);
        assert.deepEqual(msgs({ domain: "web-1" }), ["n1", "n3", "n5", "n7", "n9"]);
        assert.deepEqual(msgs({ domain: uuidA }), ["n0", "n2", "n4", "n6", "n8"]);
        assert.deepEqual(msgs({ domain: uuidA.toUpperCase() }), ["n0", "n2", "n4", "n6", "n8"]);
        assert.deepEqual(msgs({ domain: "WEB-1" }), [], "names are case-sensitive, as in libvirt");
        assert.deepEqual(msgs({ domain: "web-%" }), [], "no LIKE patterns");
        assert.deepEqual(msgs({ domain: "nothing" }), []);
        assert.deepEqual(msgs({ since: "2026-11-29T17:07:00.000Z" }), ["n7", "n8", "n9"], "at or after");
        assert.deepEqual(msgs({ since: "2026-11-29T18:07:00+01:00" }), ["n7", "n8", "n9"], "any offset");
        assert.deepEqual(msgs({ since: "2026-11-30" }), []);
        assert.deepEqual(msgs({ limit: 3 }), ["n7", "n8", "n9"]);
        assert.deepEqual(msgs({ domain: "web-1", since: "2026-11-29T17:02:00Z", limit: 2 }), ["n7", "n9"]);
        for (const bad of [0, -1, 1.5, 10_001, Number.NaN]) {
          assert.throws(
            () => store.query({ limit: bad }),
            (e: VirtqosError) => e.code === "REQUEST_INVALID" && /limit .* 1 to 10000/.test(e.message),
            String(bad),
          );
        }
        assert.equal(store.query({ limit: 10_000 }).length, 10);
        assert.throws(
          () => store.query({ since: "yesterday" }),
          (e: VirtqosError) => e.code === "REQUEST_INVALID" && /since "yesterday"/.test(e.message),
        );
        assert.throws(
          () => store.record(entry({ at: "now" })),
          (e: unknown) => auditFailed(e, /entry time "now"/),
        );
      } finally {
        store.close();
      }
    }),
  );

  it(
    "1000 entries: the default limit returns all of them, in order",
    withDir((dir) => {
      const store = AuditStore.open(join(dir, "audit.db"));
      try {
        const t0 = Date.UTC(2026, 10, 29);
        for (let i = 0; i < 1000; i++) {
          store.record(entry({ at: new Date(t0 + i * 1000).toISOString(), message: String(i) }));
        }
        const all = store.query({});
        assert.equal(all.length, 1000);
        assert.deepEqual(
          all.map((e) => e.id),
          Array.from({ length: 1000 }, (_, i) => i + 1),
        );
        assert.equal(all[999].message, "999");
        assert.deepEqual(all[500].after, { inbound: limit10M });
        store.record(entry({ message: "1000" }));
        const newest = store.query({});
        assert.equal(newest.length, 1000, "the default limit is 1000");
        assert.equal(newest[0].id, 2, "the newest 1000");
        assert.equal(newest[999].message, "1000");
      } finally {
        store.close();
      }
    }),
  );

  it(
    "two processes writing 200 entries each at once: all 400 there, no SQLITE_BUSY",
    withDir(async (dir) => {
      const file = join(dir, "state", "audit.db");
      const go = join(dir, "go");
      // Both wait for the same signal, then open the (not yet existing) file and write: creating the
      // schema and every insert contend.
      const writer = `
        import { existsSync } from "node:fs";
        import { AuditStore } from ${JSON.stringify(AUDIT_MODULE)};
        const [file, go, who] = process.argv.slice(1);
        process.stdout.write("ready\\n");
        const deadline = Date.now() + 30_000;
        while (!existsSync(go)) {
          if (Date.now() > deadline) throw new Error("no go signal within 30 s");
          await new Promise((r) => setTimeout(r, 2));
        }
        const store = AuditStore.open(file);
        for (let i = 0; i < 200; i++) {
          store.record({ at: new Date().toISOString(), who, door: "cli", domainName: "d" + (i % 7), result: "ok", message: String(i), after: { inbound: null } });
        }
        store.close();
      `;
      let ready = 0;
      const onStdout = (c: string) => {
        ready += c.split("ready").length - 1;
        if (ready === 2) writeFileSync(go, "");
      };
      const results = await Promise.all([
        runNode(writer, [file, go, "writer-a"], { onStdout }),
        runNode(writer, [file, go, "writer-b"], { onStdout }),
      ]);
      for (const r of results) {
        assert.equal(r.status, 0, r.stderr);
        assert.doesNotMatch(r.stderr, /BUSY|LOCKED/);
      }
      const store = AuditStore.open(file);
      try {
        const all = store.query({ limit: 10_000 });
        assert.equal(all.length, 400);
        for (const who of ["writer-a", "writer-b"]) {
          const mine = all.filter((e) => e.who === who).map((e) => Number(e.message));
          assert.deepEqual(
            mine,
            Array.from({ length: 200 }, (_, i) => i),
            `${who}: all 200, in its order`,
          );
        }
        assert.deepEqual(
          all.map((e) => e.id),
          Array.from({ length: 400 }, (_, i) => i + 1),
        );
      } finally {
        store.close();
      }
    }),
  );

  it(
    "a directory it cannot write: AUDIT_FAILED",
    withDir(async (dir) => {
      const locked = join(dir, "locked");
      mkdirSync(locked, { mode: 0o755 });
      chmodSync(locked, 0o555);
      chmodSync(dir, 0o755);
      const file = join(locked, "audit.db");
      if (process.getuid?.() === 0) {
        // root writes anywhere, whatever the mode: a read-only mount refuses root too. (A child running as
        // nobody would need to read this checkout, which a clone in a 0700 temp directory does not allow.)
        const mounted = spawnSync("mount", ["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", locked]);
        assert.equal(mounted.status, 0, `mount: ${mounted.stderr}`);
        try {
          assert.throws(
            () => AuditStore.open(file),
            (e: unknown) => auditFailed(e, /EROFS|read-only/i),
          );
        } finally {
          spawnSync("umount", [locked]);
        }
      } else {
        assert.throws(
          () => AuditStore.open(file),
          (e: unknown) => auditFailed(e, /EACCES|permission denied/i),
        );
      }
      assert.ok(!existsSync(file));
      // Directories that cannot be created at all, for root too: under a file, under /proc (where Node's
      // recursive mkdir would loop forever).
      writeFileSync(join(dir, "plain-file"), "");
      assert.throws(
        () => AuditStore.open(join(dir, "plain-file", "state", "audit.db")),
        (e: unknown) => auditFailed(e, /plain-file\/state\/audit\.db: cannot create it: ENOTDIR/),
      );
      assert.throws(
        () => AuditStore.open("/proc/virtqos-no-such-dir/state/audit.db"),
        (e: unknown) =>
          auditFailed(e, /\/proc\/virtqos-no-such-dir\/state\/audit\.db: cannot create it: ENOENT/),
      );
    }),
  );

  it(
    "a file that is not a database, or from a newer virtqos: AUDIT_FAILED quoting SQLite or naming the version",
    withDir((dir) => {
      const junk = join(dir, "junk.db");
      writeFileSync(junk, "this is not a database, but long enough to have a header...".repeat(20));
      assert.throws(
        () => AuditStore.open(junk),
        (e: unknown) => auditFailed(e, /junk\.db: opening failed: file is not a database \(SQLITE_NOTADB\)/),
      );

      const newer = join(dir, "newer.db");
      const db = new Database(newer);
      db.pragma(`user_version = ${AUDIT_SCHEMA_VERSION + 1}`);
      db.close();
      assert.throws(
        () => AuditStore.open(newer),
        (e: unknown) =>
          auditFailed(e, /schema version 2 is newer than this virtqos reads \(1\).*newer virtqos/),
      );

      const closed = AuditStore.open(join(dir, "closed.db"));
      closed.close();
      assert.throws(
        () => closed.record(entry()),
        (e: unknown) => auditFailed(e, /recording an entry failed: .*not open/),
      );
    }),
  );
});
