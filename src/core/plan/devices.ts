import { parseIfbAlias } from "../names.js";
import type { Capabilities } from "../recipe.js";
import type { ObservedDevice } from "../tc/normalise.js";
import { diffHooks } from "./hooks.js";
import { findRecord } from "./records.js";
import { diffTree } from "./tree.js";
import type { DeviceWant, Diagnostic, IfbWant, Observed, Op } from "./types.js";

// Step 3: the diffs, device by device. IFBs first (created, brought up, their trees built), then the host
// devices (their trees and hook filters), so a redirect is only added once the tree it feeds exists. A device
// whose diff finds a problem fails its interface: `failed` collects those, and every op of a failed interface
// is dropped at the end (plan/index.ts), so an interface is changed whole or not at all.

/** Interfaces (domain UUID/MAC; undefined for a group tree's ops) whose ops must not run. Grows as diffs fail. */
export type Failed = Set<string | undefined>;

export const emptyDevice = (dev: string): ObservedDevice => ({ dev, qdiscs: [], classes: [], filters: [] });

export function diffIfbs(
  ifbs: Map<string, IfbWant>,
  observed: Observed,
  failed: Failed,
): { pre: Op[]; main: Op[]; problems: Diagnostic[] } {
  const out = { pre: [] as Op[], main: [] as Op[], problems: [] as Diagnostic[] };
  for (const [name, w] of ifbs) {
    if (failed.has(w.tag.iface)) continue;
    const link = observed.links.get(name);
    if (link && parseIfbAlias(link.alias) === undefined) {
      out.problems.push({
        code: "IFB_NAME_TAKEN",
        level: "error",
        iface: w.tag.iface,
        dev: name,
        message: `device ${name} exists but was not created by virtqos; virtqos derives this name from the domain UUID and MAC`,
      });
      failed.add(w.tag.iface);
      continue;
    }
    if (!link) out.pre.push({ op: "ifb-add", dev: name, alias: w.alias, ...w.tag });
    if (!link?.up) out.pre.push({ op: "link-up", dev: name, ...w.tag });
    const res = diffTree(name, w.tree, observed.devices.get(name) ?? emptyDevice(name), w.tag);
    if ("problem" in res) {
      out.problems.push(res.problem);
      failed.add(w.tag.iface);
    } else out.main.push(...res.ops);
  }
  return out;
}

export function diffDevices(
  devs: Iterable<string>,
  wants: Map<string, DeviceWant>,
  observed: Observed,
  caps: Capabilities,
  failed: Failed,
): { main: Op[]; problems: Diagnostic[]; createdHookOn: Set<string> } {
  const out = { main: [] as Op[], problems: [] as Diagnostic[], createdHookOn: new Set<string>() };
  for (const dev of devs) {
    const want = wants.get(dev) ?? { filters: [] };
    if (want.owner && failed.has(want.owner)) continue;
    const obs = observed.devices.get(dev) ?? emptyDevice(dev);
    const record = findRecord(observed.records, dev);
    const tree = diffTree(dev, want.tree, obs, want.treeTag ?? {});
    const hooks = diffHooks(dev, want.filters, obs, caps, record?.createdHook ?? false);
    const problem = "problem" in tree ? tree.problem : "problem" in hooks ? hooks.problem : undefined;
    if (problem) {
      out.problems.push({ ...problem, iface: want.owner });
      if (want.owner) failed.add(want.owner);
      continue;
    }
    if ("ops" in tree && "ops" in hooks) {
      out.main.push(...tree.ops, ...hooks.before, ...hooks.ops, ...hooks.after);
      if (hooks.created) out.createdHookOn.add(dev);
    }
  }
  return out;
}
