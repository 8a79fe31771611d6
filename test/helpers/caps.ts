// Capability fixtures for the planner: what probe.ts would report on a few kinds of host.
import type { Capabilities } from "../../src/core/recipe.js";

/** The development kernel (6.18, built-in only): no fq_codel/sfq, no police, no matchall. */
export const THIS_KERNEL: Capabilities = {
  iproute2: "6.1.0",
  qdiscs: ["htb", "tbf", "bfifo", "clsact", "ingress"],
  classifiers: ["u32"],
  actions: ["mirred"],
  ifb: true,
};

/** A distribution kernel with the usual modules. */
export const PRODUCTION: Capabilities = {
  iproute2: "6.1.0",
  qdiscs: ["htb", "tbf", "bfifo", "clsact", "ingress", "fq_codel", "sfq"],
  classifiers: ["u32", "matchall", "fw", "flower", "basic"],
  actions: ["mirred", "police", "skbedit", "gact"],
  ifb: true,
};

/** THIS_KERNEL without IFB devices. */
export const NO_IFB: Capabilities = { ...THIS_KERNEL, ifb: false };

/** THIS_KERNEL with the old `ingress` qdisc only, no clsact. */
export const NO_CLSACT: Capabilities = {
  ...THIS_KERNEL,
  qdiscs: THIS_KERNEL.qdiscs.filter((q) => q !== "clsact"),
};
