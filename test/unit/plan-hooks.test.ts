import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { diffHooks } from "../../src/core/plan/hooks.js";
import type { HookWant } from "../../src/core/plan/types.js";
import { NO_CLSACT, PRODUCTION, THIS_KERNEL } from "../helpers/caps.js";
import { clsact, device, hookFilter } from "../helpers/plan-fixtures.js";

const redirect = (hook: "ingress" | "egress", toDev: string): HookWant => ({
  hook,
  prio: hook === "ingress" ? 64000 : 64001,
  filter: { action: "redirect", toDev },
  tag: { iface: "u/m" },
});
const ops = (r: ReturnType<typeof diffHooks>) => {
  assert.ok("ops" in r, JSON.stringify(r));
  return [...r.before, ...r.ops, ...r.after].map((o) =>
    `${o.op} ${"hook" in o ? `${o.hook} ${o.prio}` : ""}`.trim(),
  );
};

describe("diffHooks", () => {
  test("no hook qdisc yet: clsact added (and remembered as ours), then the filters", () => {
    const r = diffHooks(
      "vnet1",
      [redirect("egress", "vqd"), redirect("ingress", "vqu")],
      device("vnet1"),
      THIS_KERNEL,
      false,
    );
    assert.deepEqual(ops(r), ["hook-add", "filter-add egress 64001", "filter-add ingress 64000"]);
    assert.ok("created" in r && r.created);
  });

  test("a kernel without clsact: an ingress qdisc for ingress redirects; egress ones are refused", () => {
    assert.deepEqual(
      ops(diffHooks("vnet1", [redirect("ingress", "vqu")], device("vnet1"), NO_CLSACT, false)),
      ["hook-add", "filter-add ingress 64000"],
    );
    const r = diffHooks("vnet1", [redirect("egress", "vqd")], device("vnet1"), NO_CLSACT, false);
    assert.ok("problem" in r && r.problem.code === "CLSACT_UNAVAILABLE");
  });

  test("someone's `ingress` qdisc where egress is needed: refused, with the command that removes it", () => {
    const ingress = { kind: "ingress", handle: "ffff:", parent: "ffff:fff1", options: {} };
    const r = diffHooks(
      "vnet1",
      [redirect("egress", "vqd")],
      device("vnet1", { qdiscs: [ingress] }),
      THIS_KERNEL,
      false,
    );
    assert.ok("problem" in r);
    assert.equal(r.problem.code, "INGRESS_QDISC_FOREIGN");
    assert.match(r.problem.message, /tc qdisc del dev vnet1 ingress/);
  });

  test("a foreign filter the kernel runs first (libvirt's police at 49152) refuses the interface", () => {
    const libvirt = hookFilter({ prio: 49152, police: { rateBitsPerSec: 8e6, burstBytes: 1e6 } });
    const obs = device("vnet1", { qdiscs: [clsact], filters: [libvirt] });
    const r = diffHooks("vnet1", [redirect("ingress", "vqu")], obs, THIS_KERNEL, false);
    assert.ok("problem" in r);
    assert.equal(r.problem.code, "INGRESS_FILTER_FOREIGN");
    assert.match(r.problem.message, /police filter \(rate 8 Mbit\/s, libvirt's <bandwidth>/);
    assert.match(r.problem.message, /tc filter del dev vnet1 ingress prio 49152/);
    // Not when restoring what was there, and not for a filter that runs after virtqos's.
    assert.ok("ops" in diffHooks("vnet1", [redirect("ingress", "vqu")], obs, THIS_KERNEL, false, false));
    const later = device("vnet1", {
      qdiscs: [clsact],
      filters: [hookFilter({ prio: 65000, redirectDev: "x" })],
    });
    assert.ok("ops" in diffHooks("vnet1", [redirect("ingress", "vqu")], later, THIS_KERNEL, false));
  });

  test("a changed u32 filter is deleted by priority and added again; matchall is replaced in place", () => {
    const old = device("vnet1", { qdiscs: [clsact], filters: [hookFilter({ redirectDev: "old" })] });
    assert.deepEqual(ops(diffHooks("vnet1", [redirect("ingress", "new")], old, THIS_KERNEL, false)), [
      "filter-del ingress 64000",
      "filter-add ingress 64000",
    ]);
    const matchall = device("vnet1", {
      qdiscs: [clsact],
      filters: [hookFilter({ kind: "matchall", handle: "1", redirectDev: "old" })],
    });
    assert.deepEqual(ops(diffHooks("vnet1", [redirect("ingress", "new")], matchall, PRODUCTION, false)), [
      "filter-replace ingress 64000",
    ]);
    const same = device("vnet1", { qdiscs: [clsact], filters: [hookFilter({ redirectDev: "new" })] });
    assert.deepEqual(ops(diffHooks("vnet1", [redirect("ingress", "new")], same, THIS_KERNEL, false)), []);
  });

  test("nothing wanted: virtqos's filters go; the hook qdisc only if virtqos added it and nothing else is on it", () => {
    const ours = hookFilter({ redirectDev: "vqu" });
    const mine = device("vnet1", { qdiscs: [clsact], filters: [ours] });
    assert.deepEqual(ops(diffHooks("vnet1", [], mine, THIS_KERNEL, true)), [
      "filter-del ingress 64000",
      "hook-del",
    ]);
    assert.deepEqual(ops(diffHooks("vnet1", [], mine, THIS_KERNEL, false)), ["filter-del ingress 64000"]);
    const shared = device("vnet1", {
      qdiscs: [clsact],
      filters: [ours, hookFilter({ prio: 10, kind: "flower" })],
    });
    assert.deepEqual(ops(diffHooks("vnet1", [], shared, THIS_KERNEL, true)), ["filter-del ingress 64000"]);
  });
});
