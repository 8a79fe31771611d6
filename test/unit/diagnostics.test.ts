import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { CommandKilledError, CommandMissingError } from "../../src/adapters/exec.js";
import { BatchError } from "../../src/adapters/kernel.js";
import { LockTimeoutError } from "../../src/adapters/lock.js";
import { ProbeFailedError } from "../../src/adapters/probe.js";
import { RecordVersionError } from "../../src/adapters/state.js";
import type { ReconcileResult } from "../../src/app/engine.js";
import { exitFor, resultJson, summarise } from "../../src/cli/result.js";
import { DomainXmlError } from "../../src/core/domain-xml.js";
import {
  type Diagnostic,
  ERRORS,
  errorCodeOf,
  formatDiagnostic,
  VirtqosError,
  withFix,
} from "../../src/core/errors.js";
import { PolicyError } from "../../src/core/policy.js";
import { render } from "../../src/core/render.js";

describe("error classes", () => {
  test("every error class is a VirtqosError with its catalogue code", () => {
    const problem = { file: "p.yaml", line: 1, column: 1, field: "x", message: "bad", fix: "good" };
    const cases: [Error, string][] = [
      [new PolicyError([problem]), "POLICY_INVALID"],
      [new DomainXmlError("no <name>"), "DOMAIN_XML_INVALID"],
      [new BatchError("tc", 3, "qdisc add ...", "RTNETLINK answers: File exists\n"), "TC_BATCH_FAILED"],
      [new LockTimeoutError("held"), "LOCK_TIMEOUT"],
      [new CommandMissingError("tc is not installed"), "COMMAND_MISSING"],
      [new CommandKilledError("`tc -batch -` was killed by SIGKILL"), "COMMAND_KILLED"],
      [new ProbeFailedError("busy"), "PROBE_FAILED"],
      [new RecordVersionError("/run/virtqos/domains/x.json", 9), "RECORD_VERSION"],
    ];
    for (const [e, code] of cases) {
      assert.ok(e instanceof VirtqosError, `${e.constructor.name} extends VirtqosError`);
      assert.ok(e instanceof Error);
      assert.equal((e as VirtqosError).code, code, e.constructor.name);
      assert.equal(errorCodeOf(e), code);
      assert.ok(ERRORS[(e as VirtqosError).code], code);
    }
  });

  test("fields and messages are as before; structured detail where there is some", () => {
    const be = new BatchError("tc", 3, "qdisc add dev x root", "RTNETLINK answers: File exists\nmore");
    assert.equal(
      be.message,
      "tc -batch failed at line 3: qdisc add dev x root: RTNETLINK answers: File exists",
    );
    assert.deepEqual([be.tool, be.lineNumber, be.line], ["tc", 3, "qdisc add dev x root"]);
    assert.equal(be.detail, "RTNETLINK answers: File exists\nmore");
    const rv = new RecordVersionError("f.json", 9);
    assert.deepEqual([rv.file, rv.version, rv.detail], ["f.json", 9, { file: "f.json", version: 9 }]);
    const problem = { file: "p.yaml", line: 2, column: 3, field: "a", message: "m", fix: "f" };
    const pe = new PolicyError([problem]);
    assert.equal(pe.message, "p.yaml:2:3: a: m; fix: f");
    assert.deepEqual(pe.problems, [problem]);
    assert.equal(new DomainXmlError("x").message, "x");
  });

  test("errorCodeOf: only catalogue codes (not Node's errno codes, not made-up ones)", () => {
    const errno = Object.assign(new Error("ENOENT: no such file"), { code: "ENOENT" });
    assert.equal(errorCodeOf(errno), undefined);
    assert.equal(errorCodeOf({ code: "PARTIAL" }), undefined);
    assert.equal(errorCodeOf({ code: "TX_OPEN" }), "TX_OPEN", "by shape: a class from another bundle");
    assert.equal(errorCodeOf(undefined), undefined);
    assert.equal(errorCodeOf("TX_OPEN"), undefined);
  });
});

describe("diagnostics in output: the fix comes from the catalogue", () => {
  const problem: Diagnostic = {
    code: "INGRESS_FILTER_FOREIGN",
    level: "error",
    iface: "u/52:54:00:00:00:01",
    dev: "vnet1",
    direction: "outbound",
    message:
      "vnet1: a u32 police filter at ingress prio 49152 runs first; to remove it: tc filter del dev vnet1 ingress prio 49152",
  };
  const warning: Diagnostic = { code: "INPUT_WARNING", level: "warning", message: "peak below average" };
  const info: Diagnostic = {
    code: "DEVICE_ABSENT",
    level: "info",
    iface: "u/m",
    message: "vnet9 does not exist",
  };
  const result = (problems: Diagnostic[], notes: Diagnostic[]): ReconcileResult => ({
    desired: [],
    applied: false,
    rendered: render([]),
    plan: { ops: [], problems, notes, records: [], forget: [] },
  });

  test("text: warnings and notes as before, errors with code, message and the catalogue's fix", () => {
    const text = summarise(result([problem], [warning, info]), true).split("\n");
    assert.deepEqual(text.slice(0, 3), [
      "warning: peak below average",
      "info: vnet9 does not exist",
      `error INGRESS_FILTER_FOREIGN: ${problem.message}; fix: ${ERRORS.INGRESS_FILTER_FOREIGN.fix}`,
    ]);
    assert.equal(
      formatDiagnostic(problem),
      `INGRESS_FILTER_FOREIGN: ${problem.message}; fix: ${ERRORS.INGRESS_FILTER_FOREIGN.fix}`,
    );
  });

  test("--json: every diagnostic with its fix; a failure with its code and fix", () => {
    const r = result([problem], [warning]);
    r.failure = { code: "TC_BATCH_FAILED", message: "tc -batch failed", restored: true };
    const json = resultJson(r);
    assert.deepEqual(json.problems, [{ ...problem, fix: ERRORS.INGRESS_FILTER_FOREIGN.fix }]);
    assert.deepEqual(json.notes, [withFix(warning)]);
    assert.equal(json.notes[0].fix, ERRORS.INPUT_WARNING.fix);
    assert.equal(json.failure?.fix, ERRORS.TC_BATCH_FAILED.fix);
    assert.ok(!("warnings" in json), "the warnings are notes now");
  });

  test("exit status: errors make it partial, warnings and notes do not", () => {
    assert.equal(exitFor(result([], [warning, info])), 0);
    assert.equal(exitFor(result([problem], [])), 3);
  });
});
