import type { Runner } from "../adapters/exec.js";
import { type BaseDump, BatchError, observe, runBatch, runBatchStaged } from "../adapters/kernel.js";
import { liveLimitsOf, readLiveFile } from "../adapters/live-store.js";
import { acquireLock } from "../adapters/lock.js";
import type { Logger } from "../adapters/log.js";
import { cachedCapabilities } from "../adapters/probe.js";
import { loadRecords, saveRecords } from "../adapters/state.js";
import { type Actor, appendEvent, currentActor, readOpenTx } from "../adapters/tx-journal.js";
import { defaultStateDir } from "../config.js";
import { type Diagnostic, type ErrorCode, errorCodeOf, formatDiagnostic } from "../core/errors.js";
import type { DesiredInterface, DirectionLimit, DomainInfo } from "../core/model.js";
import { type Observed, type Op, type Plan, plan, planRestore } from "../core/plan.js";
import type { Policy } from "../core/policy.js";
import type { Capabilities } from "../core/recipe.js";
import { htbClass } from "../core/recipe.js";
import { type Rendered, render, splitTcByCreated } from "../core/render.js";
import { resolveDomain } from "../core/resolve.js";
import { formatRate, formatSize } from "../core/units.js";
import { finishOvsNative, prepareOvsNative } from "./ovs-native.js";

// observe() -> plan() -> render() -> apply, under one lock. Everything that can fail after the first change
// to the kernel is followed by a re-observe and a rollback to what was there before.

export interface EngineContext {
  runner: Runner;
  runDir: string;
  log: Logger;
  caps?: Capabilities;
  lockTimeoutMs?: number;
  /** The caller already holds the lock and started the base dumps under it (the hook, to save time). */
  held?: { base: BaseDump };
  /** The caller holds the lock (a transaction rollback, which observes, applies and verifies under it). */
  lockHeld?: boolean;
  /** Where the transaction journal lives (default $VIRTQOS_STATE_DIR or /var/lib/virtqos). */
  stateDir?: string;
  /** Who asks, for the transaction journal and the state records' `appliedBy` (default: whoOf). */
  who?: Actor;
  /**
   * Reads what a scoped reconcile needs without listing the whole host (the agent's kernel sessions and
   * qdisc cache: src/agent/kernel-view.ts). Undefined from it: observe() reads as usual.
   */
  observer?: ScopedObserver;
}

export interface ScopedObserver {
  observeScoped(req: {
    desired: DesiredInterface[];
    scopeUuids: readonly string[];
    runDir: string;
  }): Promise<Observed | undefined>;
}

/** Who asks: the context's `who`, else this process's user through the CLI's door. */
export function whoOf(ctx: EngineContext): Actor {
  return ctx.who ?? currentActor("cli");
}

export interface ReconcileRequest {
  domains: DomainInfo[];
  policy: Policy;
  /** Domains whose whole state `domains` describes (a domain listed here but absent from `domains` is removed). */
  scope: string[] | "all";
  sweep?: boolean;
  dryRun?: boolean;
  /** The desired state itself, instead of resolving `domains` (a rollback re-applies recorded limits). */
  desired?: DesiredInterface[];
  /** Record the change in an open transaction (default true; a rollback does not journal itself). */
  journal?: boolean;
}

export interface ReconcileResult {
  desired: DesiredInterface[];
  plan: Plan;
  rendered: Rendered;
  applied: boolean;
  /** `ovs: native`: the ovs-vsctl argument arrays run (or, dry run, that would run), in order. */
  ovsVsctl?: string[][];
  failure?: {
    /** The error's code (TC_BATCH_FAILED, COMMAND_KILLED, ...; INTERNAL for one without a code). */
    code: ErrorCode;
    message: string;
    tool?: string;
    line?: string;
    lineNumber?: number;
    restored: boolean;
  };
}

/**
 * The domain with its live limits (`virtqos set`, the API) from the live store, unless the caller gave them.
 * A damaged store file is a warning: the configured limits apply, the guest is never held up by it.
 */
function withLive(d: DomainInfo, ctx: EngineContext, warnings: Diagnostic[]): DomainInfo {
  if (d.live) return d;
  try {
    const live = liveLimitsOf(readLiveFile(ctx.stateDir, d.uuid));
    return live.length ? { ...d, live } : d;
  } catch (e) {
    warnings.push({ code: "LIVE_STORE_INVALID", level: "warning", message: (e as Error).message });
    return d;
  }
}

