import { admitMembers } from "../group-tree.js";
import type { DesiredInterface } from "../model.js";
import type { Capabilities } from "../recipe.js";
import { diffDevices, diffIfbs, type Failed } from "./devices.js";
import { groupTreeWants } from "./group-trees.js";
import { finishRecords, markCreatedHooks } from "./records.js";
import { danglingRedirects, devicesToVisit, unwantedIfbs } from "./sweep.js";
import type { Observed, Op, Plan, PlanOptions } from "./types.js";
import { interfaceWants } from "./wants.js";

// plan(desired, observed, capabilities) -> operations. Pure and synchronous: everything it needs was read by
// observe() before, and everything it decides is data that render() turns into tc/ip batch lines.
//
// The steps, one file each: who is admitted to which group tree (group-tree.ts), what each interface wants
// (wants.ts), the group trees (group-trees.ts), the diff of each IFB and host device (devices.ts, with
// tree.ts and hooks.ts), what is left behind (sweep.ts), the state records (records.ts). restore.ts plans the
// way back to an earlier state.

export function plan(
  desired: DesiredInterface[],
  observed: Observed,
  caps: Capabilities,
  options: PlanOptions,
): Plan {
  const inScope = (uuid: string | undefined) =>
    options.scope === "all" || (uuid !== undefined && options.scope.includes(uuid));
  const groups = options.groups ?? [];
  const admission = admitMembers(desired, observed.records, observed.links, groups, (u) => inScope(u));
  const ifaces = interfaceWants(desired, observed.links, admission.admitted, caps, options.leaf);
  const trees = groupTreeWants(admission, observed.links, groups, caps, options.leaf);
  const problems = [...admission.problems, ...ifaces.problems];
  const notes = [...ifaces.notes, ...trees.notes];
  const ifbs = new Map([...ifaces.ifbs, ...trees.ifbs]);
  const devs = devicesToVisit(ifaces.devices, observed, options.scope, inScope);

  // A member refused by admission is still shaped (on its own): only other problems void an interface.
  const failed: Failed = new Set(problems.filter((p) => p.code !== "GROUP_ADMISSION").map((p) => p.iface));
  const ifbDiff = diffIfbs(ifbs, observed, failed);
  const deviceDiff = diffDevices(devs, ifaces.devices, observed, caps, failed);
  problems.push(...ifbDiff.problems, ...deviceDiff.problems);
  markCreatedHooks(ifaces.records, deviceDiff.createdHookOn, observed.records);

  const pre = ifbDiff.pre;
  const main = [...ifbDiff.main, ...deviceDiff.main];
  const post = unwantedIfbs(observed, ifbs, trees.keep, options.sweep, inScope);
  main.push(...danglingRedirects(observed, post, [...main, ...pre]));

  const voided = (op: Op) => op.iface !== undefined && failed.has(op.iface);
  const { keep, forget } = finishRecords(ifaces.records, observed.records, options.scope, problems, failed);
  return {
    ops: [...pre, ...main, ...post].filter((op) => !voided(op)),
    problems,
    notes,
    records: keep,
    forget,
  };
}

// Where snapshot.ts still imports it from.
export { isOurRoot } from "../tc/handles.js";
export { recordIfb } from "./records.js";
export { planRestore, treeFromObserved } from "./restore.js";
export type * from "./types.js";
export { hookFor } from "./wants.js";
