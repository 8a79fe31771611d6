import { existsSync } from "node:fs";
import type { Command } from "commander";
import { AUDIT_DEFAULT_LIMIT, AUDIT_MAX_LIMIT, AuditStore } from "../adapters/audit.js";
import type { AuditEntry } from "../agent/types.js";
import { formatTable } from "../app/table.js";
import { auditDbPath, defaultStateDir } from "../config.js";
import { VirtqosError } from "../core/errors.js";
import { formatRate, formatSize, parseDuration, UnitError } from "../core/units.js";
import { globals, out } from "./context.js";

// `virtqos audit`: the agent's log of changes (who, through which door, which interface, limits before and
// after, how it ended), read from <state dir>/audit.db.

const DAY_MS = 86_400_000;

/**
 * `--since`: an ISO time, or a duration back from `now` (`90s`, `30m`, `1h`, `2d`). Days are read here:
 * parseDuration stops at hours, which suits timeouts but not a log that spans weeks.
 */
export function parseSince(text: string, now: Date = new Date()): string {
  const fail = (why: string) =>
    new VirtqosError(
      "USAGE",
      `--since ${JSON.stringify(text)} ${why}; fix: give an ISO time (2026-11-29T17:00:00Z, 2026-11-29) or a duration back from now (30m, 1h, 2d)`,
    );
  const t = text.trim();
  if (/^\d{4}-\d{2}-\d{2}/.test(t)) {
    const ms = Date.parse(t);
    if (Number.isNaN(ms)) throw fail("is not a valid time");
    return new Date(ms).toISOString();
  }
  const days = /^(\d+(?:\.\d+)?)\s*d$/i.exec(t);
  let backMs: number;
  if (days) backMs = Math.round(Number(days[1]) * DAY_MS);
  else {
    try {
      backMs = parseDuration(t);
    } catch (e) {
      if (e instanceof UnitError) throw fail(`is neither an ISO time nor a duration (${e.message})`);
      throw e;
    }
  }
  const since = now.getTime() - backMs;
  if (!Number.isFinite(since) || since < Date.UTC(1970, 0, 1)) throw fail("reaches back before 1970");
  return new Date(since).toISOString();
}

/** `--limit`: a whole number of entries, 1 to 10000. */
export function parseLimit(text: string): number {
  const n = /^\s*\d+\s*$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < 1 || n > AUDIT_MAX_LIMIT) {
    throw new VirtqosError(
      "USAGE",
      `--limit ${JSON.stringify(text)} is not a whole number from 1 to ${AUDIT_MAX_LIMIT}; fix: e.g. --limit 50, and narrow with --since or --domain`,
    );
  }
  return n;
}

interface LimitLike {
  rateBitsPerSec: number;
  ceilBitsPerSec?: number;
  burstBytes?: number;
  floorBitsPerSec?: number;
}

const isLimit = (v: unknown): v is LimitLike =>
  typeof v === "object" && v !== null && typeof (v as LimitLike).rateBitsPerSec === "number";

function describeLimit(v: unknown): string {
  if (v === null) return "no limit";
  if (!isLimit(v)) return JSON.stringify(v);
  const parts = [formatRate(v.rateBitsPerSec)];
  if (v.ceilBitsPerSec !== undefined && v.ceilBitsPerSec > v.rateBitsPerSec) {
    parts.push(`peak ${formatRate(v.ceilBitsPerSec)}`);
  }
  if (v.burstBytes !== undefined) parts.push(`burst ${formatSize(v.burstBytes)}`);
  if (v.floorBitsPerSec) parts.push(`floor ${formatRate(v.floorBitsPerSec)}`);
  return parts.join(" ");
}

/**
 * One side of a change as text: `inbound 10 Mbit/s, outbound no limit`. The agent records a LimitView (or
 * null) per direction; anything else is shown as its JSON, so an entry written by another version still reads.
 */
export function describeLimits(v: unknown): string {
  if (v === undefined) return "-";
  if (v === null) return "no limit";
  if (typeof v === "object" && !Array.isArray(v)) {
    const o = v as Record<string, unknown>;
    const dirs = (["inbound", "outbound"] as const).filter((d) => d in o);
    if (dirs.length && Object.keys(o).every((k) => k === "inbound" || k === "outbound")) {
      return dirs.map((d) => `${d} ${describeLimit(o[d])}`).join(", ");
    }
  }
  return JSON.stringify(v);
}

const when = (iso: string) => iso.replace("T", " ").replace(/\.\d+Z$/, "Z");

export function auditTable(entries: AuditEntry[]): string {
  if (!entries.length) return "no audit entries";
  return formatTable([
    ["TIME", "WHO", "DOOR", "DOMAIN", "IFACE", "CHANGE", "RESULT", "TX"],
    ...entries.map((e) => [
      when(e.at),
      e.who,
      e.door,
      e.domainName ?? e.domainUuid ?? "-",
      e.iface ?? "-",
      e.before === undefined && e.after === undefined
        ? "-"
        : `${describeLimits(e.before)} → ${describeLimits(e.after)}`,
      e.result === "ok"
        ? "ok"
        : `${e.result}${e.code ? ` ${e.code}` : ""}${e.message ? `: ${e.message.replace(/\s*\n\s*/g, " ")}` : ""}`,
      e.txId ?? "-",
    ]),
  ]);
}

export function addAuditCommand(program: Command): void {
  program
    .command("audit")
    .description(
      "the agent's log of changes: time, who, door, domain, interface, limits before → after, result, transaction",
    )
    .option("--domain <domain>", "only entries about this domain (its name or UUID)")
    .option("--since <time>", "only entries at or after this ISO time, or this long ago (30m, 1h, 2d)")
    .option("--limit <n>", `at most this many entries, the newest (default ${AUDIT_DEFAULT_LIMIT})`)
    .option("--json", "machine-readable output")
    .action((opts: { domain?: string; since?: string; limit?: string; json?: boolean }) => {
      const g = globals(program, opts.json);
      if (opts.domain !== undefined && !opts.domain.trim()) {
        throw new VirtqosError("USAGE", "--domain is empty; fix: give a domain name or UUID");
      }
      const query = {
        ...(opts.domain !== undefined ? { domain: opts.domain.trim() } : {}),
        ...(opts.since !== undefined ? { since: parseSince(opts.since) } : {}),
        limit: opts.limit !== undefined ? parseLimit(opts.limit) : AUDIT_DEFAULT_LIMIT,
      };
      const file = auditDbPath(g.stateDir ?? defaultStateDir());
      // Reading must not create a log (and its directory) where no agent ever wrote one.
      if (!existsSync(file)) {
        out(
          g,
          { entries: [] },
          `no audit entries (${file} does not exist: the agent has recorded nothing yet)`,
        );
        return;
      }
      const store = AuditStore.open(file);
      try {
        const entries = store.query(query);
        out(g, { entries }, auditTable(entries));
      } finally {
        store.close();
      }
    });
}
