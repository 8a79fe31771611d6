import { readFileSync } from "node:fs";
import { emptyPolicy, type Policy, parsePolicy } from "../core/policy.js";

/** The CLI's policy reader: a missing file is an empty policy, an invalid one throws PolicyError. */
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
