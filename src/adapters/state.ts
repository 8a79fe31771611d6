import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { VirtqosError } from "../core/errors.js";
import type { AppliedBy, DomainRecord, RecordInterface, StoredRecord } from "../core/model.js";

// What virtqos applied, per domain, under /run (tmpfs): tc state dies with a reboot, and so should this.
// The kernel stays the truth for what exists; records only say who asked for it and with which limits.

/**
 * Format of the record files this virtqos writes. 1 (no `version` field): the format before it, whose
 * interfaces also carried `ifb` and `swapped` (both derivable); still read, so a host upgraded with guests
 * running keeps their records.
 */
export const RECORD_VERSION = 2;

/** A record file in a format this virtqos does not know (written by a newer one): refused, never overwritten. */
export class RecordVersionError extends VirtqosError {
  constructor(
    readonly file: string,
    readonly version: unknown,
  ) {
    super(
      "RECORD_VERSION",
      `${file}: state record format version ${JSON.stringify(version)} is not one this virtqos reads (1 to ${RECORD_VERSION}), and changes nothing while it is there. Written by a newer virtqos? Run that one, or delete the file and run \`virtqos apply\` to rebuild it`,
      { file, version },
    );
  }
}

/** Every readable record in `<runDir>/domains`; throws RecordVersionError on a file of an unknown version. */
export function loadRecords(runDir: string): StoredRecord[] {
  const dir = join(runDir, "domains");
  let files: string[];
  try {
    files = readdirSync(dir).filter((f) => f.endsWith(".json"));
  } catch {
    return [];
  }
  const out: StoredRecord[] = [];
  for (const f of files) {
    const r = readRecordFile(join(dir, f));
    if (r) out.push(r);
  }
  return out;
}

/** The records of these domains only (a scoped reconcile of one domain need not read 250 files). */
export function loadRecordsOf(runDir: string, uuids: Iterable<string>): StoredRecord[] {
  const out: StoredRecord[] = [];
  for (const u of new Set(uuids)) {
    const r = readRecordFile(join(runDir, "domains", `${safe(u)}.json`));
    if (r && r.domainUuid === u) out.push(r);
  }
  return out;
}

/** One record file: undefined when it is missing, torn or not a record; version 1 is converted. */
export function readRecordFile(file: string): StoredRecord | undefined {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, "utf8"));
  } catch {
    // A torn or foreign file is not a record; the sweep and the next apply rebuild what matters.
    return undefined;
  }
  if (!raw || typeof raw !== "object" || Array.isArray(raw)) return undefined;
  const r = raw as Partial<StoredRecord>;
  const version = r.version ?? 1;
  if (version !== 1 && version !== RECORD_VERSION) throw new RecordVersionError(file, r.version);
  if (typeof r.domainUuid !== "string" || !Array.isArray(r.interfaces)) return undefined;
  const generation = version === 1 || typeof r.generation !== "number" ? 0 : r.generation;
  const stamp =
    version === 1 || !r.appliedBy ? { version, generation } : { version, generation, appliedBy: r.appliedBy };
  return { ...stamp, ...recordContent(r as DomainRecord) };
}

/**
 * Write the records that changed and remove the forgotten ones. A record whose content is what its file
 * already holds is not rewritten (a no-op apply of 250 domains must not rewrite 250 files, an fsync-heavy
 * rename each on a disk /run); one that changed gets the next generation and `by`, stamped here rather
 * than by the planner because the stamp needs the clock and the file on disk, and src/core has neither.
 */
export function saveRecords(
  runDir: string,
  records: DomainRecord[],
  forget: string[],
  by: Pick<AppliedBy, "door" | "user" | "uid">,
  now: Date = new Date(),
): void {
  const dir = join(runDir, "domains");
  mkdirSync(dir, { recursive: true });
  for (const r of records) {
    const file = join(dir, `${safe(r.domainUuid)}.json`);
    const content = recordContent(r);
    // Throws on a newer format: what a newer virtqos wrote is not overwritten.
    const previous = readRecordFile(file);
    if (previous && canonical(recordContent(previous)) === canonical(content)) continue;
    const stored: StoredRecord = {
      version: RECORD_VERSION,
      generation: (previous?.generation ?? 0) + 1,
      appliedBy: { door: by.door, user: by.user, uid: by.uid, pid: process.pid, at: now.toISOString() },
      ...content,
    };
    const tmp = `${file}.${process.pid}.tmp`;
    writeFileSync(tmp, `${JSON.stringify(stored, null, 2)}\n`);
    renameSync(tmp, file);
  }
  for (const uuid of forget) rmSync(join(dir, `${safe(uuid)}.json`), { force: true });
}

/**
 * A record's content without its stamp, and without the fields version 1 kept that are derived now (a
 * record may come from a version 1 file or a transaction snapshot taken before the upgrade).
 */
function recordContent(r: DomainRecord): DomainRecord {
  const { domainName, domainUuid, interfaces, refused } = r;
  return { domainName, domainUuid, interfaces: interfaces.map(withoutDerived), ...(refused && { refused }) };
}

function withoutDerived(i: RecordInterface & { ifb?: unknown; swapped?: unknown }): RecordInterface {
  const { ifb: _ifb, swapped: _swapped, ...rest } = i;
  return rest;
}

/** JSON with object keys sorted, for comparing contents whatever order their fields were written in. */
function canonical(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    v && typeof v === "object" && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : v,
  );
}

function safe(uuid: string): string {
  return uuid.replace(/[^0-9a-zA-Z-]/g, "_");
}
