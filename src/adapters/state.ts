import { mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { DomainRecord } from "../core/model.js";

// What virtqos applied, per domain, under /run (tmpfs): tc state dies with a reboot, and so should this.
// The kernel stays the truth for what exists; records only say who asked for it and with which limits.

export function defaultRunDir(): string {
  return process.env.VIRTQOS_RUN_DIR ?? "/run/virtqos";
}

export function loadRecords(runDir: string): DomainRecord[] {
  const dir = join(runDir, "domains");
  let files: string[];
  try {
    files = readdirSync(dir).filter((f) => f.endsWith(".json"));
  } catch {
    return [];
  }
  const out: DomainRecord[] = [];
  for (const f of files) {
    try {
      const r = JSON.parse(readFileSync(join(dir, f), "utf8")) as DomainRecord;
      if (r && typeof r.domainUuid === "string" && Array.isArray(r.interfaces)) out.push(r);
    } catch {
      // A torn or foreign file is not a record; the sweep and the next apply rebuild what matters.
    }
  }
  return out;
}

export function saveRecords(runDir: string, records: DomainRecord[], forget: string[]): void {
  const dir = join(runDir, "domains");
  mkdirSync(dir, { recursive: true });
  for (const r of records) {
    const file = join(dir, `${safe(r.domainUuid)}.json`);
    const text = `${JSON.stringify(r, null, 2)}\n`;
    // A no-op apply of 250 domains must not rewrite 250 files (an fsync-heavy rename each on a disk /run).
    try {
      if (readFileSync(file, "utf8") === text) continue;
    } catch {
      // Not there yet.
    }
    const tmp = `${file}.${process.pid}.tmp`;
    writeFileSync(tmp, text);
    renameSync(tmp, file);
  }
  for (const uuid of forget) rmSync(join(dir, `${safe(uuid)}.json`), { force: true });
}

function safe(uuid: string): string {
  return uuid.replace(/[^0-9a-zA-Z-]/g, "_");
}
