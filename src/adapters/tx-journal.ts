import {
  closeSync,
  fstatSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  renameSync,
  rmSync,
  statSync,
  writeSync,
} from "node:fs";
import { userInfo } from "node:os";
import { join } from "node:path";
import type { DomainInfo, DomainRecord } from "../core/model.js";
import type { KernelState } from "../core/snapshot.js";
import { randomHex } from "./random.js";

export { readBootId } from "./boot.js";

// The transaction journal, on persistent storage: a transaction must outlive the process that began it, an
// SSH session that died, and a reboot (an uncommitted change is rolled back before guests start again).
// Everything is written ahead of the kernel change it describes and fsynced, so a kill -9 at any point
// leaves a journal from which the next run converges.
//
//   <state>/tx/open.json               the open transaction (at most one per host)
//   <state>/tx/<id>.snapshot.json      what virtqos owned at `begin`: records and kernel objects
//   <state>/tx/<id>.events.jsonl       every apply made while it was open (domains, devices), appended
//   <state>/tx/log.jsonl               one line per ended transaction

export const JOURNAL_VERSION = 1;

export interface Actor {
  uid: number;
  user: string;
  /** cli, hook, confirm-timer, recover, api... */
  door: string;
}

export type TxState = "open" | "rolling-back" | "committing";

export interface OpenTx {
  version: number;
  id: string;
  who: Actor;
  begunAt: string;
  /** The kernel boot the snapshot was taken in: a different boot at recovery means the kernel state is gone. */
  bootId: string;
  /** Rolled back at this time unless committed (`apply --confirm`, `tx begin --timeout`). */
  deadline?: string;
  state: TxState;
  runDir: string;
  policy: { path: string; bytesBase64: string | null };
}

export interface TxSnapshot {
  records: DomainRecord[];
  /** Every link and every device's qdiscs, classes and filters at `begin`, counters aside. */
  kernel: KernelState;
}

export interface TxEvent {
  at: string;
  who: Actor;
  /** The domains the apply described (a later rollback re-resolves guests started meanwhile from these). */
  domains: DomainInfo[];
  scope: string[] | "all";
  devs: string[];
}

export type TxOutcome = "commit" | "rollback" | "timeout" | "recover";

export interface TxLogEntry {
  id: string;
  who: Actor;
  begunAt: string;
  endedAt: string;
  outcome: TxOutcome;
  endedBy: Actor;
  devices: string[];
  domains: string[];
  /** What the transaction changed in the policy file, begin to end ("-" lines removed, "+" added). */
  policyDiff: string[];
  /** Rollback only: whether the kernel of every touched device read back equal to the snapshot. */
  verified?: boolean;
  detail?: string;
}

const txDir = (stateDir: string) => join(stateDir, "tx");
const openFile = (stateDir: string) => join(txDir(stateDir), "open.json");
const snapshotFile = (stateDir: string, id: string) => join(txDir(stateDir), `${id}.snapshot.json`);
const eventsFile = (stateDir: string, id: string) => join(txDir(stateDir), `${id}.events.jsonl`);
const logFile = (stateDir: string) => join(txDir(stateDir), "log.jsonl");

export function newTxId(): string {
  const t = new Date().toISOString().replace(/[-:]/g, "").replace(/\..*/, "");
  return `tx-${t}-${randomHex(6)}`;
}

/** Write a file so that after a crash it is either the old or the new content, never a torn one. */
export function writeDurable(file: string, data: string | Buffer): void {
  const dir = join(file, "..");
  mkdirSync(dir, { recursive: true });
  const tmp = `${file}.${process.pid}.${randomHex(6)}.tmp`;
  const fd = openSync(tmp, "w", 0o600);
  try {
    writeSync(fd, typeof data === "string" ? Buffer.from(data) : data);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, file);
  syncDir(dir);
}

function syncDir(dir: string): void {
  try {
    const fd = openSync(dir, "r");
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  } catch {
    // Some filesystems refuse fsync on a directory; the rename is still atomic.
  }
}

