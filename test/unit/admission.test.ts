import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { admit, type GroupSpec, groupCeil, groupRate } from "../../src/core/admission.js";
import { admitMembers, buildGroupTree } from "../../src/core/group-tree.js";
import { parsePolicy } from "../../src/core/policy.js";
import { THIS_KERNEL } from "../helpers/caps.js";
import { iface, link, links } from "../helpers/plan-fixtures.js";

const M = 1e6;
const bits = (n: number) => n;

describe("admit: guarantees into one group", () => {
  test("claims that fit together are all admitted, in order", () => {
    const v = admit(30 * M, 0, [10 * M, 20 * M], bits);
    assert.deepEqual(v, { admitted: [10 * M, 20 * M], refused: [], totalBitsPerSec: 30 * M });
  });

  test("exactly filling the capacity fits; one bit more does not", () => {
    assert.equal(admit(30 * M, 0, [15 * M, 15 * M], bits).refused.length, 0);
    assert.equal(admit(30 * M, 0, [15 * M, 15 * M + 1], bits).refused.length, 1);
  });

  test("what the group already holds counts first", () => {
    const v = admit(30 * M, 20 * M, [15 * M], bits);
    assert.deepEqual(v.admitted, []);
    assert.deepEqual(v.refused, [{ claim: 15 * M, heldBitsPerSec: 20 * M }]);
    assert.equal(v.totalBitsPerSec, 35 * M);
  });

  test("a refused claim holds nothing: a later, smaller one still fits", () => {
    const v = admit(30 * M, 10 * M, [25 * M, 5 * M, 20 * M], bits);
    assert.deepEqual(v.admitted, [5 * M]);
    assert.deepEqual(v.refused, [
      { claim: 25 * M, heldBitsPerSec: 10 * M },
      { claim: 20 * M, heldBitsPerSec: 15 * M },
    ]);
    assert.equal(v.totalBitsPerSec, 60 * M);
  });

  test("a claim of nothing fits unless the group is already over its capacity", () => {
    assert.equal(admit(30 * M, 30 * M, [0], bits).refused.length, 0);
    assert.equal(admit(30 * M, 31 * M, [0], bits).refused.length, 1);
  });

  test("no capacity (the group does not shape the direction): everything fits", () => {
    const v = admit(undefined, 50 * M, [100 * M, 100 * M], bits);
    assert.deepEqual([v.admitted.length, v.refused.length, v.totalBitsPerSec], [2, 0, 250 * M]);
  });

  test("claims are any objects: their bits come from bitsOf", () => {
    const a = { who: "a", floor: 20 * M };
    const b = { who: "b", floor: 15 * M };
    const v = admit(30 * M, 0, [a, b], (c) => c.floor);
    assert.deepEqual(v.admitted, [a]);
    assert.equal(v.refused[0].claim, b);
  });

  test("no claims: nothing admitted, nothing refused, the total is what was held", () => {
    assert.deepEqual(admit(30 * M, 12 * M, [], bits), { admitted: [], refused: [], totalBitsPerSec: 12 * M });
  });
});

describe("a group's ceiling and rate", () => {
  const g: GroupSpec = {
    name: "web",
    limits: {
      inbound: { rateBitsPerSec: 30 * M, ceilBitsPerSec: 60 * M, floorBitsPerSec: 10 * M },
      outbound: { rateBitsPerSec: 20 * M, ceilBitsPerSec: 20 * M },
    },
  };

  test("ceil is the resolved ceiling; rate is the floor, else the average", () => {
    assert.deepEqual(
      [groupCeil(g, "inbound"), groupRate(g, "inbound"), groupCeil(g, "outbound"), groupRate(g, "outbound")],
      [60 * M, 10 * M, 20 * M, 20 * M],
    );
  });

  test("a direction the group does not shape has neither", () => {
    const none: GroupSpec = { name: "x", limits: {} };
    assert.deepEqual([groupCeil(none, "inbound"), groupRate(none, "inbound")], [undefined, undefined]);
    assert.equal(groupCeil(undefined, "inbound"), undefined);
  });

  test("the parser resolves peak (never below average) and floor into the spec; unlimited shapes nothing", () => {
    const p = parsePolicy(
      "groups:\n  - name: a\n    inbound: { average: 30mbit, peak: 60mbit, floor: 10mbit }\n    outbound: unlimited\n  - name: b\n    inbound: { average: 20mbit }\n",
      "policy.yaml",
    );
    assert.deepEqual(JSON.parse(JSON.stringify(p.groups.map((x) => x.limits))), [
      { inbound: { rateBitsPerSec: 30 * M, ceilBitsPerSec: 60 * M, floorBitsPerSec: 10 * M } },
      { inbound: { rateBitsPerSec: 20 * M, ceilBitsPerSec: 20 * M } },
    ]);
  });
});

describe("the planner takes group specs, without the policy file's shape", () => {
  const specs: GroupSpec[] = [
    { name: "web", limits: { inbound: { rateBitsPerSec: 30 * M, ceilBitsPerSec: 30 * M } } },
  ];
  const member = (n: number, floor: number) =>
    iface({
      key: `u${n}/52:54:00:00:00:0${n}`,
      domainName: `web${n}`,
      domainUuid: `u${n}`,
      mac: `52:54:00:00:00:0${n}`,
      dev: `vnet${n}`,
      group: {
        tree: "web",
        path: ["web"],
        via: "members",
        inbound: { floorBitsPerSec: floor, ceilBitsPerSec: 30 * M },
      },
    });

  test("admitMembers refuses the floor that does not fit, with the numbers", () => {
    const a = admitMembers(
      [member(1, 20 * M), member(2, 15 * M)],
      [],
      links(link("vnet1"), link("vnet2")),
      specs,
      () => true,
    );
    assert.deepEqual([...a.admitted.keys()], ["u1/52:54:00:00:00:01|inbound"]);
    assert.equal(a.problems.length, 1);
    assert.equal(a.problems[0].code, "GROUP_ADMISSION");
    assert.match(a.problems[0].message, /members already hold 20 Mbit\/s of its 30 Mbit\/s/);
  });

  test("buildGroupTree builds the top class from the spec", () => {
    const tree = buildGroupTree(specs[0], specs, [], "inbound", THIS_KERNEL, "auto");
    assert.equal(tree.classes[0].classid, "7651:1");
    assert.equal(tree.classes[0].htb.ceilBytesPerSec, (30 * M) / 8);
  });
});
