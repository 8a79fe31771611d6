// Restore on the fake kernel: apply a state S1, then a change S2, then planRestore(S1, S2) over every device;
// the kernel must read back exactly as S1 (every link, qdisc, class and filter, whatever order the kernel
// lists them in). Group trees (members joining and leaving, a ceiling changing, the last member leaving with
// the group's IFBs), every interface type, and police mode. The restore batches of the group cases are golden
// files (test/golden/expected/restore-*.txt).

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { parseDomainXml } from "../../src/core/domain-xml.js";
import type { DesiredInterface, DomainRecord } from "../../src/core/model.js";
import { groupIfbName } from "../../src/core/names.js";
import { type Observed, type Op, type PlanOptions, plan, planRestore } from "../../src/core/plan/index.js";
import { emptyPolicy, type Policy, parsePolicy } from "../../src/core/policy.js";
import type { Capabilities } from "../../src/core/recipe.js";
import { resolveDomain } from "../../src/core/resolve.js";
import { render } from "../../src/core/tc/render.js";
import { PRODUCTION, THIS_KERNEL } from "../helpers/caps.js";
import { checkLineBasics, FakeKernel, Goldens } from "../helpers/fake-kernel.js";

const goldens = new Goldens(new URL("./expected/", import.meta.url), (name, got) => {
  for (const line of got) checkLineBasics(`${name}: ${line}`, line, /^vq[idu][0-9a-f]{12}$/);
});

// ---------------------------------------------------------------------------------------------------------
// A host: the fake kernel and the records, applied one domain at a time as the engine does.

interface IfaceSpec {
  type: string;
  mac: string;
  dev: string;
  inner?: string;
  /** libvirt's <bandwidth> body. */
  bandwidth?: string;
}

function domainXml(name: string, uuid: string, ifaces: IfaceSpec[]): string {
  const devs = ifaces
    .map(
      (i) =>
        `<interface type='${i.type}'><mac address='${i.mac}'/>${i.inner ?? ""}<target dev='${i.dev}'/>` +
        `${i.bandwidth ? `<bandwidth>${i.bandwidth}</bandwidth>` : ""}<model type='virtio'/></interface>`,
    )
    .join("\n");
  return `<domain type='kvm'><name>${name}</name><uuid>${uuid}</uuid><devices>${devs}</devices></domain>`;
}

class Host {
  kernel: FakeKernel;
  records = new Map<string, DomainRecord>();

  constructor(
    readonly caps: Capabilities,
    public policy: Policy,
    taps: string[],
  ) {
    this.kernel = new FakeKernel({ firstIfindex: 11, caps });
    for (const t of taps) this.kernel.addTap(t);
  }

  observe(): Observed {
    return this.kernel.observe([...this.records.values()].map((r) => structuredClone(r)));
  }

  /** Apply the domains in `xmls` (scope: those domains, or `scope`), as `virtqos apply` does. */
  apply(xmls: string[], scope?: string[]): void {
    const desired: DesiredInterface[] = [];
    const uuids: string[] = [];
    for (const x of xmls) {
      const domain = parseDomainXml(x);
      desired.push(...resolveDomain(domain, this.policy).interfaces);
      uuids.push(domain.uuid);
    }
    const options: PlanOptions = {
      leaf: this.policy.leaf,
      scope: scope ?? uuids,
      sweep: true,
      groups: this.policy.groups,
    };
    const p = plan(desired, this.observe(), this.caps, options);
    assert.deepEqual(
      p.problems.filter((x) => x.code !== "GROUP_ADMISSION"),
      [],
    );
    this.kernel.apply(p.ops);
    for (const r of p.records) this.records.set(r.domainUuid, structuredClone(r));
    for (const u of p.forget) this.records.delete(u);
  }
}

/**
 * The kernel as observe() reads it, one line per object, sorted: the kernel lists classes and filters in its
 * own order, which is not state. `recreated`: links whose ifindex may differ (an IFB deleted and created again).
 */
function snapshot(o: Observed, recreated: ReadonlySet<string> = new Set()): string[] {
  const out: string[] = [];
  for (const l of o.links.values())
    out.push(`link ${JSON.stringify(recreated.has(l.name) ? { ...l, ifindex: 0 } : l)}`);
  for (const d of o.devices.values()) {
    for (const q of d.qdiscs) out.push(`${d.dev} qdisc ${JSON.stringify(q)}`);
    for (const c of d.classes) out.push(`${d.dev} class ${JSON.stringify(c)}`);
    for (const f of d.filters) out.push(`${d.dev} filter ${JSON.stringify(f)}`);
  }
  return out.sort();
}

