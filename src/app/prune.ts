import type { Runner } from "../adapters/exec.js";
import { acquireLock } from "../adapters/lock.js";
import { loadRecords } from "../adapters/state.js";
import type { StoredRecord } from "../core/model.js";
import type { Policy } from "../core/policy.js";
import { type EngineContext, reconcile } from "./engine.js";
import { desiredFromRecords } from "./status.js";

// Forgetting what virtqos recorded for taps that are gone for good: a guest destroyed while no hook ran (the
// hook not installed yet, libvirtd killed, a host crash that kept /run) leaves its state record and its IFBs
// behind, and `virtqos status` reports the interface as "host device is gone" (exit 4) forever.
//
// Gone means the recorded tap name does not exist. A tap that exists under the same name with a new ifindex
// is not gone: it may be the same guest's tap re-created, which the agent re-shapes, or another guest's
// (tap names are reused), which the engine already tells apart by ifindex and leaves alone.
//
// The decision is taken under the engine's lock, so a hook starting the guest again in between cannot have
// its fresh shaping removed: whatever was gone when looked at under the lock is what is pruned.

export interface GoneInterface {
  domainUuid: string;
  domainName: string;
  mac: string;
  dev: string;
}

export interface PruneResult {
  domainUuid: string;
  domainName: string;
  /** The interfaces whose tap was gone, forgotten. */
  gone: { mac: string; dev: string }[];
  /**
   * "forgotten": every tap of the domain was gone, its record and IFBs are removed (a reconcile of the
   * domain with nothing desired). "reapplied": some taps remain, the domain was re-applied from its record
   * without the gone ones (which drops their IFBs and their part of the record).
   */
  action: "forgotten" | "reapplied";
  /** The domain's IFBs the reconcile removed. */
  removedIfbs: string[];
  /** Other IFBs it removed because their tap is gone too (orphans without a record; `sweep` only). */
  sweptIfbs: string[];
  ok: boolean;
  error?: string;
}

export interface PruneOptions {
  /** Only these domains (default: every domain with a record). */
  uuids?: readonly string[];
  /** Only these gone interfaces (the agent prunes those whose grace period has passed). */
  only?: (g: GoneInterface) => boolean;
  /**
   * Also remove orphaned IFBs of other domains (the engine's sweep). Off by default: the first domain's
   * reconcile would take the IFBs of every other domain being pruned, and each result should say what
   * pruning that domain removed.
   */
  sweep?: boolean;
  lockTimeoutMs?: number;
}

/** The names of the links that exist now (one `ip -j link show`). */
export async function linkNames(runner: Runner): Promise<Set<string>> {
  const r = await runner.run("ip", ["-j", "link", "show"]);
  if (r.code !== 0) throw new Error(`ip link show failed: ${r.stderr.trim()}`);
  const links = JSON.parse(r.stdout || "[]") as { ifname?: unknown }[];
  return new Set(links.flatMap((l) => (typeof l.ifname === "string" ? [l.ifname] : [])));
}

/** The recorded interfaces whose tap is not among `links`. */
export function goneInterfaces(
  records: readonly StoredRecord[],
  links: ReadonlySet<string>,
): GoneInterface[] {
  return records.flatMap((r) =>
    r.interfaces.flatMap((i) =>
      i.dev && !links.has(i.dev)
        ? [{ domainUuid: r.domainUuid, domainName: r.domainName, mac: i.mac, dev: i.dev }]
        : [],
    ),
  );
}

/**
 * Whether a record still has a tap in use once `gone` are taken out: an interface with a present tap, or a
 * refused one whose tap exists (status keeps reporting those).
 */
function keepsSomething(
  r: StoredRecord,
  gone: readonly GoneInterface[],
  links: ReadonlySet<string>,
): boolean {
  const goneMacs = new Set(gone.map((g) => g.mac));
  const present = r.interfaces.some((i) => !goneMacs.has(i.mac) && i.dev !== undefined && links.has(i.dev));
  const refused = (r.refused ?? []).some((f) => f.dev !== undefined && links.has(f.dev));
  return present || refused;
}

/**
 * Prune the records (and IFBs) of interfaces whose tap is gone, through the engine, under its lock. A
 * domain with nothing left is reconciled with nothing desired (its IFBs and record go); a domain with taps
 * left is re-applied from its own record, without the gone interfaces.
 */
export async function pruneGone(
  ctx: EngineContext,
  policy: Policy,
  opts: PruneOptions = {},
): Promise<PruneResult[]> {
  const release = ctx.lockHeld ? () => {} : await acquireLock(ctx.runDir, opts.lockTimeoutMs);
  const held: EngineContext = { ...ctx, lockHeld: true };
  const results: PruneResult[] = [];
  try {
    const records = loadRecords(ctx.runDir).filter((r) => !opts.uuids || opts.uuids.includes(r.domainUuid));
    if (!records.some((r) => r.interfaces.some((i) => i.dev))) return results;
    const links = await linkNames(ctx.runner);
    const gone = goneInterfaces(records, links).filter((g) => !opts.only || opts.only(g));
    for (const r of records) {
      const mine = gone.filter((g) => g.domainUuid === r.domainUuid);
      if (!mine.length) continue;
      const forget = !keepsSomething(r, mine, links);
      const result: PruneResult = {
        domainUuid: r.domainUuid,
        domainName: r.domainName,
        gone: mine.map(({ mac, dev }) => ({ mac, dev })),
        action: forget ? "forgotten" : "reapplied",
        removedIfbs: [],
        sweptIfbs: [],
        ok: false,
      };
      results.push(result);
      try {
        const goneMacs = new Set(mine.map((g) => g.mac));
        const rest = { ...r, interfaces: r.interfaces.filter((i) => !goneMacs.has(i.mac)) };
        const res = await reconcile(held, {
          domains: [],
          // Re-applied from the record: the CLI has no libvirt to ask, and the record is what was in force.
          desired: forget ? [] : desiredFromRecords([rest]),
          policy,
          scope: [r.domainUuid],
          sweep: opts.sweep ?? false,
        });
        for (const o of res.plan.ops) {
          if (o.op !== "ifb-del") continue;
          (o.iface?.startsWith(`${r.domainUuid}/`) ? result.removedIfbs : result.sweptIfbs).push(o.dev);
        }
        result.ok = !res.failure;
        if (res.failure) result.error = res.failure.message;
      } catch (e) {
        result.error = (e as Error).message;
      }
    }
  } finally {
    release();
  }
  for (const p of results) {
    const taps = p.gone.map((g) => `${g.dev} (${g.mac})`).join(", ");
    if (!p.ok) {
      ctx.log.error(`pruning ${p.domainName} (${p.domainUuid}) failed: ${p.error ?? "unknown error"}`);
      continue;
    }
    const removed = [...p.removedIfbs, ...p.sweptIfbs.map((d) => `${d} (orphan)`)];
    const ifbs = removed.length ? `, removed ${removed.join(", ")}` : "";
    ctx.log.info(
      p.action === "forgotten"
        ? `pruned ${p.domainName} (${p.domainUuid}): every tap gone (${taps}); record forgotten${ifbs}`
        : `pruned ${p.domainName} (${p.domainUuid}): tap gone (${taps}); re-applied the rest${ifbs}`,
    );
  }
  return results;
}
