import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { liveDir } from "../config.js";
import { VirtqosError } from "../core/errors.js";
import type { LiveInterfaceLimits, LiveLimit } from "../core/model.js";
import { writeDurable } from "./tx-journal.js";

// Live limits on persistent disk, one small JSON file per domain UUID (<state dir>/live/<uuid>.json), so that
// they survive what the guest goes through: the hook reads the file at every start (no database: the hook
// must start fast), which covers OpenStack's hard reboot (undefine + define of an XML without our metadata).
//
// Per interface (by MAC) two slots, as libvirt has a live and a persistent definition:
//   live:   in force for this run of the domain; dropped when the domain starts again (`start begin`).
//   config: in force from the next start on, and kept (`--config`, persist config/both).
// Per direction a slot holds a limit, `null` (no limit: average 0 given) or nothing (not set there).
// While the domain runs, a direction's live slot wins, then its config slot; then the configuration.

export const LIVE_VERSION = 1;

export interface LiveSlot {
  inbound?: LiveLimit | null;
  outbound?: LiveLimit | null;
}

export interface LiveEntry {
  live?: LiveSlot;
  config?: LiveSlot;
  /** ISO time and who (token name, uid:N, user) of the last change. */
  setAt: string;
  setBy: string;
}

export interface LiveFile {
  version: typeof LIVE_VERSION;
  domainUuid: string;
  domainName: string;
  /** By MAC address (lower case). */
  interfaces: Record<string, LiveEntry>;
}

export class LiveStoreError extends VirtqosError {
  constructor(message: string) {
    super("LIVE_STORE_INVALID", message);
  }
}

const UUID = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;

/** The file of a domain; the UUID is checked so that a crafted one cannot point outside the directory. */
export function liveFilePath(stateDir: string | undefined, uuid: string): string {
  if (!UUID.test(uuid)) throw new LiveStoreError(`"${uuid}" is not a domain UUID`);
  return join(liveDir(stateDir), `${uuid.toLowerCase()}.json`);
}

function isLimit(v: unknown): v is LiveLimit {
  if (v === null || typeof v !== "object") return false;
  const l = v as Record<string, unknown>;
  const num = (x: unknown, optional: boolean) =>
    (optional && x === undefined) || (typeof x === "number" && Number.isFinite(x) && x >= 0);
  return (
    num(l.rateBitsPerSec, false) &&
    num(l.ceilBitsPerSec, false) &&
    num(l.burstBytes, true) &&
    num(l.floorBitsPerSec, true) &&
    (l.rateBitsPerSec as number) > 0
  );
}

function checkSlot(v: unknown, where: string): void {
  if (v === undefined) return;
  if (v === null || typeof v !== "object") throw new LiveStoreError(`${where} is not an object`);
  for (const [k, x] of Object.entries(v)) {
    if (k !== "inbound" && k !== "outbound") throw new LiveStoreError(`${where} has an unknown field "${k}"`);
    if (x !== null && !isLimit(x)) throw new LiveStoreError(`${where}.${k} is not a limit in bits/s`);
  }
}

/** The domain's live limits, or undefined when it has none. A damaged file throws LIVE_STORE_INVALID. */
export function readLiveFile(stateDir: string | undefined, uuid: string): LiveFile | undefined {
  const file = liveFilePath(stateDir, uuid);
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw new LiveStoreError(`${file}: ${(e as Error).message}`);
  }
  let data: LiveFile;
  try {
    data = JSON.parse(text) as LiveFile;
  } catch (e) {
    throw new LiveStoreError(`${file}: not JSON (${(e as Error).message})`);
  }
  if (data?.version !== LIVE_VERSION)
    throw new LiveStoreError(`${file}: version ${data?.version} is not ${LIVE_VERSION}`);
  if (typeof data.interfaces !== "object" || data.interfaces === null) {
    throw new LiveStoreError(`${file}: "interfaces" is not an object`);
  }
  for (const [mac, entry] of Object.entries(data.interfaces)) {
    checkSlot(entry?.live, `${file}: interfaces["${mac}"].live`);
    checkSlot(entry?.config, `${file}: interfaces["${mac}"].config`);
  }
  return data;
}

const emptySlot = (s: LiveSlot | undefined) => !s || (s.inbound === undefined && s.outbound === undefined);

/** Write the file (durably: old or new content after a crash); an empty one is removed. */
export function writeLiveFile(stateDir: string | undefined, data: LiveFile): void {
  const file = liveFilePath(stateDir, data.domainUuid);
  for (const [mac, e] of Object.entries(data.interfaces)) {
    if (emptySlot(e.live)) delete e.live;
    if (emptySlot(e.config)) delete e.config;
    if (!e.live && !e.config) delete data.interfaces[mac];
  }
  if (Object.keys(data.interfaces).length === 0) rmSync(file, { force: true });
  else writeDurable(file, `${JSON.stringify(data, null, 2)}\n`);
}

/** What is in force while the domain runs: per direction the live slot, else the config slot. */
export function liveLimitsOf(data: LiveFile | undefined): LiveInterfaceLimits[] {
  if (!data) return [];
  return Object.entries(data.interfaces).map(([mac, e]) => {
    const l: LiveInterfaceLimits = { mac };
    for (const d of ["inbound", "outbound"] as const) {
      const v = e.live && d in e.live ? e.live[d] : e.config && d in e.config ? e.config[d] : undefined;
      if (v !== undefined) l[d] = v;
    }
    return l;
  });
}

/**
 * A new run of the domain starts: the previous run's live-only limits end with it (as `virsh domiftune
 * --live` does). Returns whether the file changed. Called by the hook at `start begin`.
 */
export function dropLiveSlots(stateDir: string | undefined, uuid: string): boolean {
  const data = readLiveFile(stateDir, uuid);
  if (!data || !Object.values(data.interfaces).some((e) => e.live)) return false;
  for (const e of Object.values(data.interfaces)) delete e.live;
  writeLiveFile(stateDir, data);
  return true;
}
