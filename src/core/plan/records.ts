import { type DomainRecord, type RecordInterface, swapsHooks } from "../model.js";
import { interfaceIfbName } from "../names.js";
import type { Failed } from "./devices.js";
import type { Diagnostic, PlanOptions } from "./types.js";
import { hookFor } from "./wants.js";

// Step 5: the state records. What each domain in scope has in force after this plan, which hook qdiscs
// virtqos created (so a later cleanup removes only those), and which interfaces it was asked for and refused
// (kept, so `virtqos status` keeps reporting them instead of forgetting them).
// version, generation and appliedBy are stamped by adapters/state.ts on write: they need a clock and the file.

/**
 * The interface's own IFB, where a record says it has one: a direction with its own limit on the tap's
 * ingress hook, shaped (not policed). Derived, not stored: the name follows from domain UUID + MAC, and the
 * side from the interface type (wants.ts takes the same decisions).
 */
export function recordIfb(domainUuid: string, i: RecordInterface): string | undefined {
  const onIfb = (["inbound", "outbound"] as const).some((direction) => {
    const limit = i[direction];
    if (!limit || hookFor(direction, swapsHooks(i.type)) === "root") return false;
    return !(limit.mode === "police" && direction === "outbound");
  });
  return onIfb ? interfaceIfbName(domainUuid, i.mac) : undefined;
}

export function findRecord(records: DomainRecord[], dev: string) {
  for (const r of records) for (const i of r.interfaces) if (i.dev === dev) return i;
  return undefined;
}

/** Remember which hook qdiscs virtqos added: those it adds now, and those it had added before. */
export function markCreatedHooks(
  records: Map<string, DomainRecord>,
  createdNow: Set<string>,
  previous: DomainRecord[],
): void {
  for (const r of records.values())
    for (const i of r.interfaces) if (i.dev && createdNow.has(i.dev)) i.createdHook = true;
  for (const r of records.values()) {
    for (const i of r.interfaces) {
      if (i.dev && !i.createdHook) i.createdHook = findRecord(previous, i.dev)?.createdHook;
    }
  }
}

/**
 * Records to write (domains that still have interfaces to report) and domains to forget. An interface whose
 * ops were dropped is moved to `refused`, with the problem that stopped it.
 */
export function finishRecords(
  records: Map<string, DomainRecord>,
  previous: DomainRecord[],
  scope: PlanOptions["scope"],
  problems: Diagnostic[],
  failed: Failed,
): { keep: DomainRecord[]; forget: string[] } {
  const scopeUuids = scope === "all" ? previous.map((r) => r.domainUuid) : scope;
  const keep = [...records.values()].filter((r) => r.interfaces.length > 0);
  const forget = scopeUuids.filter((u) => !keep.some((r) => r.domainUuid === u));
  for (const r of keep) {
    const refused = (i: RecordInterface) => failed.has(`${r.domainUuid}/${i.mac}`) && !i.notEnforceable;
    const refusals = r.interfaces.filter(refused).map((i) => {
      const problem = problems.find((x) => x.iface === `${r.domainUuid}/${i.mac}`);
      return {
        mac: i.mac,
        dev: i.dev,
        code: problem?.code ?? "INTERNAL",
        message: problem?.message ?? "not shaped",
        inbound: i.inbound,
        outbound: i.outbound,
      };
    });
    r.interfaces = r.interfaces.filter((i) => !refused(i));
    if (refusals.length) r.refused = refusals;
  }
  return { keep, forget };
}