/** What `got` lacks of `want` and has beyond it, so a failure names the objects that differ. */
function difference(got: string[], want: string[]): { missing: string[]; extra: string[] } {
  return { missing: want.filter((x) => !got.includes(x)), extra: got.filter((x) => !want.includes(x)) };
}

/**
 * Run `change` on a host in state S1, then restore S1 from the two observations over every device either one
 * has; the kernel must read back as S1, and a second restore must have nothing to do.
 */
function assertRestores(h: Host, change: () => void, golden?: string): Op[] {
  const s1 = h.observe();
  const records = structuredClone([...h.records.values()]);
  change();
  const s2 = h.observe();
  assert.notDeepEqual(snapshot(s2), snapshot(s1), "the change changes the kernel");
  const devs = new Set([...s1.links.keys(), ...s2.links.keys()]);
  const ops = planRestore(s1, s2, devs, h.caps);
  if (golden) goldens.check(golden, render(ops));
  h.kernel.apply(ops);
  const back = h.kernel.observe(records);
  const recreated = new Set([...s1.links.keys()].filter((d) => !s2.links.has(d)));
  assert.deepEqual(difference(snapshot(back, recreated), snapshot(s1, recreated)), {
    missing: [],
    extra: [],
  });
  assert.deepEqual(planRestore(s1, back, devs, h.caps), [], "restored: nothing left to do");
  return ops;
}

// ---------------------------------------------------------------------------------------------------------
// Group trees: the README's groups (host > web: cliff + rob, 15 Mbit/s guaranteed each; solo: jason)

const SEED_001 = `groups:
  - name: host
    inbound: { average: 1000mbit }
    outbound: { average: 1000mbit }
  - name: web
    parent: host
    inbound: { average: 30mbit }
    outbound: { average: 30mbit }
    memberDefaults:
      inbound: { floor: 15mbit }
      outbound: { floor: 15mbit }
    select:
      domains: ["cliff", "rob"]
  - name: solo
    parent: host
    inbound: { average: 30mbit }
    outbound: { average: 30mbit }
    members:
      - domain: jason
`;

const GUESTS = {
  cliff: { uuid: "237c8139-1b4e-423f-8846-a22fc3e350d3", mac: "52:54:00:00:00:01", tap: "tap-cliff0" },
  rob: { uuid: "9b0b0b0b-7a1e-4c2d-9e3f-40516273849a", mac: "52:54:00:00:02:1f", tap: "tap-rob0" },
  jason: { uuid: "a4e00d26-390e-41a1-935e-10edc413232f", mac: "52:54:00:00:01:01", tap: "tap-jason0" },
  // A MAC ending in 00: tc prints its filter's handle with an empty bucket ("100::1a4").
  zed: { uuid: "5e5e5e5e-0000-4000-8000-000000000001", mac: "52:54:00:00:03:00", tap: "tap-zed0" },
};
type Name = keyof typeof GUESTS;

const guestXml = (name: Name, type = "bridge") =>
  domainXml(name, GUESTS[name].uuid, [
    {
      type,
      mac: GUESTS[name].mac,
      dev: GUESTS[name].tap,
      inner:
        type === "bridge"
          ? "<source bridge='br0'/>"
          : type === "direct"
            ? "<source dev='eth0' mode='bridge'/>"
            : "",
    },
  ]);

const POLICY_WITH_ZED = SEED_001.replace(
  'domains: ["cliff", "rob"]',
  'domains: ["cliff", "rob", "zed"]',
).replace(
  "      inbound: { floor: 15mbit }\n      outbound: { floor: 15mbit }\n",
  "      inbound: { floor: 10mbit }\n      outbound: { floor: 10mbit }\n",
);

function groupHost(names: Name[], policy = SEED_001, type = "bridge", caps = THIS_KERNEL): Host {
  const h = new Host(
    caps,
    parsePolicy(policy, "policy.yaml"),
    Object.values(GUESTS).map((g) => g.tap),
  );
  for (const n of names) h.apply([guestXml(n, type)]);
  return h;
}

const IFB = { down: groupIfbName("host", "inbound"), up: groupIfbName("host", "outbound") };

