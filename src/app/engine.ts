import type { Runner } from "../adapters/exec.js";
import { type BaseDump, BatchError, observe, runBatch } from "../adapters/kernel.js";
import { acquireLock } from "../adapters/lock.js";
import type { Logger } from "../adapters/log.js";
import { cachedCapabilities } from "../adapters/probe.js";
import { loadRecords, saveRecords } from "../adapters/state.js";
import type { DesiredInterface, DirectionLimit, DomainInfo } from "../core/model.js";
import { type Observed, type Op, type Plan, type PlanProblem, plan, planRestore } from "../core/plan.js";
import type { Policy } from "../core/policy.js";
import type { Capabilities } from "../core/recipe.js";
import { htbClass } from "../core/recipe.js";
import { type Rendered, render } from "../core/render.js";
import { resolveDomain } from "../core/resolve.js";
import { formatRate, formatSize } from "../core/units.js";

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
}

export interface ReconcileRequest {
  domains: DomainInfo[];
  policy: Policy;
  /** Domains whose whole state `domains` describes (a domain listed here but absent from `domains` is removed). */
  scope: string[] | "all";
  sweep?: boolean;
  dryRun?: boolean;
}

export interface ReconcileResult {
  desired: DesiredInterface[];
  plan: Plan;
  rendered: Rendered;
  applied: boolean;
  warnings: string[];
  failure?: { message: string; tool?: string; line?: string; lineNumber?: number; restored: boolean };
}

export async function reconcile(ctx: EngineContext, req: ReconcileRequest): Promise<ReconcileResult> {
  const caps = ctx.caps ?? (await cachedCapabilities(ctx.runner, ctx.runDir));
  const warnings: string[] = [];
  const desired: DesiredInterface[] = [];
  const resolveProblems: PlanProblem[] = [];
  for (const d of req.domains) {
    const r = resolveDomain(d, req.policy);
    desired.push(...r.interfaces);
    warnings.push(...r.warnings);
    resolveProblems.push(...r.problems);
  }
  for (const w of warnings) ctx.log.warning(w);
  const release = req.dryRun || ctx.held ? () => {} : await acquireLock(ctx.runDir, ctx.lockTimeoutMs);
  try {
    const records = loadRecords(ctx.runDir);
    const devs = desired.flatMap((d) => (d.dev ? [d.dev] : []));
    const before = await observe(ctx.runner, {
      devs,
      records,
      everything: req.scope === "all",
      base: ctx.held?.base,
    });
    const p = plan(desired, before, caps, {
      leaf: req.policy.leaf,
      scope: req.scope,
      sweep: req.sweep ?? true,
      groups: req.policy.groups,
    });
    p.problems.unshift(...resolveProblems);
    const rendered = render(p.ops);
    for (const n of p.notes) (n.level === "warning" ? ctx.log.warning : ctx.log.info)(n.message);
    for (const pr of p.problems) ctx.log.error(`${pr.code}: ${pr.message}; fix: ${pr.fix}`);
    const result: ReconcileResult = { desired, plan: p, rendered, applied: false, warnings };
    if (req.dryRun) return result;
    if (p.ops.length === 0) {
      ctx.log.debug("kernel already matches the desired state; nothing to do");
      saveRecords(ctx.runDir, p.records, p.forget);
      return result;
    }
    for (const line of [
      ...rendered.ipPre.map((l) => `ip ${l}`),
      ...rendered.tc.map((l) => `tc ${l}`),
      ...rendered.ipPost.map((l) => `ip ${l}`),
    ]) {
      ctx.log.debug(`batch: ${line}`);
    }
    try {
      // tc lines that do not touch a device being created run alongside `ip` creating it: a guest start
      // waits for the hook, and this saves it one process round trip. Order within each group is kept.
      const created = new Set(p.ops.filter((o) => o.op === "ifb-add").map((o) => o.dev));
      const needsNew = (line: string) => [...created].some((dev) => line.includes(` ${dev}`));
      const early = created.size ? rendered.tc.filter((l) => !needsNew(l)) : [];
      const late = created.size ? rendered.tc.filter(needsNew) : rendered.tc;
      const results = await Promise.allSettled([
        runBatch(ctx.runner, "ip", rendered.ipPre),
        runBatch(ctx.runner, "tc", early),
      ]);
      const rejected = results.find((r) => r.status === "rejected");
      if (rejected) throw (rejected as PromiseRejectedResult).reason;
      await runBatch(ctx.runner, "tc", late);
      await runBatch(ctx.runner, "ip", rendered.ipPost);
    } catch (e) {
      const restored = await rollback(ctx, before, p.ops, caps);
      const be = e instanceof BatchError ? e : undefined;
      result.failure = {
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
    saveRecords(ctx.runDir, p.records, p.forget);
    result.applied = true;
    logApplied(ctx.log, desired, p.ops);
    return result;
  } finally {
    release();
  }
}

/** Put every device the failed batch may have touched back as `before` had it. Returns whether that worked. */
async function rollback(
  ctx: EngineContext,
  before: Observed,
  ops: Op[],
  caps: Capabilities,
): Promise<boolean> {
  const devs = new Set(ops.map((o) => o.dev));
  try {
    const after = await observe(ctx.runner, { devs, records: before.records });
    const restore = planRestore(before, after, devs, caps);
    const r = render(restore);
    await runBatch(ctx.runner, "ip", r.ipPre, true);
    await runBatch(ctx.runner, "tc", r.tc, true);
    await runBatch(ctx.runner, "ip", r.ipPost, true);
    const check = await observe(ctx.runner, { devs, records: before.records });
    return planRestore(before, check, devs, caps).length === 0;
  } catch (e) {
    ctx.log.error(`rollback failed: ${(e as Error).message}`);
    return false;
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

/** One INFO line per interface and direction that changed, in seed 000's words. */
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
