// Group membership (src/core/groups.ts through resolveDomain) and the group rules of the policy file
// (checkGroups in src/core/policy.ts). The trees built from memberships are covered by test/golden/groups.test.ts.

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { parseDomainXml } from "../../src/core/domain-xml.js";
import type { DesiredInterface } from "../../src/core/model.js";
import { formatProblem, parsePolicy } from "../../src/core/policy.js";
import { resolveDomain } from "../../src/core/resolve.js";
import { policyProblems, problemAt } from "../helpers/policy-problems.js";

const QOS = "https://virtqos.dev/xmlns/qos/1";
const UUID = "5a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
const M1 = "52:54:00:00:10:01";
const M2 = "52:54:00:00:10:02";
const MBIT = 1e6;

interface If {
  mac: string;
  type?: string;
  dev?: string;
  /** Inner XML: <source .../>, <bandwidth>...</bandwidth>. */
  inner?: string;
}

function xml(name: string, ifaces: If[], metadata = "", uuid = UUID): string {
  const devs = ifaces
    .map(
      (i, n) =>
        `<interface type='${i.type ?? "bridge"}'><mac address='${i.mac}'/>${i.inner ?? "<source bridge='br0'/>"}<target dev='${i.dev ?? `vnet${n}`}'/></interface>`,
    )
    .join("");
  return `<domain type='kvm'><name>${name}</name><uuid>${uuid}</uuid>${metadata ? `<metadata>${metadata}</metadata>` : ""}<devices>${devs}</devices></domain>`;
}

function resolve(domainXml: string, policyText: string) {
  return resolveDomain(parseDomainXml(domainXml), parsePolicy(policyText, "policy.yaml"));
}

const byMac = (list: DesiredInterface[], mac: string): DesiredInterface => {
  const found = list.find((i) => i.mac === mac);
  assert.ok(found, `interface ${mac}`);
  return found;
};

/** Group name an interface landed in (its own group, the last element of the path), or undefined. */
const groupOf = (list: DesiredInterface[], mac: string) => byMac(list, mac).group?.path.at(-1);

/** A flat group `web` (30 Mbit/s down, 20 up) plus whatever membership lines follow. */
const web = (membership: string) => `groups:
  - name: web
    inbound: { average: 30mbit }
    outbound: { average: 20mbit }
${membership}`;

const TWO = [{ mac: M1 }, { mac: M2 }];

describe("membership: explicit members", () => {
  test("by domain name, without mac: every interface of the domain", () => {
    const r = resolve(xml("cliff", TWO), web("    members:\n      - domain: cliff\n"));
    assert.deepEqual(r.problems, []);
    for (const mac of [M1, M2]) {
      const g = byMac(r.interfaces, mac).group;
      assert.deepEqual(g?.path, ["web"]);
      assert.equal(g?.tree, "web");
      assert.equal(g?.via, "members");
    }
  });

  test("by uuid (any case, with or without dashes)", () => {
    for (const who of [UUID, UUID.toUpperCase(), UUID.replace(/-/g, "")]) {
      const r = resolve(xml("cliff", TWO), web(`    members:\n      - domain: "${who}"\n`));
      assert.equal(groupOf(r.interfaces, M1), "web", who);
      assert.equal(groupOf(r.interfaces, M2), "web", who);
    }
  });

  test("with mac: only that interface (the mac is normalised)", () => {
    const r = resolve(
      xml("cliff", TWO),
      web(`    members:\n      - domain: cliff\n        mac: "${M2.toUpperCase()}"\n`),
    );
    assert.equal(groupOf(r.interfaces, M1), undefined);
    assert.equal(groupOf(r.interfaces, M2), "web");
  });

  test("another domain's member entry does not match", () => {
    const r = resolve(xml("rob", TWO), web("    members:\n      - domain: cliff\n"));
    assert.equal(byMac(r.interfaces, M1).group, undefined);
  });
});

