import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { formatIfbAlias } from "../../src/core/names.js";
import { danglingRedirects, devicesToVisit, unwantedIfbs } from "../../src/core/plan/sweep.js";
import type { IfbWant, Observed, Op } from "../../src/core/plan/types.js";
import { clsact, device, hookFilter, link, observed } from "../helpers/plan-fixtures.js";

const A = "aaaaaaaa-0000-4000-8000-000000000001";
const B = "bbbbbbbb-0000-4000-8000-000000000002";
const inScope = (uuid: string | undefined) => uuid === A;
const record = (uuid: string, dev: string, ifindex?: number) => ({
  domainName: uuid.slice(0, 1),
  domainUuid: uuid,
  interfaces: [{ mac: "52:54:00:00:00:01", dev, ifindex, type: "bridge" }],
});
const ifaceIfb = (name: string, uuid: string, dev: string) =>
  link(name, {
    kind: "ifb",
    alias: formatIfbAlias({ role: "iface", domainUuid: uuid, mac: "52:54:00:00:00:01", dev }),
  });

describe("devicesToVisit", () => {
  test("wanted devices, recorded devices of domains in scope (same ifindex only), everything of ours for `all`", () => {
    const o: Observed = {
      ...observed([
        device("vnet1"),
        device("vnet2"),
        device("vnet3"),
        device("vnet4", { qdiscs: [{ kind: "htb", handle: "7651:", parent: "root", options: {} }] }),
      ]),
      records: [record(A, "vnet2", 15), record(A, "vnet3", 99), record(B, "vnet1")],
    };
    const wants = new Map([["vnet1", { filters: [] }]]);
    assert.deepEqual(
      [...devicesToVisit(wants, o, [A], inScope)],
      ["vnet1", "vnet2"],
      "vnet3 is another tap now",
    );
    assert.deepEqual([...devicesToVisit(new Map(), o, "all", () => true)].sort(), [
      "vnet1",
      "vnet2",
      "vnet4",
    ]);
  });
});

describe("unwantedIfbs", () => {
  const group = link("vqdgroup", {
    kind: "ifb",
    alias: formatIfbAlias({ role: "group", group: "g", direction: "inbound" }),
  });
  const o: Observed = {
    ...observed(
      [device("vnet1")],
      [
        ifaceIfb("vqimine", A, "vnet1"),
        ifaceIfb("vqiorphan", B, "vnetgone"),
        ifaceIfb("vqiother", B, "vnet1"),
        group,
        link("vqforeign", { kind: "ifb", alias: "someone" }),
      ],
    ),
  };
  test("a group IFB nobody wants, IFBs of domains in scope, and (sweep) IFBs whose tap is gone", () => {
    const names = (ops: Op[]) => ops.map((x) => x.dev);
    assert.deepEqual(names(unwantedIfbs(o, new Map(), new Set(), true, inScope)), [
      "vqimine",
      "vqiorphan",
      "vqdgroup",
    ]);
    assert.deepEqual(names(unwantedIfbs(o, new Map(), new Set(), false, inScope)), ["vqimine", "vqdgroup"]);
    const wanted = new Map<string, IfbWant>([
      ["vqimine", { alias: "", tree: { defaultMinor: 1, classes: [] }, tag: {} }],
    ]);
    assert.deepEqual(names(unwantedIfbs(o, wanted, new Set(["vqdgroup"]), false, inScope)), []);
  });
});

describe("danglingRedirects", () => {
  test("a redirect into an IFB about to go is deleted first, unless the plan already changes that filter", () => {
    const o = observed([
      device("vnet1", { qdiscs: [clsact], filters: [hookFilter({ redirectDev: "vqigone" })] }),
      device("vnet2", { qdiscs: [clsact], filters: [hookFilter({ redirectDev: "vqigone" })] }),
      device("vnet3", { qdiscs: [clsact], filters: [hookFilter({ prio: 10, redirectDev: "vqigone" })] }),
    ]);
    const removed: Op[] = [{ op: "ifb-del", dev: "vqigone" }];
    const planned: Op[] = [{ op: "filter-del", dev: "vnet2", hook: "ingress", prio: 64000 }];
    assert.deepEqual(danglingRedirects(o, removed, planned), [
      { op: "filter-del", dev: "vnet1", hook: "ingress", prio: 64000 },
    ]);
  });
});
