import type { Policy } from "./policy.js";

// Kept apart from the parser so the hook can start without loading YAML and schema code at all.

/** The policy used when no file exists: nothing limited unless XML says so. */
export function emptyPolicy(file = "(none)"): Policy {
  return {
    file,
    logLevel: "info",
    strict: false,
    upload: "shape",
    leaf: "auto",
    defaults: {},
    domains: [],
    groups: [],
  };
}