describe("membership: selectors", () => {
  const sel = (s: string) => web(`    select:\n${s}`);

  test("select.domains: globs with * and ?, anchored, '.' literal", () => {
    const policy = sel('      domains: ["web-*", "db?", "a.b"]\n');
    const cases: [string, boolean][] = [
      ["web-1", true],
      ["web-", true],
      ["xweb-1", false],
      ["db1", true],
      ["db12", false],
      ["a.b", true],
      ["axb", false],
    ];
    for (const [name, inGroup] of cases) {
      const r = resolve(xml(name, [{ mac: M1 }]), policy);
      assert.equal(groupOf(r.interfaces, M1), inGroup ? "web" : undefined, name);
      if (inGroup) assert.equal(byMac(r.interfaces, M1).group?.via, "select.domains");
    }
  });

  test("select.domains as a single string", () => {
    const r = resolve(xml("cliff", [{ mac: M1 }]), sel("      domains: cliff\n"));
    assert.equal(groupOf(r.interfaces, M1), "web");
  });

  test("select.networks: interfaces whose <source network=...> is listed", () => {
    const r = resolve(
      xml("cliff", [
        { mac: M1, type: "network", inner: "<source network='lab' bridge='virbr1'/>" },
        { mac: M2, type: "network", inner: "<source network='default' bridge='virbr0'/>" },
      ]),
      sel("      networks: [lab]\n"),
    );
    assert.equal(groupOf(r.interfaces, M1), "web");
    assert.equal(byMac(r.interfaces, M1).group?.via, "select.networks");
    assert.equal(groupOf(r.interfaces, M2), undefined);
  });

  test("select.bridges: interfaces whose <source bridge=...> is listed", () => {
    const r = resolve(
      xml("cliff", [
        { mac: M1, inner: "<source bridge='br-web'/>" },
        { mac: M2, inner: "<source bridge='br0'/>" },
      ]),
      sel("      bridges: br-web\n"),
    );
    assert.equal(groupOf(r.interfaces, M1), "web");
    assert.equal(byMac(r.interfaces, M1).group?.via, "select.bridges");
    assert.equal(groupOf(r.interfaces, M2), undefined);
  });
});

describe("membership: named by the domain (metadata) or a policy rule", () => {
  test('domain-level <vq:qos group="web">: every interface', () => {
    const r = resolve(xml("cliff", TWO, `<vq:qos xmlns:vq="${QOS}" group="web"/>`), web(""));
    assert.deepEqual(r.problems, []);
    assert.equal(groupOf(r.interfaces, M1), "web");
    assert.equal(groupOf(r.interfaces, M2), "web");
    assert.match(byMac(r.interfaces, M1).group?.via ?? "", /metadata/);
  });

  test('interface-level <vq:interface group="..."> beats the domain-level group', () => {
    const policy = `${web("")}  - name: db
    inbound: { average: 10mbit }
`;
    const meta = `<vq:qos xmlns:vq="${QOS}" group="web"><vq:interface mac="${M2}" group="db"/></vq:qos>`;
    const r = resolve(xml("cliff", TWO, meta), policy);
    assert.deepEqual(r.problems, []);
    assert.equal(groupOf(r.interfaces, M1), "web");
    assert.equal(groupOf(r.interfaces, M2), "db");
  });

  test("interface-level metadata group alone groups only that interface", () => {
    const meta = `<vq:qos xmlns:vq="${QOS}"><vq:interface mac="${M1}" group="web"/></vq:qos>`;
    const r = resolve(xml("cliff", TWO, meta), web(""));
    assert.equal(groupOf(r.interfaces, M1), "web");
    assert.equal(groupOf(r.interfaces, M2), undefined);
  });

  test("a policy domain rule's `group:` (domain-wide, and per interface)", () => {
    const r = resolve(
      xml("cliff", TWO),
      `domains:
  - name: cliff
    group: web
    interfaces:
      - mac: "${M2}"
        group: db
${web("")}  - name: db
    inbound: { average: 10mbit }
`,
    );
    assert.deepEqual(r.problems, []);
    assert.equal(groupOf(r.interfaces, M1), "web");
    assert.equal(groupOf(r.interfaces, M2), "db");
    assert.match(byMac(r.interfaces, M1).group?.via ?? "", /domains/);
  });

  test("the same group named twice (rule and metadata and selector) is no conflict", () => {
    const r = resolve(
      xml("cliff", [{ mac: M1 }], `<vq:qos xmlns:vq="${QOS}" group="web"/>`),
      `domains:\n  - name: cliff\n    group: web\n${web("    select:\n      domains: cliff\n")}`,
    );
    assert.deepEqual(r.problems, []);
    assert.equal(groupOf(r.interfaces, M1), "web");
  });

  test("interfaces without a host netdev are never grouped", () => {
    const r = resolve(
      xml("cliff", [{ mac: M1, type: "vhostuser", inner: "<source type='unix' path='/s' mode='server'/>" }]),
      web("    members:\n      - domain: cliff\n"),
    );
    assert.equal(byMac(r.interfaces, M1).group, undefined);
    assert.deepEqual(r.problems, []);
  });
});

