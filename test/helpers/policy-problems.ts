// Policy files that must be rejected: the problems parsePolicy reports, checked for what every problem carries.
import assert from "node:assert/strict";
import { formatProblem, PolicyError, type PolicyProblem, parsePolicy } from "../../src/core/policy.js";

/**
 * The problems of a policy text parsePolicy must reject: a POLICY_INVALID PolicyError whose message is its
 * problems, each with the file, a position and a fix.
 */
export function policyProblems(text: string, file = "policy.yaml"): PolicyProblem[] {
  try {
    parsePolicy(text, file);
  } catch (e) {
    assert.ok(e instanceof PolicyError, `expected PolicyError, got ${String(e)}`);
    assert.equal(e.code, "POLICY_INVALID");
    assert.equal(e.message, e.problems.map(formatProblem).join("\n"));
    for (const p of e.problems) {
      assert.equal(p.file, file);
      assert.ok(p.line >= 1 && p.column >= 1, `position ${p.line}:${p.column}`);
      assert.ok(p.fix.length > 0, "every problem has a fix");
    }
    return e.problems;
  }
  assert.fail("expected the policy to be rejected");
}

/** The one problem reported for `field` (asserting there is exactly one). */
export function problemAt(list: PolicyProblem[], field: string): PolicyProblem {
  const found = list.filter((p) => p.field === field);
  assert.equal(found.length, 1, `one problem at ${field}; got ${JSON.stringify(list, null, 1)}`);
  return found[0];
}
