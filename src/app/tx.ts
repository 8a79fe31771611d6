import { spawn } from "node:child_process";
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import type { Runner } from "../adapters/exec.js";
import { observe } from "../adapters/kernel.js";
import { acquireLock, alive } from "../adapters/lock.js";
import type { Logger } from "../adapters/log.js";
import { loadPolicy } from "../adapters/policy-load.js";
import { loadRecords, saveRecords } from "../adapters/state.js";
import {
  type Actor,
  JOURNAL_VERSION,
  newTxId,
  type OpenTx,
  readBootId,
  readEvents,
  readLog,
  readOpenTx,
  readSnapshot,
  sweepEnded,
  type TxLogEntry,
  type TxOutcome,
  updateOpenTx,
  writeBegin,
  writeDurable,
  writeEnd,
} from "../adapters/tx-journal.js";
import { detachedEnv } from "../config.js";
import { VirtqosError } from "../core/errors.js";
import { lineDiff } from "../core/line-diff.js";
import type { DomainInfo, DomainRecord } from "../core/model.js";
import { type Observed, recordIfb } from "../core/plan.js";
import type { Capabilities } from "../core/recipe.js";
import { compareDevices, holdsVirtqos, kernelState, observedFrom } from "../core/snapshot.js";
import { type EngineContext, reconcile, restoreDevices } from "./engine.js";

// Transactions over what virtqos owns: `begin` snapshots the policy file, the state records and the kernel,
// every apply while it is open is journaled ahead of the kernel change, `commit` keeps it all, `rollback`
// brings the policy file back byte for byte and the kernel of every device touched since back to the
// snapshot, and proves it by reading the kernel again.
//
// Guests that came or went while the transaction was open (the rule, also in the README):
// - a guest stopped since `begin` has nothing to restore: its taps are gone, its IFBs stay removed;
// - a guest started (or restarted: a tap with a new ifindex) since `begin` gets the limits the restored
//   policy gives it, resolved from the domain description the hook journaled when it applied;
// - every other guest gets exactly the kernel state it had at `begin`, re-applied from its state record.

export interface TxContext {
  runner: Runner;
  runDir: string;
  stateDir: string;
  policyFile: string;
  log: Logger;
  who: Actor;
  caps: () => Promise<Capabilities>;
  lockTimeoutMs?: number;
}

export interface RollbackResult {
  entry: TxLogEntry;
  /** Differences between the snapshot and the kernel after the rollback (empty: restored exactly). */
  differences: string[];
}

function requireOpen(stateDir: string): OpenTx {
  const tx = readOpenTx(stateDir);
  if (!tx) throw new VirtqosError("TX_NONE", "no transaction is open");
  return tx;
}