describe("restore: group trees on the fake kernel", () => {
  test("restore-group-member-leaves: rob leaves; his class, leaf and MAC filters come back", () => {
    const h = groupHost(["cliff", "rob", "jason"]);
    const ops = assertRestores(h, () => h.apply([], [GUESTS.rob.uuid]), "restore-group-member-leaves");
    for (const ifb of [IFB.down, IFB.up]) {
      assert.ok(
        ops.some((o) => o.op === "tree-filter-add" && o.dev === ifb && o.filter.kind === "member"),
        `${ifb}: rob's classification filter is restored`,
      );
    }
  });

  test("restore-group-member-joins: rob joins; his class, leaf and filters go again", () => {
    const h = groupHost(["cliff", "jason"]);
    assertRestores(h, () => h.apply([guestXml("rob")]), "restore-group-member-joins");
  });

  test("restore-group-ceiling-changes: web's ceiling goes from 30 to 40 Mbit/s; classes and leaves come back", () => {
    const h = groupHost(["cliff", "rob", "jason"]);
    assertRestores(
      h,
      () => {
        h.policy = parsePolicy(
          SEED_001.replace(
            "    inbound: { average: 30mbit }\n    outbound: { average: 30mbit }\n    memberDefaults",
            "    inbound: { average: 40mbit }\n    outbound: { average: 40mbit }\n    memberDefaults",
          ),
          "policy.yaml",
        );
        h.apply([guestXml("cliff")]);
      },
      "restore-group-ceiling-changes",
    );
  });

  test("restore-group-last-member-leaves: the group's IFBs come back with their whole tree", () => {
    const h = groupHost(["cliff"]);
    const ops = assertRestores(h, () => h.apply([], [GUESTS.cliff.uuid]), "restore-group-last-member-leaves");
    assert.deepEqual(
      ops.filter((o) => o.op === "ifb-add").map((o) => o.dev),
      [IFB.down, IFB.up],
    );
  });

  test("a member moved to the other child group goes back under its old parent", () => {
    const h = groupHost(["cliff", "rob", "jason"]);
    assertRestores(h, () => {
      h.policy = parsePolicy(
        SEED_001.replace('domains: ["cliff", "rob"]', 'domains: ["cliff"]').replace(
          "      - domain: jason\n",
          "      - domain: jason\n      - domain: rob\n",
        ),
        "policy.yaml",
      );
      h.apply([guestXml("rob")]);
    });
  });

  test("a member whose MAC ends in 00 (tc prints its handle as 100::<node>)", () => {
    const h = groupHost(["cliff", "zed"], POLICY_WITH_ZED);
    assertRestores(h, () => h.apply([], [GUESTS.zed.uuid]));
    const again = groupHost(["cliff"], POLICY_WITH_ZED);
    assertRestores(again, () => again.apply([guestXml("zed")]));
  });

  test("restore-group-fq-codel-member-leaves: members' fq_codel under their tbf comes back (PRODUCTION)", () => {
    const h = groupHost(["cliff", "rob", "jason"], SEED_001, "bridge", PRODUCTION);
    const leaves = h.kernel.devs.get(IFB.down)?.qdiscs.map((q) => `${q.kind} ${q.handle} ${q.parent}`);
    const robMinor = h.records.get(GUESTS.rob.uuid)?.interfaces[0].group?.inbound?.minor;
    assert.ok(robMinor !== undefined);
    const m = robMinor.toString(16);
    assert.ok(leaves?.includes(`tbf 4${m}: 7651:${m}`), `${leaves}`);
    assert.ok(leaves?.includes(`fq_codel 5${m}: 4${m}:1`), `${leaves}`);
    const ops = assertRestores(
      h,
      () => h.apply([], [GUESTS.rob.uuid]),
      "restore-group-fq-codel-member-leaves",
    );
    assert.ok(
      ops.some((o) => o.op === "leaf-replace" && o.parent === `4${m}:1` && o.leaf.kind === "fq_codel"),
    );
  });

  for (const type of ["ethernet", "direct"]) {
    test(`members on ${type} interfaces (hooks ${type === "direct" ? "swapped" : "as on a bridge"})`, () => {
      const h = groupHost(["cliff", "jason"], SEED_001, type);
      assertRestores(h, () => h.apply([guestXml("rob", type)]));
      assertRestores(h, () => h.apply([], [GUESTS.cliff.uuid]));
    });
  }
});

// ---------------------------------------------------------------------------------------------------------
// Per-interface trees, every interface type, and police

