import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { Admission, TreeMember } from "../../src/core/group-tree.js";
import { formatIfbAlias, groupIfbName } from "../../src/core/names.js";
import { groupTreeWants } from "../../src/core/plan/group-trees.js";
import { parsePolicy } from "../../src/core/policy.js";
import { THIS_KERNEL } from "../helpers/caps.js";
import { link, links } from "../helpers/plan-fixtures.js";

const POLICY = parsePolicy(
  "groups:\n  - name: web\n    inbound: { average: 30mbit }\n    outbound: { average: 30mbit }\n    select: { domains: [web*] }\n",
  "policy.yaml",
);
const member = (minor: number, mac: string): TreeMember => ({
  key: `uuid/${mac}`,
  mac,
  domainName: "web1",
  path: ["web"],
  limit: { floorBitsPerSec: 10e6, ceilBitsPerSec: 30e6, minor },
});
const admission = (extra: Partial<Admission> = {}): Admission => ({
  members: new Map(),
  admitted: new Map(),
  problems: [],
  frozen: new Set(),
  ...extra,
});
const DOWN = groupIfbName("web", "inbound");
const UP = groupIfbName("web", "outbound");

describe("groupTreeWants", () => {
  test("a tree with members: its IFB, alias and whole tree (classes, filters) per direction", () => {
    const a = admission({ members: new Map([["web|inbound", [member(0x1a2, "52:54:00:00:00:01")]]]) });
    const w = groupTreeWants(a, links(), POLICY.groups, THIS_KERNEL, "auto");
    assert.deepEqual([...w.ifbs.keys()], [DOWN]);
    const ifb = w.ifbs.get(DOWN);
    assert.equal(ifb?.alias, "virtqos/1,group,web,inbound");
    assert.deepEqual(ifb?.tag, {});
    assert.deepEqual(
      ifb?.tree.filters?.map((f) => f.kind),
      ["hash-table", "hash-link", "member"],
    );
    assert.ok(ifb?.tree.classes.some((c) => c.classid === "7651:1a2"));
    assert.deepEqual([w.keep.size, w.notes], [0, []]);
  });

  test("a group IFB in the kernel with no member left is not wanted (the sweep removes it)", () => {
    const w = groupTreeWants(
      admission(),
      links(link(UP, { alias: formatIfbAlias({ role: "group", group: "web", direction: "outbound" }) })),
      POLICY.groups,
      THIS_KERNEL,
      "auto",
    );
    assert.deepEqual([w.ifbs.size, w.keep.size], [0, 0]);
  });

  test("a group gone from the policy while guests use it: both trees kept as they are, one warning", () => {
    const members = new Map([
      ["web|inbound", [member(0x1a2, "52:54:00:00:00:01")]],
      ["web|outbound", [member(0x1a2, "52:54:00:00:00:01")]],
    ]);
    const w = groupTreeWants(admission({ members }), links(), [], THIS_KERNEL, "auto");
    assert.deepEqual([...w.keep].sort(), [DOWN, UP].sort());
    assert.equal(w.ifbs.size, 0);
    assert.equal(w.notes.length, 1);
    assert.match(w.notes[0].message, /group "web" .* is no longer in the policy/);
    const frozen = groupTreeWants(
      admission({ members, frozen: new Set(["web|inbound"]) }),
      links(),
      POLICY.groups,
      THIS_KERNEL,
      "auto",
    );
    assert.deepEqual([...frozen.keep], [DOWN], "a frozen tree is kept even while its group is in the policy");
    assert.deepEqual([...frozen.ifbs.keys()], [UP]);
  });
});