describe("membership problems", () => {
  const twoGroups = `groups:
  - name: web
    inbound: { average: 30mbit }
    select:
      domains: "cli*"
  - name: solo
    inbound: { average: 30mbit }
    members:
      - domain: cliff
        mac: "${M1}"
`;

  test("an interface matching two groups: GROUP_CONFLICT naming both, and no group", () => {
    const r = resolve(xml("cliff", TWO), twoGroups);
    assert.deepEqual(
      r.problems.map((p) => [p.code, p.iface]),
      [["GROUP_CONFLICT", `${UUID}/${M1}`]],
    );
    assert.match(r.problems[0].message, /"web"/);
    assert.match(r.problems[0].message, /"solo"/);
    assert.match(r.problems[0].message, new RegExp(M1));
    assert.equal(r.problems[0].level, "error");
    assert.equal(byMac(r.interfaces, M1).group, undefined, "the conflicting interface gets no group");
    assert.equal(groupOf(r.interfaces, M2), "web", "the other interface is unaffected");
  });

  test("metadata naming one group while a selector picks another is a conflict too", () => {
    const r = resolve(xml("cliff", [{ mac: M2 }], `<vq:qos xmlns:vq="${QOS}" group="solo"/>`), twoGroups);
    assert.deepEqual(
      r.problems.map((p) => p.code),
      ["GROUP_CONFLICT"],
    );
    assert.equal(byMac(r.interfaces, M2).group, undefined);
  });

  test("an unknown group in metadata: GROUP_UNKNOWN, interface not grouped", () => {
    const r = resolve(xml("cliff", [{ mac: M1 }], `<vq:qos xmlns:vq="${QOS}" group="nosuch"/>`), web(""));
    assert.deepEqual(
      r.problems.map((p) => [p.code, p.iface]),
      [["GROUP_UNKNOWN", `${UUID}/${M1}`]],
    );
    assert.match(r.problems[0].message, /"nosuch"/);
    assert.match(r.problems[0].message, /metadata/);
    assert.equal(byMac(r.interfaces, M1).group, undefined);
  });

  test("an unknown group in metadata with no groups in the policy at all: GROUP_UNKNOWN", () => {
    const r = resolve(xml("cliff", [{ mac: M1 }], `<vq:qos xmlns:vq="${QOS}" group="nosuch"/>`), "");
    assert.deepEqual(
      r.problems.map((p) => p.code),
      ["GROUP_UNKNOWN"],
    );
  });

  test("an unknown group in a policy rule: GROUP_UNKNOWN", () => {
    const r = resolve(
      xml("cliff", [{ mac: M1 }]),
      `domains:\n  - name: cliff\n    group: nosuch\n${web("")}`,
    );
    assert.deepEqual(
      r.problems.map((p) => p.code),
      ["GROUP_UNKNOWN"],
    );
    assert.match(r.problems[0].message, /"nosuch"/);
  });

  // Regression: assignGroup's early return used to skip a rule's `group:` when the policy had no `groups:`.
  test("an unknown group in a policy rule when the policy defines no groups: reported", () => {
    const r = resolve(xml("cliff", [{ mac: M1 }]), "domains:\n  - name: cliff\n    group: nosuch\n");
    assert.deepEqual(
      r.problems.map((p) => p.code),
      ["GROUP_UNKNOWN"],
    );
  });

  test("a parent group named directly: a problem, interface not grouped", () => {
    const policy = `groups:
  - name: host
    inbound: { average: 100mbit }
  - name: web
    parent: host
    inbound: { average: 30mbit }
`;
    const r = resolve(xml("cliff", [{ mac: M1 }], `<vq:qos xmlns:vq="${QOS}" group="host"/>`), policy);
    assert.equal(r.problems.length, 1);
    assert.match(r.problems[0].message, /"host" is a parent group/);
    assert.match(r.problems[0].message, /child groups/);
    assert.equal(byMac(r.interfaces, M1).group, undefined);
  });
});

