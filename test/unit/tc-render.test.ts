import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { parseDomainXml } from "../../src/core/domain-xml.js";
import { type Op, plan } from "../../src/core/plan/index.js";
import { parsePolicy } from "../../src/core/policy.js";
import { resolveDomain } from "../../src/core/resolve.js";
import { render, splitTcByCreated } from "../../src/core/tc/render.js";
import { THIS_KERNEL } from "../helpers/caps.js";
import { FakeKernel } from "../helpers/fake-kernel.js";

const htb = {
  rateBytesPerSec: 125_000,
  ceilBytesPerSec: 125_000,
  burstBytes: 3028,
  cburstBytes: 3028,
  quantumBytes: 1514,
};

describe("render: the devices each tc line needs", () => {
  test("tcDevs is parallel to tc; a redirect needs the device it sends to as well", () => {
    const ops: Op[] = [
      { op: "ifb-add", dev: "vqi1", alias: "virtqos/1,iface,u,m,tap1" },
      { op: "link-up", dev: "vqi1" },
      { op: "root-replace", dev: "vqi1", defaultMinor: 1 },
      { op: "class-replace", dev: "vqi1", parent: "7651:", classid: "7651:1", htb },
      { op: "hook-add", dev: "tap1", kind: "clsact" },
      {
        op: "filter-add",
        dev: "tap1",
        hook: "ingress",
        prio: 64000,
        classifier: "u32",
        filter: { action: "redirect", toDev: "vqi1" },
      },
      { op: "filter-del", dev: "tap2", hook: "ingress", prio: 64000 },
      { op: "ifb-del", dev: "vqi2" },
    ];
    const r = render(ops);
    assert.equal(r.tcDevs.length, r.tc.length);
    assert.deepEqual(r.tcDevs, [["vqi1"], ["vqi1"], ["tap1"], ["tap1", "vqi1"], ["tap2"]]);
    assert.deepEqual(splitTcByCreated(r, new Set(["vqi1"])), {
      early: [r.tc[2], r.tc[4]],
      late: [r.tc[0], r.tc[1], r.tc[3]],
    });
  });

  test("nothing created: everything is late (there is no ip batch to run alongside)", () => {
    const r = render([{ op: "hook-add", dev: "tap1", kind: "clsact" }]);
    assert.deepEqual(splitTcByCreated(r, new Set()), { early: [], late: r.tc });
  });

  // The split the engine made before, by text: a line needs a created device when it names it.
  const byText = (tc: string[], created: Set<string>) => {
    const needsNew = (line: string) => [...created].some((dev) => line.includes(` ${dev}`));
    return created.size
      ? { early: tc.filter((l) => !needsNew(l)), late: tc.filter(needsNew) }
      : { early: [], late: tc };
  };

  test("the same split as matching device names in the text, on a group's first member", () => {
    const policy = parsePolicy(
      "groups:\n  - name: web\n    inbound: { average: 30mbit }\n    outbound: { average: 30mbit }\n    select: { domains: [web1] }\n",
      "policy.yaml",
    );
    const web =
      parseDomainXml(`<domain type='kvm'><name>web1</name><uuid>6d0e4a6c-5b0f-4c1e-9d7a-1f2e3d4c5b6a</uuid><devices>
      <interface type='bridge'><mac address='52:54:00:00:00:01'/><source bridge='br0'/><target dev='vnet1'/></interface>
    </devices></domain>`);
    const other =
      parseDomainXml(`<domain type='kvm'><name>db1</name><uuid>0f1e2d3c-4b5a-4968-8776-655443322110</uuid><devices>
      <interface type='ethernet'><mac address='52:54:00:00:00:02'/><target dev='tap2'/>
        <bandwidth><inbound average='1250'/><outbound average='1250'/></bandwidth></interface>
    </devices></domain>`);
    const k = new FakeKernel();
    k.addTap("vnet1");
    k.addTap("tap2");
    const desired = [web, other].flatMap((d) => resolveDomain(d, policy).interfaces);
    const p = plan(desired, k.observe(), THIS_KERNEL, {
      leaf: policy.leaf,
      scope: [web.uuid, other.uuid],
      sweep: true,
      groups: policy.groups,
    });
    const created = new Set(p.ops.filter((o) => o.op === "ifb-add").map((o) => o.dev));
    assert.equal(created.size, 3, "two group IFBs and one interface IFB");
    const r = render(p.ops);
    const split = splitTcByCreated(r, created);
    assert.deepEqual(split, byText(r.tc, created));
    assert.ok(split.early.length > 0 && split.late.length > 0);
  });
});