const UUID = "6d0e4a6c-5b0f-4c1e-9d7a-1f2e3d4c5b6a";
const MAC = "52:54:00:6d:00:01";
const TYPES: { name: string; spec: Omit<IfaceSpec, "bandwidth"> }[] = [
  { name: "bridge", spec: { type: "bridge", mac: MAC, dev: "vnet1", inner: "<source bridge='br0'/>" } },
  {
    name: "network",
    spec: { type: "network", mac: MAC, dev: "vnet1", inner: "<source network='default'/>" },
  },
  { name: "ethernet", spec: { type: "ethernet", mac: MAC, dev: "tap1" } },
  {
    name: "direct (macvtap)",
    spec: { type: "direct", mac: MAC, dev: "macvtap1", inner: "<source dev='eth0' mode='bridge'/>" },
  },
  {
    name: "OVS",
    spec: {
      type: "bridge",
      mac: MAC,
      dev: "vnet1",
      inner:
        "<source bridge='obr0'/><virtualport type='openvswitch'><parameters interfaceid='e5b83b18-9b02-480a-ab32-0701fee83d39'/></virtualport>",
    },
  },
];
const BW_A = "<inbound average='3750'/><outbound average='1250'/>"; // 30 Mbit/s down, 10 up
const BW_B = "<inbound average='2500' peak='5000' burst='256'/><outbound average='625'/>"; // 20 (40) down, 5 up
const BW_FAST = "<inbound average='25000'/><outbound average='25000'/>"; // 200 Mbit/s both ways

describe("restore: per-interface trees on the fake kernel", () => {
  for (const { name, spec } of TYPES) {
    const xml = (bandwidth?: string) => domainXml("web1", UUID, [{ ...spec, bandwidth }]);
    const host = (caps: Capabilities = THIS_KERNEL) => {
      const h = new Host(caps, emptyPolicy(), [spec.dev]);
      h.apply([xml(BW_A)]);
      return h;
    };
    test(`${name}: rates change`, () => {
      const h = host();
      assertRestores(h, () => h.apply([xml(BW_B)]));
    });
    test(`${name}: the interface is no longer shaped (its IFB and hook qdisc go)`, () => {
      const h = host();
      assertRestores(h, () => h.apply([xml()]));
    });
    test(`${name}: shaped for the first time`, () => {
      const h = new Host(THIS_KERNEL, emptyPolicy(), [spec.dev]);
      assertRestores(h, () => h.apply([xml(BW_A)]));
    });
    test(`${name}: fq_codel under its tbf, rates change (the tbf changes in place)`, () => {
      const h = host(PRODUCTION);
      assertRestores(h, () => h.apply([xml(BW_B)]));
    });
    test(`${name}: fq_codel under its tbf becomes plain fq_codel above ~54 Mbit/s, and back`, () => {
      const h = host(PRODUCTION);
      assertRestores(
        h,
        () => h.apply([xml(BW_FAST)]),
        name === "bridge" ? "restore-fq-codel-unsplit" : undefined,
      );
      h.apply([xml(BW_FAST)]);
      assertRestores(h, () => h.apply([xml(BW_A)]), name === "bridge" ? "restore-fq-codel-split" : undefined);
    });
    test(`${name}: the leaf kind changes (fq_codel to sfq)`, () => {
      const h = host(PRODUCTION);
      assertRestores(h, () => {
        h.policy = parsePolicy("leaf: sfq\n", "policy.yaml");
        h.apply([xml(BW_A)]);
      });
    });
  }

  for (const caps of [PRODUCTION, { ...PRODUCTION, classifiers: ["u32"] }]) {
    const classifier = caps.classifiers.includes("matchall") ? "matchall" : "u32";
    const xml = (bandwidth: string) => domainXml("web1", UUID, [{ ...TYPES[0].spec, bandwidth }]);
    test(`police (${classifier}): the policer's rate changes`, () => {
      const h = new Host(caps, parsePolicy("upload: police\n", "policy.yaml"), ["vnet1"]);
      h.apply([xml(BW_A)]);
      assertRestores(h, () => h.apply([xml(BW_B)]));
    });
    test(`police (${classifier}): shaping through an IFB becomes policing, and back`, () => {
      const h = new Host(caps, emptyPolicy(), ["vnet1"]);
      h.apply([xml(BW_A)]);
      assertRestores(h, () => {
        h.policy = parsePolicy("upload: police\n", "policy.yaml");
        h.apply([xml(BW_A)]);
      });
      h.policy = parsePolicy("upload: police\n", "policy.yaml");
      h.apply([xml(BW_A)]);
      assertRestores(h, () => {
        h.policy = emptyPolicy();
        h.apply([xml(BW_A)]);
      });
    });
  }
});

test("every restore-*.txt golden file belongs to a case", () => {
  if (goldens.used.size === 0) return;
  assert.deepEqual(
    goldens.unused((n) => n.startsWith("restore-")),
    [],
  );
});
