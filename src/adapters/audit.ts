import { closeSync, mkdirSync, openSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname } from "node:path";
import type BetterSqlite3 from "better-sqlite3";

// The native addon is required when the store is opened, not when this module loads: the CLI bundle holds
// this module, and `virtqos status` has no business loading SQLite.
type Database = BetterSqlite3.Database;
const openDatabase = (file: string): Database =>
  new (createRequire(import.meta.url)("better-sqlite3") as typeof BetterSqlite3)(file);

import type { AuditDoor, AuditEntry, AuditQuery, AuditResult } from "../agent/types.js";
import { VirtqosError } from "../core/errors.js";

// The audit log: one row per change asked of the agent (who, through which door, which interface, the
// limits before and after, how it ended), in SQLite under the state directory. The agent writes it and
// `virtqos audit` reads it, possibly at the same time: WAL lets readers run beside the writer, and the busy
// timeout makes a second writer (the CLI's `set`, another agent instance) wait instead of failing.

/** The schema this virtqos writes (`PRAGMA user_version`). */
export const AUDIT_SCHEMA_VERSION = 1;
export const AUDIT_DEFAULT_LIMIT = 1000;
export const AUDIT_MAX_LIMIT = 10_000;
const BUSY_TIMEOUT_MS = 5000;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS audit (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  at TEXT NOT NULL,
  who TEXT NOT NULL,
  door TEXT NOT NULL,
  domain_uuid TEXT COLLATE NOCASE,
  domain_name TEXT,
  iface TEXT,
  before_json TEXT,
  after_json TEXT,
  result TEXT NOT NULL,
  code TEXT,
  message TEXT,
  tx_id TEXT
);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE INDEX IF NOT EXISTS audit_domain_name ON audit (domain_name);
CREATE INDEX IF NOT EXISTS audit_domain_uuid ON audit (domain_uuid);
`;

interface Row {
  id: number;
  at: string;
  who: string;
  door: string;
  domain_uuid: string | null;
  domain_name: string | null;
  iface: string | null;
  before_json: string | null;
  after_json: string | null;
  result: string;
  code: string | null;
  message: string | null;
  tx_id: string | null;
}

type InsertParams = Omit<Row, "id">;
interface QueryParams {
  domain: string | null;
  since: string | null;
  limit: number;
}

const CANONICAL_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

/**
 * `at` and `since` as one canonical form (ISO 8601, milliseconds, UTC): the log compares them as text, which
 * orders correctly only when every value is written the same way.
 */
function canonicalTime(text: string): string | undefined {
  if (CANONICAL_TIME.test(text)) return text;
  if (!/^\d{4}-\d{2}-\d{2}/.test(text)) return undefined;
  const ms = Date.parse(text);
  return Number.isNaN(ms) ? undefined : new Date(ms).toISOString();
}

function sqliteFailure(file: string, what: string, e: unknown): VirtqosError {
  if (e instanceof VirtqosError) return e;
  const code = (e as { code?: unknown }).code;
  return new VirtqosError(
    "AUDIT_FAILED",
    `audit log ${file}: ${what} failed: ${(e as Error).message}${typeof code === "string" ? ` (${code})` : ""}`,
  );
}

/**
 * `mkdir -p` with mode 0700 for what it creates. Not `mkdirSync(recursive)`: on a filesystem that answers
 * ENOENT to any mkdir (/proc), Node's loops forever, and the agent would hang at start instead of failing.
 */
function makeDirs(dir: string, depth = 0): void {
  try {
    mkdirSync(dir, { mode: 0o700 });
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EEXIST") return;
    const parent = dirname(dir);
    if (code !== "ENOENT" || parent === dir || depth > 64) throw e;
    makeDirs(parent, depth + 1);
    mkdirSync(dir, { mode: 0o700 });
  }
}

const jsonText = (v: unknown): string | null => (v === undefined ? null : JSON.stringify(v));

function parseJson(file: string, id: number, column: string, text: string | null): unknown {
  if (text === null) return undefined;
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new VirtqosError(
      "AUDIT_FAILED",
      `audit log ${file}: entry ${id} has a ${column} that is not JSON (${(e as Error).message}); the file was changed by something other than virtqos`,
    );
  }
}

export class AuditStore {
  private readonly insert: BetterSqlite3.Statement<InsertParams>;
  private readonly select: BetterSqlite3.Statement<QueryParams, Row>;
  private closed = false;

  private constructor(
    readonly file: string,
    private readonly db: Database,
  ) {
    this.insert = db.prepare(
      `INSERT INTO audit (at, who, door, domain_uuid, domain_name, iface, before_json, after_json, result, code, message, tx_id)
       VALUES (@at, @who, @door, @domain_uuid, @domain_name, @iface, @before_json, @after_json, @result, @code, @message, @tx_id)`,
    );
    // The newest `limit` matching entries, returned oldest first: a log is read from the top down, and its
    // tail is what is asked for after a change.
    this.select = db.prepare(
      `SELECT * FROM (
         SELECT * FROM audit
         WHERE (@domain IS NULL OR domain_name = @domain OR domain_uuid = @domain)
           AND (@since IS NULL OR at >= @since)
         ORDER BY id DESC LIMIT @limit
       ) ORDER BY id ASC`,
    );
  }

  /**
   * Open (or create) the audit log: its directory 0700, the file 0600 (who changed what is not for every
   * user), WAL, a 5 s busy timeout, the schema. AUDIT_FAILED if any of it fails or the file has a schema
   * newer than this virtqos knows.
   */
  static open(file: string): AuditStore {
    let db: Database | undefined;
    try {
      makeDirs(dirname(file));
      // SQLite creates the file (and its -wal and -shm, which copy the file's mode) with the umask's mode.
      closeSync(openSync(file, "a", 0o600));
    } catch (e) {
      throw new VirtqosError("AUDIT_FAILED", `audit log ${file}: cannot create it: ${(e as Error).message}`);
    }
    try {
      const conn = openDatabase(file);
      db = conn;
      // First, so that every later step waits for another process opening the same file instead of failing.
      conn.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
      conn.pragma("journal_mode = WAL");
      const version = conn.pragma("user_version", { simple: true }) as number;
      if (version > AUDIT_SCHEMA_VERSION) {
        throw new VirtqosError(
          "AUDIT_FAILED",
          `audit log ${file}: schema version ${version} is newer than this virtqos reads (${AUDIT_SCHEMA_VERSION}); it was written by a newer virtqos: run that one, or move the file aside to start a new log`,
        );
      }
      if (version < AUDIT_SCHEMA_VERSION) {
        // IMMEDIATE takes the write lock first: two processes creating the schema at once queue on the busy
        // timeout, where a deferred transaction's upgrade from read to write would fail with SQLITE_BUSY.
        db.transaction(() => {
          const again = conn.pragma("user_version", { simple: true }) as number;
          if (again >= AUDIT_SCHEMA_VERSION) return;
          conn.exec(SCHEMA);
          conn.pragma(`user_version = ${AUDIT_SCHEMA_VERSION}`);
        }).immediate();
      }
      return new AuditStore(file, conn);
    } catch (e) {
      db?.close();
      throw sqliteFailure(file, "opening", e);
    }
  }

  /** Append an entry; its id. AUDIT_FAILED when it cannot be written (the caller must not make the change). */
  record(entry: AuditEntry): number {
    const at = canonicalTime(entry.at);
    if (!at) {
      throw new VirtqosError(
        "AUDIT_FAILED",
        `audit log ${this.file}: entry time ${JSON.stringify(entry.at)} is not an ISO 8601 time (want e.g. 2026-11-29T17:00:00.000Z)`,
      );
    }
    try {
      const info = this.insert.run({
        at,
        who: entry.who,
        door: entry.door,
        domain_uuid: entry.domainUuid ?? null,
        domain_name: entry.domainName ?? null,
        iface: entry.iface ?? null,
        before_json: jsonText(entry.before),
        after_json: jsonText(entry.after),
        result: entry.result,
        code: entry.code ?? null,
        message: entry.message ?? null,
        tx_id: entry.txId ?? null,
      });
      return Number(info.lastInsertRowid);
    } catch (e) {
      throw sqliteFailure(this.file, "recording an entry", e);
    }
  }

  /**
   * The newest `limit` entries (default 1000, at most 10000) about `domain` (its name or UUID) at or after
   * `since`, oldest first. REQUEST_INVALID for a bad `since` or `limit`.
   */
  query(q: AuditQuery = {}): AuditEntry[] {
    const limit = q.limit ?? AUDIT_DEFAULT_LIMIT;
    if (!Number.isInteger(limit) || limit < 1 || limit > AUDIT_MAX_LIMIT) {
      throw new VirtqosError(
        "REQUEST_INVALID",
        `limit ${JSON.stringify(q.limit)} is not a whole number from 1 to ${AUDIT_MAX_LIMIT}; fix: ask for at most ${AUDIT_MAX_LIMIT} entries and narrow with since`,
      );
    }
    let since: string | null = null;
    if (q.since !== undefined) {
      since = canonicalTime(q.since) ?? null;
      if (!since) {
        throw new VirtqosError(
          "REQUEST_INVALID",
          `since ${JSON.stringify(q.since)} is not an ISO 8601 time; fix: write e.g. 2026-11-29T17:00:00Z`,
        );
      }
    }
    let rows: Row[];
    try {
      rows = this.select.all({ domain: q.domain ?? null, since, limit });
    } catch (e) {
      throw sqliteFailure(this.file, "reading", e);
    }
    return rows.map((r) => this.entry(r));
  }

  private entry(r: Row): AuditEntry {
    const e: AuditEntry = {
      id: r.id,
      at: r.at,
      who: r.who,
      door: r.door as AuditDoor,
      result: r.result as AuditResult,
    };
    if (r.domain_uuid !== null) e.domainUuid = r.domain_uuid;
    if (r.domain_name !== null) e.domainName = r.domain_name;
    if (r.iface !== null) e.iface = r.iface;
    const before = parseJson(this.file, r.id, "before", r.before_json);
    if (before !== undefined) e.before = before;
    const after = parseJson(this.file, r.id, "after", r.after_json);
    if (after !== undefined) e.after = after;
    if (r.code !== null) e.code = r.code;
    if (r.message !== null) e.message = r.message;
    if (r.tx_id !== null) e.txId = r.tx_id;
    return e;
  }

  /** Close the database (idempotent): WAL is checkpointed when the last connection closes. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.db.close();
    } catch (e) {
      throw sqliteFailure(this.file, "closing", e);
    }
  }
}
