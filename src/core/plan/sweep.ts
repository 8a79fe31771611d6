import { parseIfbAlias } from "../names.js";
import { isOurPrio, isOurRoot } from "../tc/handles.js";
import type { DeviceWant, IfbWant, Observed, Op, PlanOptions } from "./types.js";

// Step 4: what virtqos left behind and nobody wants any more. The devices a plan must look at beyond those
// it shapes now, the IFBs to delete (a domain in scope gave them up, or their tap is gone), and redirects that
// would point at a deleted IFB.

type InScope = (uuid: string | undefined) => boolean;

/** Devices to diff: everything wanted, plus what virtqos left earlier for the domains in scope. */
export function devicesToVisit(
  wants: Map<string, DeviceWant>,
  observed: Observed,
  scope: PlanOptions["scope"],
  inScope: InScope,
): Set<string> {
  const devs = new Set<string>(wants.keys());
  for (const r of observed.records) {
    if (!inScope(r.domainUuid)) continue;
    for (const i of r.interfaces) {
      const link = i.dev ? observed.links.get(i.dev) : undefined;
      // Tap names are reused (vnet3 today is another guest's tomorrow): trust a record only for the same ifindex.
      if (i.dev && link && (i.ifindex === undefined || i.ifindex === link.ifindex)) devs.add(i.dev);
    }
  }
  if (scope === "all") {
    for (const [dev, o] of observed.devices) {
      if (o.qdiscs.some(isOurRoot) || o.filters.some((f) => f.hook !== "class" && isOurPrio(f.prio)))
        devs.add(dev);
    }
  }
  return devs;
}

/** IFBs that nobody wants any more: those of domains in scope, and (sweep) those whose tap is gone. */
export function unwantedIfbs(
  observed: Observed,
  wanted: Map<string, IfbWant>,
  keep: Set<string>,
  sweep: boolean,
  inScope: InScope,
): Op[] {
  const ops: Op[] = [];
  for (const link of observed.links.values()) {
    const alias = parseIfbAlias(link.alias);
    if (!alias || wanted.has(link.name) || keep.has(link.name)) continue;
    if (alias.role === "group") {
      // No member left anywhere: the group's tree goes with its last member.
      ops.push({ op: "ifb-del", dev: link.name });
      continue;
    }
    const orphan = sweep && (!alias.dev || !observed.links.has(alias.dev));
    if (inScope(alias.domainUuid) || orphan) {
      ops.push({ op: "ifb-del", dev: link.name, iface: `${alias.domainUuid}/${alias.mac}` });
    }
  }
  return ops;
}

/**
 * A redirect still pointing at an IFB about to go (its owner's record may be lost, or its tap reused) must go
 * first: the kernel drops everything a redirect to a missing device catches. `planned`: the ops so far, whose
 * filter changes already cover a redirect.
 */
export function danglingRedirects(observed: Observed, removed: Op[], planned: Op[]): Op[] {
  const removedIfbs = new Set(removed.filter((o) => o.op === "ifb-del").map((o) => o.dev));
  const handled = new Set(
    planned.flatMap((o) =>
      o.op === "filter-del" || o.op === "filter-add" ? [`${o.dev}/${o.hook}/${o.prio}`] : [],
    ),
  );
  const ops: Op[] = [];
  for (const [dev, o] of observed.devices) {
    for (const f of o.filters) {
      if (f.hook === "class" || !isOurPrio(f.prio) || !f.redirectDev || !removedIfbs.has(f.redirectDev))
        continue;
      const id = `${dev}/${f.hook}/${f.prio}`;
      if (handled.has(id) || !observed.links.has(dev)) continue;
      handled.add(id);
      ops.push({ op: "filter-del", dev, hook: f.hook, prio: f.prio });
    }
  }
  return ops;
}
