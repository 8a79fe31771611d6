import { VirtqosError } from "../errors.js";
import { checkGroups } from "./check.js";
import { policyFromYaml, readPolicyYaml } from "./parse.js";
import { emptyPolicy, type Policy, type PolicyProblem } from "./types.js";

// The policy file. Structure is checked with a TypeBox schema (schema.ts), values and units as they are read
// (parse.ts), rules between values and between groups by hand (check.ts); every problem is reported with
// file:line:column, the field path and the fix, all at once, and nothing is applied until there are none.

export type { GroupLimit, GroupSpec } from "../admission.js";
export type {
  LeafChoice,
  LogLevel,
  OvsMode,
  Policy,
  PolicyDirection,
  PolicyDomainRule,
  PolicyGroup,
  PolicyGroupMember,
  PolicyInterfaceRule,
  PolicyProblem,
} from "./types.js";
export { emptyPolicy };

export class PolicyError extends VirtqosError {
  constructor(readonly problems: PolicyProblem[]) {
    super("POLICY_INVALID", problems.map(formatProblem).join("\n"), { problems });
  }
}

export function formatProblem(p: PolicyProblem): string {
  return `${p.file}:${p.line}:${p.column}: ${p.field}: ${p.message}; fix: ${p.fix}`;
}

/** Parse and validate policy text. Throws PolicyError listing every problem with its line. */
export function parsePolicy(text: string, file: string): Policy {
  const source = readPolicyYaml(text, file);
  if (source.problems.length) throw new PolicyError(source.problems);
  if (!source.raw) return emptyPolicy(file);
  const policy = policyFromYaml({ ...source, raw: source.raw });
  checkGroups(policy, source.report);
  if (source.problems.length) throw new PolicyError(source.problems);
  return policy;
}