function appendDurable(file: string, line: string): void {
  mkdirSync(join(file, ".."), { recursive: true });
  const fd = openSync(file, "a+", 0o600);
  try {
    // A writer killed mid-line leaves a torn tail: start on a fresh line so this entry stays readable.
    const size = fstatSync(fd).size;
    const last = Buffer.alloc(1);
    const torn = size > 0 && readSync(fd, last, 0, 1, size - 1) === 1 && last[0] !== 0x0a;
    writeSync(fd, `${torn ? "\n" : ""}${line}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * The open transaction, if any. The hook calls this on every apply, so it costs one failed stat when no
 * transaction is open.
 */
export function readOpenTx(stateDir: string): OpenTx | undefined {
  let text: string;
  try {
    text = readFileSync(openFile(stateDir), "utf8");
  } catch {
    return undefined;
  }
  const tx = JSON.parse(text) as OpenTx;
  if (tx.version !== JOURNAL_VERSION) {
    throw new Error(
      `transaction journal ${openFile(stateDir)} has version ${tx.version}, expected ${JOURNAL_VERSION}`,
    );
  }
  return tx;
}

export function hasOpenTx(stateDir: string): boolean {
  try {
    statSync(openFile(stateDir));
    return true;
  } catch {
    return false;
  }
}

/** Snapshot first, then the open marker: an open.json always has its snapshot. */
export function writeBegin(stateDir: string, tx: OpenTx, snapshot: TxSnapshot): void {
  writeDurable(snapshotFile(stateDir, tx.id), JSON.stringify(snapshot));
  writeDurable(openFile(stateDir), `${JSON.stringify(tx, null, 2)}\n`);
}

export function updateOpenTx(stateDir: string, tx: OpenTx): void {
  writeDurable(openFile(stateDir), `${JSON.stringify(tx, null, 2)}\n`);
}

export function readSnapshot(stateDir: string, id: string): TxSnapshot {
  return JSON.parse(readFileSync(snapshotFile(stateDir, id), "utf8")) as TxSnapshot;
}

export function appendEvent(stateDir: string, id: string, event: TxEvent): void {
  appendDurable(eventsFile(stateDir, id), JSON.stringify(event));
}

/** Events in order; a line torn by a crash mid-append is the last one and is skipped. */
export function readEvents(stateDir: string, id: string): TxEvent[] {
  let text: string;
  try {
    text = readFileSync(eventsFile(stateDir, id), "utf8");
  } catch {
    return [];
  }
  const out: TxEvent[] = [];
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    try {
      out.push(JSON.parse(line) as TxEvent);
    } catch {
      // torn tail
    }
  }
  return out;
}

/** The log line first, then the open marker goes: a crash in between leaves the transaction to recover. */
export function writeEnd(stateDir: string, id: string, entry: TxLogEntry): void {
  appendDurable(logFile(stateDir), JSON.stringify(entry));
  rmSync(openFile(stateDir), { force: true });
  syncDir(txDir(stateDir));
  rmSync(snapshotFile(stateDir, id), { force: true });
  rmSync(eventsFile(stateDir, id), { force: true });
}

export function readLog(stateDir: string): TxLogEntry[] {
  let text: string;
  try {
    text = readFileSync(logFile(stateDir), "utf8");
  } catch {
    return [];
  }
  return text
    .split("\n")
    .filter((l) => l.trim())
    .flatMap((l) => {
      try {
        return [JSON.parse(l) as TxLogEntry];
      } catch {
        return [];
      }
    });
}

/** Snapshot and event files left by a crash between writeEnd's steps (their transaction is in the log). */
export function sweepEnded(stateDir: string): void {
  const open = readOpenTx(stateDir)?.id;
  let files: string[];
  try {
    files = readdirSync(txDir(stateDir));
  } catch {
    return;
  }
  for (const f of files) {
    const m = /^(tx-[\w-]+)\.(snapshot\.json|events\.jsonl)$/.exec(f);
    if (m && m[1] !== open) rmSync(join(txDir(stateDir), f), { force: true });
  }
}

/** The uid and user name of this process (the sudo caller where there is one), and the door it came through. */
export function currentActor(door: string): Actor {
  const uid = process.getuid?.() ?? -1;
  let user = process.env.SUDO_USER ?? process.env.USER ?? "";
  if (!user) {
    try {
      user = userInfo().username;
    } catch {
      user = String(uid);
    }
  }
  return { uid, user, door };
}