describe("member limits", () => {
  const bw = (inbound: string, outbound = "") =>
    `<source bridge='br0'/><bandwidth>${inbound ? `<inbound ${inbound}/>` : ""}${outbound ? `<outbound ${outbound}/>` : ""}</bandwidth>`;
  const limitOf = (r: ReturnType<typeof resolve>, d: "inbound" | "outbound" = "inbound") =>
    byMac(r.interfaces, M1).group?.[d];

  const group = (extra: string) => `groups:
  - name: web
    inbound: { average: 30mbit }
    outbound: { average: 20mbit }
${extra}`;

  test("floor: the member entry beats memberDefaults, which beat libvirt's <inbound floor>", () => {
    const xmlFloor = xml("cliff", [{ mac: M1, inner: bw("average='3750' floor='625'") }]); // 30 Mbit/s, floor 5
    const entry = resolve(
      xmlFloor,
      group(`    memberDefaults:
      inbound: { floor: 10mbit }
    members:
      - domain: cliff
        inbound: { floor: 15mbit }
`),
    );
    assert.equal(limitOf(entry)?.floorBitsPerSec, 15 * MBIT);
    const defaults = resolve(
      xmlFloor,
      group("    memberDefaults:\n      inbound: { floor: 10mbit }\n    members:\n      - domain: cliff\n"),
    );
    assert.equal(limitOf(defaults)?.floorBitsPerSec, 10 * MBIT);
    const libvirt = resolve(xmlFloor, group("    members:\n      - domain: cliff\n"));
    assert.equal(limitOf(libvirt)?.floorBitsPerSec, 5 * MBIT);
    const none = resolve(xml("cliff", [{ mac: M1 }]), group("    members:\n      - domain: cliff\n"));
    assert.equal(limitOf(none)?.floorBitsPerSec, 0);
  });

  test("libvirt floor given in <metadata> counts like <bandwidth>", () => {
    const meta = `<vq:qos xmlns:vq="${QOS}"><vq:interface mac="${M1}"><vq:inbound average="3750" floor="1250"/></vq:interface></vq:qos>`;
    const r = resolve(xml("cliff", [{ mac: M1 }], meta), group("    members:\n      - domain: cliff\n"));
    assert.equal(limitOf(r)?.floorBitsPerSec, 10 * MBIT);
  });

  // libvirt accepts <inbound floor='...'/> without an average (average is required "unless floor is set").
  // Regression: a floor-only <inbound> used to be dropped whole, so the member got floor 0.
  test("libvirt <inbound floor> without an average still gives the floor", () => {
    const r = resolve(
      xml("cliff", [{ mac: M1, inner: bw("floor='1250'") }]),
      group("    members:\n      - domain: cliff\n"),
    );
    assert.equal(limitOf(r)?.floorBitsPerSec, 10 * MBIT);
  });

  test("ceiling: the member's own average/peak, capped by the group's ceiling", () => {
    const members = group("    members:\n      - domain: cliff\n");
    const small = resolve(xml("cliff", [{ mac: M1, inner: bw("average='1250'") }]), members); // 10 Mbit/s
    assert.equal(limitOf(small)?.ceilBitsPerSec, 10 * MBIT);
    const peak = resolve(xml("cliff", [{ mac: M1, inner: bw("average='1250' peak='2500'") }]), members);
    assert.equal(limitOf(peak)?.ceilBitsPerSec, 20 * MBIT, "the peak is the ceiling");
    const big = resolve(
      xml("cliff", [{ mac: M1, inner: bw("average='12500'", "average='12500'") }]),
      members,
    );
    assert.equal(limitOf(big)?.ceilBitsPerSec, 30 * MBIT, "capped by the group's inbound");
    assert.equal(limitOf(big, "outbound")?.ceilBitsPerSec, 20 * MBIT, "capped by the group's outbound");
    const none = resolve(xml("cliff", [{ mac: M1 }]), members);
    assert.equal(limitOf(none)?.ceilBitsPerSec, 30 * MBIT, "no own limit: the group's ceiling");
  });

  test("ceiling from the member entry's average/peak beats the interface's own limit", () => {
    const r = resolve(
      xml("cliff", [{ mac: M1, inner: bw("average='125'") }]),
      group(`    members:
      - domain: cliff
        inbound: { average: 12mbit, peak: 25mbit, floor: 5mbit, burst: 64KiB }
`),
    );
    assert.deepEqual(limitOf(r), { floorBitsPerSec: 5 * MBIT, ceilBitsPerSec: 25 * MBIT, burstBytes: 65536 });
  });

  test("a child group's member is capped by its own group (and the parent's) ceiling", () => {
    const r = resolve(
      xml("cliff", [{ mac: M1 }]),
      `groups:
  - name: host
    inbound: { average: 20mbit }
  - name: web
    parent: host
    inbound: { average: 15mbit, peak: 40mbit }
    members:
      - domain: cliff
`,
    );
    assert.equal(limitOf(r)?.ceilBitsPerSec, 20 * MBIT, "peak 40 of the child, capped by the parent's 20");
    assert.deepEqual(byMac(r.interfaces, M1).group?.path, ["host", "web"]);
    assert.equal(byMac(r.interfaces, M1).group?.tree, "host");
  });

  test("a floor above the member's ceiling is cut to the ceiling", () => {
    const r = resolve(
      xml("cliff", [{ mac: M1, inner: bw("average='1250'") }]), // 10 Mbit/s
      group("    memberDefaults:\n      inbound: { floor: 15mbit }\n    members:\n      - domain: cliff\n"),
    );
    assert.deepEqual(limitOf(r), {
      floorBitsPerSec: 10 * MBIT,
      ceilBitsPerSec: 10 * MBIT,
      burstBytes: undefined,
    });
  });

  test("policy `defaults` are ignored inside a group (the group is the limit)", () => {
    const r = resolve(
      xml("cliff", [{ mac: M1 }]),
      `defaults:\n  inbound: { average: 5mbit }\n  outbound: { average: 5mbit }\n${group("    members:\n      - domain: cliff\n")}`,
    );
    const i = byMac(r.interfaces, M1);
    assert.equal(i.inbound?.source, "defaults", "the interface still has the default as its own limit");
    assert.equal(i.group?.inbound?.ceilBitsPerSec, 30 * MBIT);
    assert.equal(i.group?.outbound?.ceilBitsPerSec, 20 * MBIT);
  });

  test("a group lacking a direction does not group that direction", () => {
    const r = resolve(
      xml("cliff", [{ mac: M1, inner: bw("average='1250'", "average='625'") }]),
      "groups:\n  - name: web\n    inbound: { average: 30mbit }\n    members:\n      - domain: cliff\n",
    );
    const i = byMac(r.interfaces, M1);
    assert.ok(i.group?.inbound);
    assert.equal(i.group?.outbound, undefined);
    assert.equal(i.outbound?.rateBitsPerSec, 5 * MBIT, "the interface keeps its own upload limit");
    const unlimited = resolve(
      xml("cliff", [{ mac: M1 }]),
      "groups:\n  - name: web\n    inbound: unlimited\n    outbound: { average: 30mbit }\n    members:\n      - domain: cliff\n",
    );
    assert.equal(byMac(unlimited.interfaces, M1).group?.inbound, undefined, "`unlimited` does not group");
    assert.ok(byMac(unlimited.interfaces, M1).group?.outbound);
  });

  test("a child group lacking a direction its parent has does not group it", () => {
    const r = resolve(
      xml("cliff", [{ mac: M1 }]),
      `groups:
  - name: host
    inbound: { average: 100mbit }
    outbound: { average: 100mbit }
  - name: web
    parent: host
    inbound: { average: 30mbit }
    members:
      - domain: cliff
`,
    );
    const g = byMac(r.interfaces, M1).group;
    assert.ok(g?.inbound);
    assert.equal(g?.outbound, undefined);
  });

  test("minors are not decided at resolve time", () => {
    const r = resolve(xml("cliff", [{ mac: M1 }]), group("    members:\n      - domain: cliff\n"));
    assert.equal(limitOf(r)?.minor, undefined);
  });
});

