import { readFileSync } from "node:fs";
import { emptyPolicy, type Policy, parsePolicy } from "../core/policy.js";

export const DEFAULT_POLICY_PATH = "/etc/virtqos/policy.yaml";

export function policyPath(explicit?: string): string {
  return explicit ?? process.env.VIRTQOS_CONFIG ?? DEFAULT_POLICY_PATH;
}

/** A missing policy file is an empty policy (limits come from the XML alone); an unreadable one is an error. */
export function loadPolicy(file: string): Policy {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return emptyPolicy(file);
    throw e;
  }
  return parsePolicy(text, file);
}

/** Whether an invalid policy file at least says `strict: true`: the hook must honour that even then. */
export function policyAsksStrict(file: string): boolean {
  try {
    return /^strict:\s*true\s*(#.*)?$/m.test(readFileSync(file, "utf8"));
  } catch {
    return false;
  }
}