function readPolicyBytes(file: string): Buffer | null {
  try {
    return readFileSync(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw e;
  }
}

export async function txBegin(
  ctx: TxContext,
  opts: {
    timeoutMs?: number;
    /**
     * Called with the new id before the transaction exists on disk: the confirm timer starts here, so that
     * a caller killed the moment after `begin` still leaves a timer behind.
     */
    beforeOpen?: (id: string) => void;
  } = {},
): Promise<OpenTx> {
  const release = await acquireLock(ctx.runDir, ctx.lockTimeoutMs);
  try {
    const open = readOpenTx(ctx.stateDir);
    if (open) {
      throw new VirtqosError(
        "TX_OPEN",
        `transaction ${open.id} is already open (begun ${open.begunAt} by ${open.who.user}); commit or roll it back first`,
      );
    }
    sweepEnded(ctx.stateDir);
    const records = loadRecords(ctx.runDir);
    const observed = await observe(ctx.runner, { devs: [], records, everything: true });
    const policy = readPolicyBytes(ctx.policyFile);
    const now = Date.now();
    const tx: OpenTx = {
      version: JOURNAL_VERSION,
      id: newTxId(),
      who: ctx.who,
      begunAt: new Date(now).toISOString(),
      bootId: readBootId(),
      deadline: opts.timeoutMs ? new Date(now + opts.timeoutMs).toISOString() : undefined,
      state: "open",
      runDir: ctx.runDir,
      policy: { path: ctx.policyFile, bytesBase64: policy ? policy.toString("base64") : null },
    };
    opts.beforeOpen?.(tx.id);
    writeBegin(ctx.stateDir, tx, { records, kernel: kernelState(observed) });
    ctx.log.info(
      `transaction ${tx.id} begun${tx.deadline ? `; rolled back at ${tx.deadline} unless committed` : ""}`,
    );
    return tx;
  } finally {
    release();
  }
}

function touched(stateDir: string, id: string): { devices: string[]; domains: string[] } {
  const events = readEvents(stateDir, id);
  return {
    devices: [...new Set(events.flatMap((e) => e.devs))].sort(),
    domains: [...new Set(events.flatMap((e) => e.domains.map((d) => d.name)))].sort(),
  };
}

function policyDiff(tx: OpenTx, nowBytes: Buffer | null): string[] {
  const before =
    tx.policy.bytesBase64 === null ? "" : Buffer.from(tx.policy.bytesBase64, "base64").toString("utf8");
  return lineDiff(before, nowBytes ? nowBytes.toString("utf8") : "");
}

export async function txCommit(ctx: TxContext): Promise<TxLogEntry> {
  const release = await acquireLock(ctx.runDir, ctx.lockTimeoutMs);
  try {
    const tx = requireOpen(ctx.stateDir);
    if (tx.state !== "open") {
      throw new VirtqosError(
        "TX_ROLLING_BACK",
        `transaction ${tx.id} is being rolled back; it cannot be committed`,
      );
    }
    const entry: TxLogEntry = {
      id: tx.id,
      who: tx.who,
      begunAt: tx.begunAt,
      endedAt: new Date().toISOString(),
      outcome: "commit",
      endedBy: ctx.who,
      ...touched(ctx.stateDir, tx.id),
      policyDiff: policyDiff(tx, readPolicyBytes(tx.policy.path)),
    };
    writeEnd(ctx.stateDir, tx.id, entry);
    ctx.log.info(`transaction ${tx.id} committed`);
    return entry;
  } finally {
    release();
  }
}

/**
 * Back to the snapshot. Idempotent and safe to repeat after a crash at any point: the journal is marked
 * "rolling-back" first, the policy file is rewritten whole, and the kernel part is a diff against the
 * snapshot, so a second run finishes what a killed one started.
 */
export async function txRollback(ctx: TxContext, outcome: TxOutcome = "rollback"): Promise<RollbackResult> {
  const release = await acquireLock(ctx.runDir, ctx.lockTimeoutMs);
  try {
    const tx = requireOpen(ctx.stateDir);
    if (tx.state !== "rolling-back") updateOpenTx(ctx.stateDir, { ...tx, state: "rolling-back" });
    const before = readPolicyBytes(tx.policy.path);
    const diff = policyDiff(tx, before);
    restorePolicyFile(tx, ctx.runDir);
    const sameBoot = tx.bootId === readBootId();
    let differences: string[] = [];
    let detail: string | undefined;
    const { devices, domains } = touched(ctx.stateDir, tx.id);
    if (sameBoot) {
      differences = await restoreKernel(ctx, tx);
    } else {
      // The host rebooted with the transaction open: the kernel state and /run went with it. Guests starting
      // from now on get the restored policy's limits from the hook.
      detail =
        "host rebooted while the transaction was open: policy file restored; the kernel had nothing left to restore";
    }
    const entry: TxLogEntry = {
      id: tx.id,
      who: tx.who,
      begunAt: tx.begunAt,
      endedAt: new Date().toISOString(),
      outcome,
      endedBy: ctx.who,
      devices,
      domains,
      policyDiff: diff,
      verified: sameBoot ? differences.length === 0 : undefined,
      detail,
    };
    if (differences.length) {
      // Keep the transaction open: the operator (or the next rollback) must see it is not done.
      ctx.log.error(
        `transaction ${tx.id}: kernel differs from the snapshot after rollback:\n  ${differences.join("\n  ")}`,
      );
      throw new VirtqosError(
        "ROLLBACK_INCOMPLETE",
        `rollback of ${tx.id} left ${differences.length} difference(s) from the snapshot: ${differences.slice(0, 5).join("; ")}`,
      );
    }
    writeEnd(ctx.stateDir, tx.id, entry);
    ctx.log.info(`transaction ${tx.id} rolled back (${outcome})`);
    return { entry, differences };
  } finally {
    release();
  }
}

function restorePolicyFile(tx: OpenTx, runDir: string): void {
  if (tx.policy.bytesBase64 === null) rmSync(tx.policy.path, { force: true });
  else writeDurable(tx.policy.path, Buffer.from(tx.policy.bytesBase64, "base64"));
  // The hook's parsed-policy cache is keyed by the file's identity and mtime; drop it rather than trust that.
  rmSync(join(runDir, "policy-cache.json"), { force: true });
}

/**
 * Put every device touched since `begin` back as the snapshot had it (the engine's restoreDevices, the same
 * restore a failed batch gets), bring the records back, re-apply guests started meanwhile under the restored
 * policy, then read the kernel again and compare.
 */
async function restoreKernel(ctx: TxContext, tx: OpenTx): Promise<string[]> {
  const snapshot = readSnapshot(ctx.stateDir, tx.id);
  const events = readEvents(ctx.stateDir, tx.id);
  const policy = loadPolicy(tx.policy.path);
  const caps = await ctx.caps();
  // The records this rollback rewrites say so: door "tx", whoever ran it.
  const who = { ...ctx.who, door: "tx" };
  const engine: EngineContext = {
    runner: ctx.runner,
    runDir: ctx.runDir,
    log: ctx.log,
    caps,
    lockHeld: true,
    stateDir: ctx.stateDir,
    who,
  };
  const now = await observe(ctx.runner, { devs: [], records: loadRecords(ctx.runDir), everything: true });
  const snapLinks = new Map(snapshot.kernel.links.map((l) => [l.name, l]));
  const sameTap = (i: DomainRecord["interfaces"][number]) =>
    !i.dev || (now.links.get(i.dev)?.ifindex !== undefined && now.links.get(i.dev)?.ifindex === i.ifindex);

  // Guests whose taps are the same devices as at `begin` get exactly the state they had.
  const restored = snapshot.records.filter(
    (r) => r.interfaces.every(sameTap) && r.interfaces.some((i) => i.dev && now.links.has(i.dev)),
  );
  const restoredUuids = new Set(restored.map((r) => r.domainUuid));
  // Guests started (or restarted on a new tap) since `begin`: the restored policy's limits, from the domain
  // description the hook or the CLI journaled (only where their taps exist now).
  const latest = new Map<string, DomainInfo>();
  for (const e of events) for (const d of e.domains) latest.set(d.uuid, d);
  const started = [...latest.values()].filter(
    (d) => !restoredUuids.has(d.uuid) && d.interfaces.some((i) => i.targetDev && now.links.has(i.targetDev)),
  );
  const startedUuids = new Set(started.map((d) => d.uuid));
  const ownedByStarted = (alias: string | undefined) => [...startedUuids].some((u) => !!alias?.includes(u));

  // 1. The snapshot, device by device, through the same restore a failed batch uses.
  const restoredIfbs = restored.flatMap((r) => r.interfaces.flatMap((i) => recordIfb(r.domainUuid, i) ?? []));
  const devices = new Set<string>();
  for (const dev of new Set([...events.flatMap((e) => e.devs), ...restoredIfbs])) {
    const was = snapLinks.get(dev);
    const is = now.links.get(dev);
    const ifb = holdsVirtqos(undefined, was) || holdsVirtqos(undefined, is);
    if (was && is && (was.ifindex === is.ifindex || ifb)) devices.add(dev);
    else if (was && !is && restoredIfbs.includes(dev)) devices.add(dev);
    else if (!was && is && ifb && !ownedByStarted(is.alias)) devices.add(dev);
  }
  const before = observedFrom(snapshot.kernel, snapshot.records);
  let readBack: Observed | undefined;
  const ok = await restoreDevices(engine, before, devices, caps, {
    now,
    onCheck: (c) => {
      readBack = c;
    },
  });
  if (!ok) {
    throw new VirtqosError("ROLLBACK_INCOMPLETE", "restoring the snapshot's devices failed; see the log");
  }
  // 2. The records as they were for those guests; guests stopped since are forgotten.
  const current = loadRecords(ctx.runDir);
  saveRecords(
    ctx.runDir,
    restored,
    current.map((r) => r.domainUuid).filter((u) => !restoredUuids.has(u) && !startedUuids.has(u)),
    who,
  );
  // 3. Guests started since, under the restored policy, alongside the restored ones.
  if (started.length) {
    const r = await reconcile(engine, {
      domains: started,
      policy,
      scope: [...startedUuids],
      sweep: false,
      journal: false,
    });
    if (r.failure)
      throw new VirtqosError("ROLLBACK_INCOMPLETE", `re-applying guests started since: ${r.failure.message}`);
  }
  // Proof: compare every restored device with the snapshot, on the read-back that ended the restore unless
  // guests started since were re-applied after it (then read again).
  const after =
    readBack && !started.length
      ? readBack
      : await observe(ctx.runner, { devs: devices, records: loadRecords(ctx.runDir) });
  const check = [...devices].filter((d) => !ownedByStarted(after.links.get(d)?.alias));
  return compareDevices(snapshot.kernel, after, check);
}

export interface TxStatus {
  open?: OpenTx & { timeLeftMs?: number; devices: string[]; domains: string[]; changes: number };
  last?: TxLogEntry;
}

export function txStatus(stateDir: string): TxStatus {
  const tx = readOpenTx(stateDir);
  const log = readLog(stateDir);
  if (!tx) return { last: log.at(-1) };
  const events = readEvents(stateDir, tx.id);
  return {
    open: {
      ...tx,
      timeLeftMs: tx.deadline ? Math.max(0, Date.parse(tx.deadline) - Date.now()) : undefined,
      ...touched(stateDir, tx.id),
      changes: events.length,
    },
    last: log.at(-1),
  };
}

/**
 * At boot (before libvirtd starts guests): a transaction still open is rolled back. After a reboot that only
 * means the policy file (the kernel state and /run are gone); in the same boot (a crashed rollback, a dead
 * timer), the full rollback.
 */
export async function txRecover(ctx: TxContext): Promise<RollbackResult | undefined> {
  sweepEnded(ctx.stateDir);
  if (!readOpenTx(ctx.stateDir)) return undefined;
  return txRollback(ctx, "recover");
}

/**
 * The confirm timer, in a process of its own (detached from the caller's terminal and session): wait for the
 * deadline, and roll back unless the transaction was committed or rolled back meanwhile. Polls the journal
 * once a second so a commit from any shell ends it promptly.
 */
export async function txWatch(
  ctx: TxContext,
  id: string,
  beginnerPid?: number,
): Promise<TxOutcome | "ended"> {
  let seen = false;
  for (;;) {
    const tx = readOpenTx(ctx.stateDir);
    if (!tx || tx.id !== id) {
      // Started before the transaction is on disk: wait for it while the process beginning it lives.
      if (seen || beginnerPid === undefined || !alive(beginnerPid)) return "ended";
      await new Promise((r) => setTimeout(r, 50));
      continue;
    }
    seen = true;
    if (!tx.deadline) return "ended";
    const left = Date.parse(tx.deadline) - Date.now();
    if (left <= 0) {
      if (tx.state === "open" || tx.state === "rolling-back") {
        await txRollback(ctx, "timeout");
        return "timeout";
      }
      return "ended";
    }
    await new Promise((r) => setTimeout(r, Math.min(left, 1000)));
  }
}

/** Start the confirm timer as a detached process: it must outlive this command, its terminal and its SSH session. */
export function spawnWatcher(cliEntry: string, id: string, globals: string[]): number | undefined {
  const args = [cliEntry, ...globals, "tx", "watch", "--id", id, "--begun-by", String(process.pid)];
  // Logs go to syslog: the caller's terminal may be gone long before the deadline.
  const child = spawn(process.execPath, args, {
    detached: true,
    stdio: "ignore",
    env: detachedEnv(),
  });
  child.unref();
  return child.pid;
}