// ---------------------------------------------------------------------------------------------------------
// Policy errors

describe("policy errors for groups, with line numbers", () => {
  test("member floors above the group's ceiling: the numbers are in the message", () => {
    const list = policyProblems(`groups:
  - name: web
    inbound: { average: 30mbit }
    memberDefaults:
      inbound: { floor: 15mbit }
    members:
      - domain: cliff
      - domain: rob
      - domain: bob
        inbound: { floor: 5mbit }
`);
    const p = problemAt(list, "groups[0].inbound.average");
    assert.equal(p.line, 3);
    assert.match(p.message, /floors add up to 35 Mbit\/s/);
    assert.match(p.message, /cliff 15 Mbit\/s/);
    assert.match(p.message, /bob 5 Mbit\/s/);
    assert.match(p.message, /30 Mbit\/s/);
    assert.match(p.message, /inbound/);
  });

  test("floors that exactly fill the ceiling are accepted", () => {
    const p = parsePolicy(
      "groups:\n  - name: web\n    outbound: { average: 30mbit }\n    memberDefaults:\n      outbound: { floor: 15mbit }\n    members:\n      - domain: a\n      - domain: b\n",
      "policy.yaml",
    );
    assert.equal(p.groups[0].members.length, 2);
  });

  test("child groups' floors and averages above the parent's ceiling", () => {
    const list = policyProblems(`groups:
  - name: host
    inbound: { average: 50mbit }
    outbound: { average: 100mbit }
  - name: web
    parent: host
    inbound: { average: 30mbit, floor: 10mbit }
    outbound: { average: 60mbit }
  - name: solo
    parent: host
    inbound: { average: 30mbit }
    outbound: { average: 60mbit }
`);
    // inbound: 10 (web's floor) + 30 (solo's average) = 40 <= 50: fine. outbound: 60 + 60 > 100.
    const p = problemAt(list, "groups[0].outbound.average");
    assert.equal(p.line, 4);
    assert.match(p.message, /120 Mbit\/s/);
    assert.match(p.message, /group web 60 Mbit\/s/);
    assert.match(p.message, /group solo 60 Mbit\/s/);
    assert.match(p.message, /100 Mbit\/s/);
    assert.equal(list.length, 1);
  });

  test("two levels of nesting", () => {
    const list = policyProblems(`groups:
  - name: a
    inbound: { average: 100mbit }
  - name: b
    parent: a
    inbound: { average: 50mbit }
  - name: c
    parent: b
    inbound: { average: 10mbit }
`);
    const p = problemAt(list, "groups[2].parent");
    assert.equal(p.line, 8);
    assert.match(p.message, /"b" is itself a child of "a"/);
  });

  test("an undefined parent", () => {
    const p = problemAt(
      policyProblems("groups:\n  - name: web\n    inbound: { average: 10mbit }\n    parent: nothere\n"),
      "groups[0].parent",
    );
    assert.equal(p.line, 4);
    assert.match(p.message, /"nothere" is not defined/);
  });

  test("a parent with members of its own (explicit or selected)", () => {
    for (const own of ["    members:\n      - domain: cliff\n", "    select:\n      bridges: br0\n"]) {
      const list = policyProblems(`groups:
  - name: host
    inbound: { average: 100mbit }
${own}  - name: web
    parent: host
    inbound: { average: 30mbit }
`);
      const p = problemAt(list, "groups[1].parent");
      assert.equal(p.line, 7);
      assert.match(p.message, /"host" has members of its own/);
    }
  });

  test("an explicit member listed in two groups: both groups named", () => {
    const list = policyProblems(`groups:
  - name: web
    inbound: { average: 30mbit }
    members:
      - domain: cliff
  - name: solo
    inbound: { average: 30mbit }
    members:
      - domain: rob
      - domain: cliff
        mac: "52:54:00:00:10:01"
`);
    const p = problemAt(list, "groups[1].members[1]");
    assert.equal(p.line, 10);
    assert.match(p.message, /cliff 52:54:00:00:10:01/);
    assert.match(p.message, /"web"/);
    // The message names the first group; the fix (part of the error text) names both.
    assert.match(formatProblem(p), /"solo"/);
    assert.match(formatProblem(p), /"web"/);
  });

  test("the same domain with two different macs in two groups is fine", () => {
    const p = parsePolicy(
      `groups:
  - name: web
    inbound: { average: 30mbit }
    members:
      - { domain: cliff, mac: "52:54:00:00:10:01" }
  - name: solo
    inbound: { average: 30mbit }
    members:
      - { domain: cliff, mac: "52:54:00:00:10:02" }
`,
      "policy.yaml",
    );
    assert.equal(p.groups.length, 2);
  });

  test("all problems are reported at once", () => {
    const list = policyProblems(`groups:
  - name: a
    inbound: { average: 10mbit }
    parent: nothere
    members:
      - domain: x
        inbound: { floor: 20mbit }
  - name: b
    inbound: { average: 10mbit }
    members:
      - domain: x
`);
    assert.deepEqual(list.map((p) => p.field).sort(), [
      "groups[0].inbound.average",
      "groups[0].parent",
      "groups[1].members[0]",
    ]);
  });
});
