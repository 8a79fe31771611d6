import type { GroupSpec } from "../admission.js";
import type { Diagnostic } from "../errors.js";
import type { Direction, DomainRecord } from "../model.js";
import type { LeafChoice } from "../policy/types.js";
import type { HtbClass, Leaf } from "../recipe.js";
import type { ObservedDevice, ObservedLink } from "../tc/normalise.js";
import type { Tree, TreeFilter } from "../tc/tree.js";

// The planner's data: what observe() read, what plan() is asked for, and the operations it decides. Only
// render() (tc/render.ts) turns operations into tc/ip text.

export interface Observed {
  links: Map<string, ObservedLink>;
  devices: Map<string, ObservedDevice>;
  records: DomainRecord[];
}

export interface PlanOptions {
  leaf: LeafChoice;
  /** Domains (UUIDs) whose state `desired` fully describes; "all" when clearing everything. */
  scope: string[] | "all";
  /** Remove virtqos objects whose owner is gone (IFBs whose tap no longer exists). */
  sweep: boolean;
  /** The groups (trees shared by their members); `policy.groups` is one such list. */
  groups?: readonly GroupSpec[];
}

export type HookFilter =
  | { action: "redirect"; toDev: string }
  | { action: "police"; rateBytesPerSec: number; burstBytes: number };

export type Hook = "ingress" | "egress";

export interface Tagged {
  /** Which interface (domain UUID/MAC) and direction the op serves, for logs and atomic per-interface skips. */
  iface?: string;
  direction?: Direction;
}

export type Op = Tagged &
  (
    | { op: "ifb-add"; dev: string; alias: string }
    | { op: "ifb-del"; dev: string }
    | { op: "link-up"; dev: string }
    | { op: "root-replace"; dev: string; defaultMinor: number }
    | { op: "root-del"; dev: string }
    | { op: "class-replace"; dev: string; parent: string; classid: string; htb: HtbClass }
    | { op: "class-del"; dev: string; classid: string }
    | { op: "leaf-replace"; dev: string; parent: string; handle: string; leaf: Leaf }
    | { op: "hook-add"; dev: string; kind: "clsact" | "ingress" }
    | { op: "hook-del"; dev: string; kind: "clsact" | "ingress" }
    | {
        op: "filter-add" | "filter-replace";
        dev: string;
        hook: Hook;
        prio: number;
        classifier: "u32" | "matchall";
        filter: HookFilter;
      }
    | { op: "filter-del"; dev: string; hook: Hook; prio: number }
    | { op: "tree-filter-add"; dev: string; prio: number; filter: TreeFilter }
    | { op: "tree-filter-del"; dev: string; prio: number; handle: string }
  );

export interface Plan {
  ops: Op[];
  /** Level "error": interfaces not shaped as asked (a GROUP_ADMISSION member is shaped, without its guarantee). */
  problems: Diagnostic[];
  /** Levels "warning" and "info". */
  notes: Diagnostic[];
  /** Records to write (one per domain in scope that still has shaped interfaces) and domains to forget. */
  records: DomainRecord[];
  forget: string[];
}

/** A filter virtqos wants on one of a device's hooks. */
export interface HookWant {
  hook: Hook;
  prio: number;
  filter: HookFilter;
  tag: Tagged;
}

/** What one host device (tap, macvtap) should carry: a tree on its root, filters on its hooks. */
export interface DeviceWant {
  tree?: Tree;
  treeTag?: Tagged;
  filters: HookWant[];
  /** Interface whose problems void every op on this device. */
  owner?: string;
}

/** An IFB virtqos wants, with the tree it carries. */
export interface IfbWant {
  alias: string;
  tree: Tree;
  tag: Tagged;
}

/** Either the ops that bring a device where it should be, or why virtqos must leave it alone. */
export type DiffResult = { ops: Op[] } | { problem: Diagnostic };

export type { Diagnostic } from "../errors.js";
export type { Tree, TreeClass, TreeFilter } from "../tc/tree.js";