export async function reconcile(ctx: EngineContext, req: ReconcileRequest): Promise<ReconcileResult> {
  const caps = ctx.caps ?? (await cachedCapabilities(ctx.runner, ctx.runDir));
  // What reading the XML and the policy warned about (no code of its own yet: INPUT_WARNING) goes first among
  // the plan's notes, group assignment's errors first among its problems.
  const warnings: Diagnostic[] = [];
  const desired: DesiredInterface[] = [];
  const resolveProblems: Diagnostic[] = [];
  if (req.desired) desired.push(...req.desired);
  else {
    for (const d of req.domains) {
      const r = resolveDomain(withLive(d, ctx, warnings), req.policy);
      desired.push(...r.interfaces);
      for (const message of r.warnings) warnings.push({ code: "INPUT_WARNING", level: "warning", message });
      resolveProblems.push(...r.problems);
    }
  }
  for (const w of warnings) ctx.log.warning(w.message);
  const release =
    req.dryRun || ctx.held || ctx.lockHeld ? () => {} : await acquireLock(ctx.runDir, ctx.lockTimeoutMs);
  try {
    const before = await snapshot(
      ctx,
      desired,
      req.scope === "all",
      req.scope === "all" ? undefined : [...req.scope, ...desired.map((d) => d.domainUuid)],
    );
    // ---- ovs: native (issue 10, src/app/ovs-native.ts): the directions Open vSwitch enforces; OVSDB read
    const ovsPrep = await prepareOvsNative(ctx, req, desired, before, caps);
    // ----
    const p = plan(desired, ovsPrep.view, caps, {
      leaf: req.policy.leaf,
      scope: req.scope,
      sweep: req.sweep ?? true,
      groups: req.policy.groups,
    });
    p.problems.unshift(...resolveProblems);
    // ---- ovs: native (issue 10): OVSDB diffed here, changed around the tc batch below
    const ovs = finishOvsNative(ctx, req, desired, p, ovsPrep);
    // ----
    const tx = begin(ctx, p, before, caps);
    for (const n of p.notes) (n.level === "warning" ? ctx.log.warning : ctx.log.info)(n.message);
    p.notes.unshift(...warnings);
    for (const pr of p.problems) ctx.log.error(formatDiagnostic(pr));
    const result: ReconcileResult = { desired, plan: p, rendered: tx.rendered, applied: false };
    if (ovs?.argv.length) result.ovsVsctl = ovs.argv; // ovs: native
    if (req.dryRun) return result;
    if (p.ops.length === 0) {
      ctx.log.debug("kernel already matches the desired state; nothing to do");
      if (await ovs?.apply()) result.applied = true; // ovs: native: OVSDB may still differ
      tx.commit();
      return result;
    }
    if (req.journal !== false) journalChange(ctx, req, p.ops);
    try {
      await ovs?.applyFirst(); // ovs: native: a port OVS hands back to tc, before its tc objects go on
      await tx.apply();
    } catch (e) {
      const restored = await tx.rollback();
      const be = e instanceof BatchError ? e : undefined;
      result.failure = {
        code: errorCodeOf(e) ?? "INTERNAL",
        message: (e as Error).message,
        tool: be?.tool,
        line: be?.line,
        lineNumber: be?.lineNumber,
        restored,
      };
      ctx.log.error(
        `apply failed: ${(e as Error).message}; ${restored ? "devices restored to their previous state" : "ROLLBACK INCOMPLETE, run `virtqos status`"}`,
      );
      return result;
    }
    await ovs?.apply(); // ovs: native: after the tc batch, which took virtqos's own tc objects off OVS's ports
    tx.commit();
    result.applied = true;
    logApplied(ctx.log, desired, p.ops);
    return result;
  } finally {
    release();
  }
}

/**
 * What the kernel and the records say now, for the devices `desired` names, those the records name, every
 * virtqos IFB, and (`everything`) every device with a qdisc. Under the engine's lock.
 */
export async function snapshot(
  ctx: EngineContext,
  desired: DesiredInterface[],
  everything: boolean,
  scopeUuids?: readonly string[],
): Promise<Observed> {
  if (ctx.observer && !everything && scopeUuids && !ctx.held) {
    const fast = await ctx.observer.observeScoped({ desired, scopeUuids, runDir: ctx.runDir });
    if (fast) return fast;
  }
  return observe(ctx.runner, {
    devs: desired.flatMap((d) => (d.dev ? [d.dev] : [])),
    records: loadRecords(ctx.runDir),
    everything,
    base: ctx.held?.base,
    scopeUuids,
  });
}

/**
 * One change to the kernel: the plan and the snapshot it was made against. `apply()` runs the batches,
 * `commit()` keeps the result (the state records), `rollback()` puts every device the plan touches back as
 * the snapshot had it and says whether the kernel then reads back equal. A failed batch and a transaction's
 * rollback end in this same restore (restoreDevices).
 */
export interface KernelTx {
  readonly rendered: Rendered;
  apply(): Promise<void>;
  commit(): void;
  rollback(): Promise<boolean>;
}

