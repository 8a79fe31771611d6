import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { Diagnostic } from "../../src/core/errors.js";
import type { DomainRecord } from "../../src/core/model.js";
import { finishRecords, markCreatedHooks } from "../../src/core/plan/records.js";
import { limit } from "../helpers/plan-fixtures.js";

const A = "aaaaaaaa-0000-4000-8000-000000000001";
const B = "bbbbbbbb-0000-4000-8000-000000000002";
const rec = (uuid: string, macs: string[], extra: object = {}): DomainRecord => ({
  domainName: uuid.slice(0, 1),
  domainUuid: uuid,
  interfaces: macs.map((mac, i) => ({ mac, dev: `vnet${i}`, type: "bridge", ...extra })),
});

describe("markCreatedHooks", () => {
  test("hook qdiscs added now, and those added before, stay virtqos's to remove", () => {
    const records = new Map([[A, rec(A, ["m0", "m1", "m2"])]]);
    markCreatedHooks(records, new Set(["vnet0"]), [rec(B, ["x", "y"], { createdHook: true })]);
    assert.deepEqual(
      records.get(A)?.interfaces.map((i) => i.createdHook),
      [true, true, undefined],
    );
  });
});

describe("finishRecords", () => {
  test("refused interfaces move to `refused` with their problem; empty domains in scope are forgotten", () => {
    const records = new Map([
      [A, rec(A, ["m0", "m1"], { inbound: limit(10) })],
      [B, rec(B, [])],
    ]);
    const problems: Diagnostic[] = [
      { code: "ROOT_QDISC_FOREIGN", level: "error", iface: `${A}/m1`, message: "foreign root" },
    ];
    const { keep, forget } = finishRecords(records, [], [A, B], problems, new Set([`${A}/m1`]));
    assert.deepEqual(forget, [B]);
    assert.equal(keep.length, 1);
    assert.deepEqual(
      keep[0].interfaces.map((i) => i.mac),
      ["m0"],
    );
    assert.deepEqual(
      keep[0].refused?.map((r) => [r.mac, r.code, r.message, r.inbound?.rateBitsPerSec]),
      [["m1", "ROOT_QDISC_FOREIGN", "foreign root", 10e6]],
    );
  });

  test("clearing everything forgets every recorded domain without interfaces", () => {
    const { keep, forget } = finishRecords(new Map(), [rec(A, ["m0"]), rec(B, ["m0"])], "all", [], new Set());
    assert.deepEqual([keep, forget], [[], [A, B]]);
  });
});