export function begin(ctx: EngineContext, p: Plan, before: Observed, caps: Capabilities): KernelTx {
  const rendered = render(p.ops);
  return {
    rendered,
    async apply() {
      for (const line of [
        ...rendered.ipPre.map((l) => `ip ${l}`),
        ...rendered.tc.map((l) => `tc ${l}`),
        ...rendered.ipPost.map((l) => `ip ${l}`),
      ]) {
        ctx.log.debug(`batch: ${line}`);
      }
      // tc lines that do not touch a device being created run alongside `ip` creating it: a guest start
      // waits for the hook, and this saves it one process round trip. Order within each group is kept.
      const created = new Set(p.ops.filter((o) => o.op === "ifb-add").map((o) => o.dev));
      const { early, late } = splitTcByCreated(rendered, created);
      // The lines on new devices follow in the same tc process once `ip` has created them (runBatchStaged):
      // a guest start pays for one tc process, not two in a row.
      const ipDone = runBatch(ctx.runner, "ip", rendered.ipPre);
      const results = await Promise.allSettled([
        ipDone,
        late.length
          ? runBatchStaged(
              ctx.runner,
              "tc",
              early,
              ipDone.then(() => late),
            )
          : runBatch(ctx.runner, "tc", early),
      ]);
      const rejected = results.find((r) => r.status === "rejected");
      if (rejected) throw (rejected as PromiseRejectedResult).reason;
      // Only deletes: one of a device already gone is success, and the rest still run.
      await runBatch(ctx.runner, "ip", rendered.ipPost, true);
    },
    commit() {
      saveRecords(ctx.runDir, p.records, p.forget, whoOf(ctx));
    },
    rollback() {
      return restoreDevices(ctx, before, new Set(p.ops.map((o) => o.dev)), caps);
    },
  };
}

/**
 * Put `devs` back as `before` had them (virtqos's trees, filters, hook qdiscs and IFBs; nobody else's), then
 * read the kernel again: true when nothing is left to restore.
 */
export async function restoreDevices(
  ctx: EngineContext,
  before: Observed,
  devs: Set<string>,
  caps: Capabilities,
  opts: {
    /** The kernel as read just now under the same lock (a rollback of 2000 devices then reads it once less). */
    now?: Observed;
    /** Gets the read-back that proved the restore, so the caller need not read the kernel again. */
    onCheck?: (check: Observed) => void;
  } = {},
): Promise<boolean> {
  try {
    const after = opts.now ?? (await observe(ctx.runner, { devs, records: before.records }));
    const restore = planRestore(before, after, devs, caps);
    if (restore.length === 0 && opts.now) {
      opts.onCheck?.(opts.now);
      return true;
    }
    const r = render(restore);
    await runBatch(ctx.runner, "ip", r.ipPre, true);
    await runBatch(ctx.runner, "tc", r.tc, true);
    await runBatch(ctx.runner, "ip", r.ipPost, true);
    const check = await observe(ctx.runner, { devs, records: before.records });
    opts.onCheck?.(check);
    return planRestore(before, check, devs, caps).length === 0;
  } catch (e) {
    ctx.log.error(`rollback failed: ${(e as Error).message}`);
    return false;
  }
}

/**
 * While a transaction is open, every change is written to its journal before the kernel is touched, so a
 * rollback knows which devices to restore and which guests started meanwhile. The hook pays one failed
 * read when no transaction is open, and never waits for one.
 */
function journalChange(ctx: EngineContext, req: ReconcileRequest, ops: Op[]): void {
  const stateDir = ctx.stateDir ?? defaultStateDir();
  try {
    const tx = readOpenTx(stateDir);
    if (!tx || tx.state !== "open") return;
    appendEvent(stateDir, tx.id, {
      at: new Date().toISOString(),
      who: whoOf(ctx),
      domains: req.domains,
      scope: req.scope,
      devs: [...new Set(ops.map((o) => o.dev))],
    });
  } catch (e) {
    // Guests keep starting whatever the journal's state; a rollback then cannot know this change.
    ctx.log.error(`transaction journal in ${stateDir} not written: ${(e as Error).message}`);
  }
}

export function describeLimit(limit: DirectionLimit): string {
  const h = htbClass(limit);
  const parts = [`rate=${formatRate(limit.rateBitsPerSec)}`];
  if (limit.ceilBitsPerSec > limit.rateBitsPerSec) parts.push(`peak=${formatRate(limit.ceilBitsPerSec)}`);
  parts.push(`burst=${formatSize(h.burstBytes)}`, `source=${limit.source}`);
  if (limit.floorBitsPerSec) parts.push(`floor=${formatRate(limit.floorBitsPerSec)}`);
  return parts.join(" ");
}

/** One INFO line per interface and direction that changed, worded as the hook scripts operators replace log it. */
function logApplied(log: Logger, desired: DesiredInterface[], ops: Op[]): void {
  const done = new Set(ops.flatMap((o) => (o.iface && o.direction ? [`${o.iface}|${o.direction}`] : [])));
  for (const d of desired) {
    for (const direction of ["inbound", "outbound"] as const) {
      const limit = d[direction];
      if (!limit || !done.has(`${d.key}|${direction}`)) continue;
      log.info(
        `tc ${direction} rules applied: tap=${d.dev} guest=${d.domainName} mac=${d.mac} ${describeLimit(limit)}`,
      );
    }
  }
  const removed = new Set(ops.filter((o) => !o.direction && o.op.endsWith("-del")).map((o) => o.dev));
  for (const dev of removed) log.info(`virtqos rules removed: dev=${dev}`);
}
