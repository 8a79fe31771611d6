// Golden tests for the planner, in the spirit of libvirt's tests/virnetdevbandwidthtest.c: domain XML and
// policy in, the exact `ip -batch`/`tc -batch` lines out. Expected output lives in test/golden/expected/.
// UPDATE_GOLDEN=1 rewrites the expected files; review every diff by eye before accepting it.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";
import { parseDomainXml } from "../../src/core/domain-xml.js";
import type { DesiredInterface, DomainRecord } from "../../src/core/model.js";
import { formatIfbAlias, interfaceIfbName, parseIfbAlias } from "../../src/core/names.js";
import { type Observed, type Plan, type PlanOptions, plan, recordIfb } from "../../src/core/plan/index.js";
import { emptyPolicy, type Policy, parsePolicy } from "../../src/core/policy.js";
import type { Capabilities } from "../../src/core/recipe.js";
import { resolveDomain } from "../../src/core/resolve.js";
import { type Rendered, render } from "../../src/core/tc/render.js";
import { NO_CLSACT, NO_IFB, PRODUCTION, THIS_KERNEL } from "../helpers/caps.js";
import {
  checkLineBasics,
  FakeKernel,
  Goldens,
  lines,
  tbfBurstRoundTrip,
  tbfLatency,
  tcSizeText,
  ticksRoundTrip,
  UPDATE_GOLDEN,
} from "../helpers/fake-kernel.js";
import { tcRejects } from "../helpers/tc-limits.js";

const EXPECTED = new URL("./expected/", import.meta.url);
const FIXTURES = new URL("../fixtures/libvirt-9.0/", import.meta.url);

// ---------------------------------------------------------------------------------------------------------
// Inputs

const UUID_A = "6d0e4a6c-5b0f-4c1e-9d7a-1f2e3d4c5b6a";
const UUID_B = "0f1e2d3c-4b5a-4968-8776-655443322110";

interface Rate {
  average?: number;
  peak?: number;
  burst?: number;
  floor?: number;
}

interface IfaceSpec {
  type: string;
  mac: string;
  dev?: string;
  alias?: string;
  source?: string;
  ovs?: boolean;
  /** libvirt units: kB/s for average/peak/floor, KiB for burst. */
  inbound?: Rate;
  outbound?: Rate;
}

const rateAttrs = (r: Rate) =>
  Object.entries(r)
    .map(([k, v]) => `${k}='${v}'`)
    .join(" ");

function ifaceXml(i: IfaceSpec): string {
  const bw =
    i.inbound || i.outbound
      ? `<bandwidth>${i.inbound ? `<inbound ${rateAttrs(i.inbound)}/>` : ""}${i.outbound ? `<outbound ${rateAttrs(i.outbound)}/>` : ""}</bandwidth>`
      : "";
  return `    <interface type='${i.type}'>
      <mac address='${i.mac}'/>
      ${i.source ?? ""}
      ${i.ovs ? "<virtualport type='openvswitch'><parameters interfaceid='e5b83b18-9b02-480a-ab32-0701fee83d39'/></virtualport>" : ""}
      ${i.dev ? `<target dev='${i.dev}'/>` : ""}
      <model type='virtio'/>
      ${bw}
      ${i.alias ? `<alias name='${i.alias}'/>` : ""}
    </interface>`;
}

function domainXml(name: string, uuid: string, ifaces: IfaceSpec[], metadata = ""): string {
  return `<domain type='kvm' id='7'>
  <name>${name}</name>
  <uuid>${uuid}</uuid>
  ${metadata ? `<metadata>${metadata}</metadata>` : ""}
  <memory unit='KiB'>65536</memory>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
${ifaces.map(ifaceXml).join("\n")}
  </devices>
</domain>`;
}

const bridge = (mac: string, dev: string, bw: Pick<IfaceSpec, "inbound" | "outbound"> = {}): IfaceSpec => ({
  type: "bridge",
  mac,
  dev,
  source: "<source bridge='br0'/>",
  ...bw,
});

interface Desired {
  interfaces: DesiredInterface[];
  warnings: string[];
  policy: Policy;
  uuid: string;
}

function desired(xml: string, policyText?: string): Desired {
  const policy = policyText === undefined ? emptyPolicy() : parsePolicy(policyText, "policy.yaml");
  const domain = parseDomainXml(xml);
  const { interfaces, warnings } = resolveDomain(domain, policy);
  return { interfaces, warnings, policy, uuid: domain.uuid };
}

// ---------------------------------------------------------------------------------------------------------
// The fake kernel (test/helpers/fake-kernel.ts): the state the cases start from, and its rounding

/** A host before virtqos: each tap present with an ifindex, a default noqueue root, no filters. */
function freshKernel(ifaces: DesiredInterface[], except: string[] = []): FakeKernel {
  const k = new FakeKernel();
  let ifindex = 11;
  for (const i of ifaces) {
    if (i.dev && !except.includes(i.dev) && !k.devs.has(i.dev))
      k.addLink(i.dev, { ifindex: ifindex++, kind: "tun" });
  }
  return k;
}

describe("fake kernel", () => {
  // Read back from kernel 6.18 with iproute2 6.1 after applying type-bridge.txt in a scratch namespace.
  test("rounds sizes the way tc and the kernel do", () => {
    assert.equal(ticksRoundTrip(3_750_000, 62_500), 62_493); // `tc -d class show`: "burst 62493b/1"
    assert.equal(ticksRoundTrip(3_750_000, 67_050), 67_050); // "burst 67050b/1"
    assert.equal(ticksRoundTrip(1_250_000, 62_500), 62_500); // "burst 62500b/1"
    assert.equal(tbfBurstRoundTrip(7_500_000, 3028), 3022); // tc -j qdisc: "burst":3022
    assert.equal(tbfLatency(7_500_000, 75_000, 3028), 9597); // "lat":9597
    assert.equal(tbfBurstRoundTrip(2_500_000, 3028), 3027);
    assert.equal(tbfLatency(2_500_000, 25_000, 3028), 8789);
    assert.equal(tcSizeText(65_536), "64Kb");
    assert.equal(tcSizeText(1024 * 1024 + 100), "1Mb");
    assert.equal(tcSizeText(62_493), "62493b");
  });
});

// ---------------------------------------------------------------------------------------------------------
// Running and checking

function options(d: Pick<Desired, "policy" | "uuid">, extra: Partial<PlanOptions> = {}): PlanOptions {
  return { leaf: d.policy.leaf, scope: [d.uuid], sweep: false, ...extra };
}

/** Compare with test/golden/expected/<name>.txt (or write it, with UPDATE_GOLDEN=1). */
const goldens = new Goldens(EXPECTED, checkInvariants);
const assertGolden = (name: string, r: Rendered) => goldens.check(name, r);

/** Rules every rendered batch must follow, whatever the case. */
function checkInvariants(name: string, got: string[]): void {
  for (const line of got) {
    const ctx = `${name}: ${line}`;
    checkLineBasics(ctx, line, /^vqi[0-9a-f]{12}$/);
    if (/^tc filter (add|replace|del) /.test(line)) {
      assert.match(line, / (ingress|egress) protocol all prio 64000\b/, ctx);
    }
    if (/ u32 /.test(line)) assert.match(line, / u32 match u32 0 0 /, ctx);
    if (/^tc qdisc replace dev \S+ root /.test(line))
      assert.match(line, /root handle 7651: htb default 1$/, ctx);
  }
}

interface Case {
  plan: Plan;
  rendered: Rendered;
  kernel: FakeKernel;
  observed: Observed;
}

function runCase(
  d: Desired,
  caps: Capabilities,
  kernel = freshKernel(d.interfaces),
  extra: Partial<PlanOptions> = {},
): Case {
  const observed = kernel.observe();
  const p = plan(d.interfaces, observed, caps, options(d, extra));
  return { plan: p, rendered: render(p.ops), kernel, observed };
}

/** Apply the plan to the fake kernel, observe again and plan again: nothing may be left to do. */
function assertIdempotent(c: Case, d: Desired, caps: Capabilities): void {
  c.kernel.apply(c.plan.ops);
  const again = plan(d.interfaces, c.kernel.observe(c.plan.records), caps, options(d));
  assert.deepEqual(lines(render(again.ops)), [], "a second plan over the applied state has nothing to do");
  assert.deepEqual(
    again.problems.map((p) => p.code),
    c.plan.problems.map((p) => p.code),
  );
}

const codes = (p: Plan) => p.problems.map((x) => x.code);
const opsFor = (p: Plan, key: string) => p.ops.filter((o) => o.iface === key);

// ---------------------------------------------------------------------------------------------------------
// Cases

const M = {
  a1: "52:54:00:6d:00:01",
  a2: "52:54:00:6d:00:02",
  b1: "52:54:00:0f:00:01",
};
const IN_OUT = { inbound: { average: 3750 }, outbound: { average: 1250 } }; // 30 Mbit/s down, 10 Mbit/s up

describe("golden: one interface of each type, <bandwidth> inbound + outbound (THIS_KERNEL)", () => {
  const types: [string, IfaceSpec][] = [
    ["type-bridge", bridge(M.a1, "vnet1", IN_OUT)],
    [
      "type-network",
      {
        type: "network",
        mac: M.a1,
        dev: "vnet1",
        source: "<source network='lab' bridge='virbr-lab'/>",
        ...IN_OUT,
      },
    ],
    ["type-ethernet", { type: "ethernet", mac: M.a1, dev: "tap-web1", ...IN_OUT }],
    [
      "type-direct",
      {
        type: "direct",
        mac: M.a1,
        dev: "macvtap0",
        source: "<source dev='uplinkA' mode='bridge'/>",
        ...IN_OUT,
      },
    ],
    [
      "type-ovs",
      { type: "bridge", mac: M.a1, dev: "vnet2", source: "<source bridge='obr0'/>", ovs: true, ...IN_OUT },
    ],
  ];
  for (const [name, spec] of types) {
    test(name, () => {
      const d = desired(domainXml("web1", UUID_A, [spec]));
      const c = runCase(d, THIS_KERNEL);
      assert.deepEqual(c.plan.problems, []);
      assertGolden(name, c.rendered);
      assertIdempotent(c, d, THIS_KERNEL);
    });
  }

  test("direct is swapped: guest download through the IFB, upload on the macvtap's root", () => {
    const d = desired(domainXml("web1", UUID_A, [types[3][1]]));
    const c = runCase(d, THIS_KERNEL);
    const ifb = interfaceIfbName(UUID_A, M.a1);
    const classes = c.plan.ops.filter((o) => o.op === "class-replace");
    const onIfb = classes.find((o) => o.dev === ifb);
    const onTap = classes.find((o) => o.dev === "macvtap0");
    assert.equal(onIfb?.direction, "inbound");
    assert.equal(onIfb?.op === "class-replace" && onIfb.htb.rateBytesPerSec, 3_750_000);
    assert.equal(onTap?.direction, "outbound");
    assert.equal(onTap?.op === "class-replace" && onTap.htb.rateBytesPerSec, 1_250_000);
  });

  test("not swapped: guest download on the tap's root, upload through the IFB", () => {
    const d = desired(domainXml("web1", UUID_A, [types[0][1]]));
    const c = runCase(d, THIS_KERNEL);
    const classes = c.plan.ops.filter((o) => o.op === "class-replace");
    assert.equal(classes.find((o) => o.dev === "vnet1")?.direction, "inbound");
    assert.equal(classes.find((o) => o.dev === interfaceIfbName(UUID_A, M.a1))?.direction, "outbound");
  });
});

describe("golden: where the limits come from", () => {
  test("peak-burst: average 1000 kB/s, peak 5000 kB/s, burst 1024 KiB", () => {
    const d = desired(
      domainXml("web1", UUID_A, [
        bridge(M.a1, "vnet1", {
          inbound: { average: 1000, peak: 5000, burst: 1024 },
          outbound: { average: 500, peak: 1000, burst: 64 },
        }),
      ]),
    );
    const c = runCase(d, THIS_KERNEL);
    assertGolden("peak-burst", c.rendered);
    const tap = c.plan.ops.find((o) => o.op === "class-replace" && o.dev === "vnet1");
    assert.ok(tap?.op === "class-replace");
    assert.equal(tap.htb.rateBytesPerSec, 1_000_000);
    assert.equal(tap.htb.ceilBytesPerSec, 5_000_000);
    assert.equal(tap.htb.burstBytes, 1024 * 1024);
    assertIdempotent(c, d, THIS_KERNEL);
  });

  test("metadata-source: virtqos <metadata> beats <bandwidth>", () => {
    const d = desired(
      domainXml(
        "web1",
        UUID_A,
        [bridge(M.a1, "vnet1", { inbound: { average: 125 } })],
        `<vq:qos xmlns:vq="https://virtqos.dev/xmlns/qos/1"><vq:interface mac="${M.a1}"><vq:inbound average="2500"/><vq:outbound average="625" burst="128"/></vq:interface></vq:qos>`,
      ),
    );
    assert.equal(d.interfaces[0].inbound?.source, "metadata");
    assert.equal(d.interfaces[0].outbound?.source, "metadata");
    const c = runCase(d, THIS_KERNEL);
    assertGolden("metadata-source", c.rendered);
    assertIdempotent(c, d, THIS_KERNEL);
  });

  test("policy-source: explicit units in the policy file", () => {
    const d = desired(
      domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]),
      `domains:
  - name: web1
    inbound: { average: 25mbit, peak: 50mbit, burst: 128KiB }
    outbound: { average: 2MB/s }
`,
    );
    assert.equal(d.interfaces[0].inbound?.source, "policy");
    const c = runCase(d, THIS_KERNEL);
    assertGolden("policy-source", c.rendered);
    assertIdempotent(c, d, THIS_KERNEL);
  });

  test("policy-unlimited: `unlimited` removes the XML's limit for that direction", () => {
    const d = desired(
      domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]),
      "domains:\n  - name: web1\n    outbound: unlimited\n",
    );
    const c = runCase(d, THIS_KERNEL);
    assertGolden("policy-unlimited", c.rendered);
    assert.ok(c.plan.ops.every((o) => o.direction !== "outbound"));
  });

  test("fixture-jason: the real libvirt 9.0 XML with policy defaults, all four interface types", () => {
    const xml = readFileSync(new URL("jason-started-begin.xml", FIXTURES), "utf8");
    const d = desired(xml, "defaults:\n  inbound: { average: 30mbit }\n  outbound: { average: 10mbit }\n");
    assert.equal(d.warnings.length, 1, "the foreign <metadata> is warned about");
    const c = runCase(d, THIS_KERNEL);
    assert.deepEqual(c.plan.problems, []);
    assertGolden("fixture-jason", c.rendered);
    assertIdempotent(c, d, THIS_KERNEL);
  });

  test("fixture-cliff-release: at release the managed tap has no name; nothing to do without a record", () => {
    const xml = readFileSync(new URL("cliff-release-end.xml", FIXTURES), "utf8");
    const d = desired(xml, "defaults:\n  inbound: { average: 30mbit }\n");
    const kernel = new FakeKernel(); // the taps are gone at release
    const c = runCase(d, THIS_KERNEL, kernel);
    assertGolden("fixture-cliff-release", c.rendered);
    assert.equal(c.plan.notes.length, 2);
    assert.ok(c.plan.notes.every((n) => n.level === "info" && /does not exist/.test(n.message)));
  });
});

describe("golden: upload policing", () => {
  const xml = domainXml("web1", UUID_A, [
    bridge(M.a1, "vnet1"),
    bridge(M.a2, "vnet2", { inbound: { average: 3750 } }),
  ]);
  const policy = `domains:
  - name: web1
    interfaces:
      - mac: "${M.a1}"
        inbound: { average: 30mbit }
        outbound: { average: 20mbit, mode: police }
`;

  test("police-production: matchall police on the tap's ingress", () => {
    const d = desired(xml, policy);
    const c = runCase(d, PRODUCTION);
    assert.deepEqual(c.plan.problems, []);
    assertGolden("police-production", c.rendered);
    assert.ok(c.rendered.tc.some((l) => / matchall .*police rate 20000000bit /.test(l)));
    assert.ok(
      !c.rendered.ipPre.some((l) => l.includes(interfaceIfbName(UUID_A, M.a1))),
      "no IFB for a policed upload",
    );
    assertIdempotent(c, d, PRODUCTION);
  });

  // iproute2's matchall only takes actions after the `action` keyword: `matchall police ...` is refused by tc
  // itself ("What is \"police\"?", checked with iproute2 6.1), while u32 accepts a bare `police`.
  test("matchall police is written with the `action` keyword", () => {
    const c = runCase(desired(xml, policy), PRODUCTION);
    const line = c.rendered.tc.find((l) => / police /.test(l));
    assert.match(
      line ?? "",
      / handle 1 matchall action police rate 20000000bit burst \d+b mtu 64kb conform-exceed drop$/,
    );
  });

  test("police-production-u32: u32 police where matchall is missing", () => {
    const caps = { ...PRODUCTION, classifiers: ["u32"] };
    const d = desired(xml, policy);
    const c = runCase(d, caps);
    assertGolden("police-production-u32", c.rendered);
    assert.ok(c.rendered.tc.some((l) => / u32 match u32 0 0 police rate 20000000bit .* flowid :1$/.test(l)));
    assertIdempotent(c, d, caps);
  });

  test("police-upload-setting: `upload: police` polices XML limits", () => {
    const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]), "upload: police\n");
    const c = runCase(d, PRODUCTION);
    assertGolden("police-upload-setting", c.rendered);
    assertIdempotent(c, d, PRODUCTION);
  });

  test("police-this-kernel: POLICE_UNAVAILABLE and no ops for that interface; the other is still planned", () => {
    const d = desired(xml, policy);
    const c = runCase(d, THIS_KERNEL);
    assert.deepEqual(codes(c.plan), ["POLICE_UNAVAILABLE"]);
    assert.equal(c.plan.problems[0].iface, `${UUID_A}/${M.a1}`);
    assert.equal(c.plan.problems[0].dev, "vnet1");
    assert.deepEqual(opsFor(c.plan, `${UUID_A}/${M.a1}`), []);
    assert.ok(
      c.plan.ops.every((o) => o.dev !== "vnet1"),
      "nothing touches vnet1",
    );
    assert.ok(opsFor(c.plan, `${UUID_A}/${M.a2}`).length > 0);
    assertGolden("police-this-kernel", c.rendered);
    assertIdempotent(c, d, THIS_KERNEL);
  });
});

describe("golden: leaves and classifiers by capability", () => {
  test("production-fq-codel: fq_codel leaves, matchall redirect", () => {
    const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]));
    const c = runCase(d, PRODUCTION);
    assertGolden("production-fq-codel", c.rendered);
    assert.ok(c.rendered.tc.some((l) => / fq_codel$/.test(l)));
    assert.ok(c.rendered.tc.some((l) => / handle 1 matchall action mirred egress redirect dev vqi/.test(l)));
    assertIdempotent(c, d, PRODUCTION);
  });

  test("leaf-sfq: the policy asks for sfq and the kernel has it", () => {
    const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]), "leaf: sfq\n");
    const c = runCase(d, PRODUCTION);
    assertGolden("leaf-sfq", c.rendered);
    assert.ok(c.rendered.tc.some((l) => / sfq limit \d+ perturb 10$/.test(l)));
    assert.ok(!c.rendered.tc.some((l) => /fq_codel/.test(l)));
    assertIdempotent(c, d, PRODUCTION);
  });

  test("leaf-sfq-unavailable: sfq asked for on THIS_KERNEL falls back to a FIFO", () => {
    const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]), "leaf: sfq\n");
    const c = runCase(d, THIS_KERNEL);
    assert.ok(!c.rendered.tc.some((l) => / sfq /.test(l)));
  });

  const rates: [string, number, RegExp][] = [
    ["rate-1mbit", 125, / tbf rate 2000000bit burst 3028 limit \d+$/],
    ["rate-100mbit", 12_500, / bfifo limit 250000$/],
    ["rate-10gbit", 1_250_000, / bfifo limit 25000000$/],
  ];
  for (const [name, kBps, leaf] of rates) {
    test(`${name}: leaf by rate on THIS_KERNEL`, () => {
      const d = desired(
        domainXml("web1", UUID_A, [
          bridge(M.a1, "vnet1", { inbound: { average: kBps }, outbound: { average: kBps } }),
        ]),
      );
      const c = runCase(d, THIS_KERNEL);
      assertGolden(name, c.rendered);
      const leaves = c.rendered.tc.filter((l) => / parent 7651:1 handle /.test(l));
      assert.equal(leaves.length, 2);
      for (const l of leaves) assert.match(l, leaf);
      assertIdempotent(c, d, THIS_KERNEL);
    });
  }

  // fq_codel behind a GSO-splitting tbf (2x the ceiling, burst 1 ms of that and at least 2 frames, fq_codel
  // grafted on tbf's class) where a 64 KiB GSO packet takes longer than fq_codel's 5 ms target at the ceiling
  // (below ~53.64 Mbit/s, where a GSO packet takes 10 ms, twice fq_codel's target); plain fq_codel above.
  const fqRates: [string, number, RegExp[]][] = [
    [
      "fq-codel-10mbit",
      1250,
      [
        /^qdisc replace dev \S+ parent 7651:1 handle 7656: tbf rate 20000000bit burst 3028 limit 25000$/,
        /^qdisc replace dev \S+ parent 7656:1 handle 7657: fq_codel$/,
      ],
    ],
    ["fq-codel-100mbit", 12_500, [/^qdisc replace dev \S+ parent 7651:1 handle 7654: fq_codel$/]],
    ["fq-codel-200mbit", 25_000, [/^qdisc replace dev \S+ parent 7651:1 handle 7654: fq_codel$/]],
  ];
  for (const [name, kBps, leaf] of fqRates) {
    test(`${name}: fq_codel leaf by rate on PRODUCTION`, () => {
      const d = desired(
        domainXml("web1", UUID_A, [
          bridge(M.a1, "vnet1", { inbound: { average: kBps }, outbound: { average: kBps } }),
        ]),
      );
      const c = runCase(d, PRODUCTION);
      assert.deepEqual(c.plan.problems, []);
      assertGolden(name, c.rendered);
      for (const dev of ["vnet1", interfaceIfbName(UUID_A, M.a1)]) {
        const leaves = c.rendered.tc.filter(
          (l) => l.startsWith(`qdisc replace dev ${dev} parent `) && !/ root /.test(l),
        );
        assert.equal(leaves.length, leaf.length, `${dev}: ${leaves.join(" | ")}`);
        for (const [i, l] of leaves.entries()) assert.match(l, leaf[i]);
      }
      assertIdempotent(c, d, PRODUCTION);
    });
  }

  test("the split stops at 53.64 Mbit/s: a GSO packet (67,050 B) then takes 10 ms at the ceiling", () => {
    const leafAt = (kBps: number) => {
      const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", { inbound: { average: kBps } })]));
      return runCase(d, PRODUCTION).rendered.tc.filter((l) => / parent 7651:1 /.test(l));
    };
    assert.match(leafAt(6_704).join("\n"), / tbf rate 107264000bit /);
    assert.match(leafAt(6_705).join("\n"), / handle 7654: fq_codel$/);
  });

  test("no-clsact: the old ingress qdisc carries the redirect", () => {
    const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]));
    const c = runCase(d, NO_CLSACT);
    assertGolden("no-clsact", c.rendered);
    assert.ok(c.rendered.tc.includes("qdisc add dev vnet1 handle ffff: ingress"));
    assertIdempotent(c, d, NO_CLSACT);
  });

  test("no-ifb: IFB_UNAVAILABLE, and nothing for that interface", () => {
    const d = desired(
      domainXml("web1", UUID_A, [
        bridge(M.a1, "vnet1", IN_OUT),
        bridge(M.a2, "vnet2", { inbound: { average: 3750 } }),
      ]),
    );
    const c = runCase(d, NO_IFB);
    assert.deepEqual(codes(c.plan), ["IFB_UNAVAILABLE"]);
    assert.deepEqual(opsFor(c.plan, `${UUID_A}/${M.a1}`), []);
    assertGolden("no-ifb", c.rendered);
  });
});

describe("golden: interfaces that cannot be shaped now", () => {
  test("vhostuser: no ops, a note", () => {
    const d = desired(
      domainXml("web1", UUID_A, [
        {
          type: "vhostuser",
          mac: M.a1,
          source: "<source type='unix' path='/run/vhost.sock' mode='server'/>",
          inbound: { average: 1000 },
        },
      ]),
    );
    const c = runCase(d, PRODUCTION);
    assertGolden("vhostuser", c.rendered);
    assert.deepEqual(c.plan.ops, []);
    assert.deepEqual(c.plan.problems, []);
    assert.equal(c.plan.notes.length, 1);
    assert.match(c.plan.notes[0].message, /not enforceable/);
    assert.match(c.plan.notes[0].message, /vhostuser/);
  });

  test("dev-missing: the tap is not in links; no ops, a note", () => {
    const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet9", IN_OUT)]));
    const c = runCase(d, THIS_KERNEL, freshKernel(d.interfaces, ["vnet9"]));
    assertGolden("dev-missing", c.rendered);
    assert.deepEqual(c.plan.ops, []);
    assert.equal(c.plan.notes.length, 1);
    assert.match(c.plan.notes[0].message, /vnet9 does not exist/);
  });

  test("no-limits: an interface with no limit anywhere gets a note and no ops", () => {
    const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1")]));
    const c = runCase(d, THIS_KERNEL);
    assert.deepEqual(c.plan.ops, []);
    assert.match(c.plan.notes[0].message, /no bandwidth limits/);
  });

  test("foreign-root: ROOT_QDISC_FOREIGN for that tap, the domain's other interface still planned", () => {
    const d = desired(
      domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT), bridge(M.a2, "vnet2", IN_OUT)]),
    );
    const kernel = freshKernel(d.interfaces);
    const vnet1 = kernel.devs.get("vnet1");
    assert.ok(vnet1);
    vnet1.qdiscs = [{ kind: "htb", handle: "1:", parent: "root", options: { r2q: 10, default: "0x0" } }];
    const c = runCase(d, THIS_KERNEL, kernel);
    assert.deepEqual(codes(c.plan), ["ROOT_QDISC_FOREIGN"]);
    assert.equal(c.plan.problems[0].dev, "vnet1");
    assert.match(c.plan.problems[0].message, /htb 1:/);
    assert.deepEqual(opsFor(c.plan, `${UUID_A}/${M.a1}`), []);
    assert.ok(
      c.plan.ops.every((o) => o.dev !== "vnet1" && o.dev !== interfaceIfbName(UUID_A, M.a1)),
      "neither the tap nor its IFB is touched",
    );
    assert.ok(opsFor(c.plan, `${UUID_A}/${M.a2}`).length > 0);
    assert.deepEqual(
      c.plan.records.flatMap((r) => r.interfaces.map((i) => i.mac)),
      [M.a2],
      "only the shaped interface is recorded",
    );
    assertGolden("foreign-root", c.rendered);
  });
});

describe("golden: changes", () => {
  test("change-leaf-kind: 10 -> 100 Mbit/s swaps the tbf leaf for a bfifo under a new handle", () => {
    const small = desired(
      domainXml("web1", UUID_A, [
        bridge(M.a1, "vnet1", { inbound: { average: 1250 }, outbound: { average: 1250 } }),
      ]),
    );
    const c = runCase(small, THIS_KERNEL);
    c.kernel.apply(c.plan.ops);
    const big = desired(
      domainXml("web1", UUID_A, [
        bridge(M.a1, "vnet1", { inbound: { average: 12_500 }, outbound: { average: 12_500 } }),
      ]),
    );
    const p = plan(big.interfaces, c.kernel.observe(c.plan.records), THIS_KERNEL, options(big));
    assertGolden("change-leaf-kind", render(p.ops));
    assert.deepEqual(
      p.ops.map((o) => o.op),
      ["class-replace", "leaf-replace", "class-replace", "leaf-replace"],
    );
    c.kernel.apply(p.ops);
    assert.deepEqual(plan(big.interfaces, c.kernel.observe(p.records), THIS_KERNEL, options(big)).ops, []);
  });

  // Between the GSO-splitting tbf + fq_codel and plain fq_codel: the leaf is replaced under the other kind's
  // handle, and a tbf's fq_codel child is grafted after the tbf it hangs on.
  const fqChange = (fromKBps: number, toKBps: number) => {
    const bw = (kBps: number) => ({ inbound: { average: kBps }, outbound: { average: kBps } });
    const from = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", bw(fromKBps))]));
    const c = runCase(from, PRODUCTION);
    c.kernel.apply(c.plan.ops);
    const to = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", bw(toKBps))]));
    const p = plan(to.interfaces, c.kernel.observe(c.plan.records), PRODUCTION, options(to));
    c.kernel.apply(p.ops);
    assert.deepEqual(plan(to.interfaces, c.kernel.observe(p.records), PRODUCTION, options(to)).ops, []);
    const leaves = (dev: string) =>
      c.kernel.devs
        .get(dev)
        ?.qdiscs.filter((q) => q.parent !== "root" && q.parent !== "ffff:fff1")
        .map((q) => `${q.kind} ${q.handle} ${q.parent}`)
        .sort();
    return { p, leaves };
  };

  test("change-fq-codel-unsplit: 10 -> 200 Mbit/s replaces tbf + fq_codel with fq_codel", () => {
    const { p, leaves } = fqChange(1250, 25_000);
    assertGolden("change-fq-codel-unsplit", render(p.ops));
    assert.deepEqual(
      p.ops.map((o) => o.op),
      ["class-replace", "leaf-replace", "class-replace", "leaf-replace"],
    );
    assert.deepEqual(leaves("vnet1"), ["fq_codel 7654: 7651:1"], "the tbf went with its child");
  });

  test("change-fq-codel-split: 200 -> 10 Mbit/s puts fq_codel behind a tbf", () => {
    const { p, leaves } = fqChange(25_000, 1250);
    assertGolden("change-fq-codel-split", render(p.ops));
    assert.deepEqual(
      p.ops.map((o) => o.op),
      ["class-replace", "leaf-replace", "leaf-replace", "class-replace", "leaf-replace", "leaf-replace"],
    );
    assert.deepEqual(leaves("vnet1"), ["fq_codel 7657: 7656:1", "tbf 7656: 7651:1"]);
  });

  test("change-fq-codel-rate: 10 -> 20 Mbit/s changes the tbf in place and keeps its fq_codel", () => {
    const { p, leaves } = fqChange(1250, 2500);
    assertGolden("change-fq-codel-rate", render(p.ops));
    assert.ok(!p.ops.some((o) => o.op === "leaf-replace" && o.leaf.kind === "fq_codel"));
    assert.deepEqual(leaves("vnet1"), ["fq_codel 7657: 7656:1", "tbf 7656: 7651:1"]);
  });

  test("a tbf that lost its fq_codel child gets it back, and nothing else changes", () => {
    const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", { inbound: { average: 1250 } })]));
    const c = runCase(d, PRODUCTION);
    c.kernel.apply(c.plan.ops);
    const tap = c.kernel.devs.get("vnet1");
    assert.ok(tap);
    tap.qdiscs = tap.qdiscs.filter((q) => q.kind !== "fq_codel");
    const p = plan(d.interfaces, c.kernel.observe(c.plan.records), PRODUCTION, options(d));
    assert.deepEqual(lines(render(p.ops)), [
      "tc qdisc replace dev vnet1 parent 7656:1 handle 7657: fq_codel",
    ]);
  });

  test("change-remove-direction: dropping the upload limit removes the redirect and the IFB", () => {
    const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]));
    const c = runCase(d, THIS_KERNEL);
    c.kernel.apply(c.plan.ops);
    const d2 = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", { inbound: { average: 3750 } })]));
    const p = plan(d2.interfaces, c.kernel.observe(c.plan.records), THIS_KERNEL, options(d2));
    assertGolden("change-remove-direction", render(p.ops));
    assert.deepEqual(
      p.ops.map((o) => o.op),
      ["filter-del", "hook-del", "ifb-del"],
    );
    c.kernel.apply(p.ops);
    assert.deepEqual(plan(d2.interfaces, c.kernel.observe(p.records), THIS_KERNEL, options(d2)).ops, []);
  });

  test("change-to-police: shaping through an IFB becomes policing", () => {
    const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]));
    const caps = { ...PRODUCTION, classifiers: ["u32"] };
    const c = runCase(d, caps);
    c.kernel.apply(c.plan.ops);
    const d2 = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]), "upload: police\n");
    const p = plan(d2.interfaces, c.kernel.observe(c.plan.records), caps, options(d2));
    assertGolden("change-to-police", render(p.ops));
    c.kernel.apply(p.ops);
    assert.deepEqual(plan(d2.interfaces, c.kernel.observe(p.records), caps, options(d2)).ops, []);
  });
});

describe("idempotence", () => {
  test("re-planning over exactly the desired state yields zero ops (several recipes)", () => {
    const cases: [string, Capabilities][] = [
      ["", THIS_KERNEL],
      ["", PRODUCTION],
      ["leaf: sfq\n", PRODUCTION],
      ["leaf: fifo\n", PRODUCTION],
      ["upload: police\n", PRODUCTION],
      ["", NO_CLSACT],
    ];
    for (const [policy, caps] of cases) {
      for (const bw of [
        IN_OUT,
        { inbound: { average: 125, peak: 250, burst: 32 }, outbound: { average: 1_250_000 } },
      ]) {
        const d = desired(
          domainXml("web1", UUID_A, [
            bridge(M.a1, "vnet1", bw),
            { type: "direct", mac: M.a2, dev: "macvtap0", ...bw },
          ]),
          policy,
        );
        const c = runCase(d, caps);
        assert.ok(c.plan.ops.length > 0);
        assertIdempotent(c, d, caps);
      }
    }
  });

  test("the record keeps createdHook across re-applies", () => {
    const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]));
    const c = runCase(d, THIS_KERNEL);
    assert.equal(c.plan.records[0].interfaces[0].createdHook, true);
    c.kernel.apply(c.plan.ops);
    const again = plan(d.interfaces, c.kernel.observe(c.plan.records), THIS_KERNEL, options(d));
    assert.equal(again.records[0].interfaces[0].createdHook, true);
    assert.equal(again.records[0].interfaces[0].ifindex, 11);
    assert.equal(recordIfb(UUID_A, again.records[0].interfaces[0]), interfaceIfbName(UUID_A, M.a1));
  });

  test("a changed rate replaces only the class", () => {
    const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]));
    const c = runCase(d, THIS_KERNEL);
    c.kernel.apply(c.plan.ops);
    const d2 = desired(
      domainXml("web1", UUID_A, [
        bridge(M.a1, "vnet1", { inbound: { average: 3750 }, outbound: { average: 2500 } }),
      ]),
    );
    const again = plan(d2.interfaces, c.kernel.observe(c.plan.records), THIS_KERNEL, options(d2));
    assertGolden("change-outbound-rate", render(again.ops));
    assert.ok(again.ops.every((o) => o.dev === interfaceIfbName(UUID_A, M.a1)));
    c.kernel.apply(again.ops);
  });
});

// ---------------------------------------------------------------------------------------------------------
// Removal and sweeping

/** A kernel where domain web1 (UUID_A) was shaped on vnet1 by THIS_KERNEL's recipe, plus its record. */
function shapedKernel(createdHook: boolean): { kernel: FakeKernel; records: DomainRecord[] } {
  const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]));
  const c = runCase(d, THIS_KERNEL);
  c.kernel.apply(c.plan.ops);
  const records = c.plan.records.map((r) => ({
    ...r,
    interfaces: r.interfaces.map((i) => ({ ...i, createdHook })),
  }));
  return { kernel: c.kernel, records };
}

describe("golden: removal", () => {
  const scope = { policy: emptyPolicy(), uuid: UUID_A };

  test("the shaped state looks as expected before removal", () => {
    const { kernel } = shapedKernel(true);
    const ifb = kernel.devs.get(interfaceIfbName(UUID_A, M.a1));
    assert.equal(ifb?.alias, formatIfbAlias({ role: "iface", domainUuid: UUID_A, mac: M.a1, dev: "vnet1" }));
    assert.deepEqual(
      kernel.devs
        .get("vnet1")
        ?.qdiscs.map((q) => `${q.kind} ${q.handle}`)
        .sort(),
      ["clsact ffff:", "htb 7651:", "tbf 7655:"],
    );
  });

  test("remove-created-hook: root-del, filter-del, hook-del, ifb-del", () => {
    const { kernel, records } = shapedKernel(true);
    const p = plan([], kernel.observe(records), THIS_KERNEL, options(scope));
    assert.deepEqual(
      p.ops.map((o) => o.op),
      ["root-del", "filter-del", "hook-del", "ifb-del"],
    );
    assert.deepEqual(p.records, []);
    assert.deepEqual(p.forget, [UUID_A]);
    assertGolden("remove-created-hook", render(p.ops));
    kernel.apply(p.ops);
    assert.deepEqual(
      kernel.devs.get("vnet1")?.qdiscs.map((q) => q.kind),
      ["noqueue"],
    );
    assert.ok(!kernel.devs.has(interfaceIfbName(UUID_A, M.a1)));
  });

  test("remove-kept-hook: the hook qdisc stays when virtqos did not create it", () => {
    const { kernel, records } = shapedKernel(false);
    const p = plan([], kernel.observe(records), THIS_KERNEL, options(scope));
    assert.deepEqual(
      p.ops.map((o) => o.op),
      ["root-del", "filter-del", "ifb-del"],
    );
    assertGolden("remove-kept-hook", render(p.ops));
    kernel.apply(p.ops);
  });

  test("remove-foreign-filter: a filter at prio 10 survives and keeps the hook qdisc", () => {
    const { kernel, records } = shapedKernel(true);
    kernel.devs.get("vnet1")?.filters.push({ hook: "ingress", prio: 10, kind: "u32", protocol: "ip" });
    const p = plan([], kernel.observe(records), THIS_KERNEL, options(scope));
    assert.deepEqual(
      p.ops.map((o) => o.op),
      ["root-del", "filter-del", "ifb-del"],
    );
    for (const o of p.ops) if (o.op === "filter-del") assert.equal(o.prio, 64000);
    assert.ok(!lines(render(p.ops)).some((l) => /prio 10\b/.test(l)));
    assertGolden("remove-foreign-filter", render(p.ops));
    kernel.apply(p.ops);
    assert.deepEqual(
      kernel.devs.get("vnet1")?.filters.map((f) => f.prio),
      [10],
    );
  });

  // Without a record (lost or never written), the domain's IFB is still found by its alias and deleted, but the
  // tap's redirect filter to it is left behind: mirred then drops every packet (guest upload blackholed).
  test("removing an IFB never leaves a redirect to it behind", () => {
    const { kernel } = shapedKernel(true);
    const p = plan([], kernel.observe([]), THIS_KERNEL, options(scope));
    kernel.apply(p.ops);
    const dangling =
      kernel.devs.get("vnet1")?.filters.filter((f) => f.redirectDev?.startsWith("(gone:")) ?? [];
    assert.deepEqual(dangling, [], `ops were: ${lines(render(p.ops)).join(" | ")}`);
  });

  test("another domain's scope touches nothing of web1", () => {
    const { kernel, records } = shapedKernel(true);
    const p = plan(
      [],
      kernel.observe(records),
      THIS_KERNEL,
      options({ policy: emptyPolicy(), uuid: UUID_B }),
    );
    assert.deepEqual(p.ops, []);
  });

  test("a reused tap name (different ifindex) is not cleaned on the record's word", () => {
    const { kernel, records } = shapedKernel(true);
    const stale = records.map((r) => ({
      ...r,
      interfaces: r.interfaces.map((i) => ({ ...i, ifindex: 999 })),
    }));
    const p = plan([], kernel.observe(stale), THIS_KERNEL, options(scope));
    // Only the redirect to the IFB being deleted may go (a dangling redirect drops traffic); the tap's tree
    // and hook qdisc are left to whoever uses vnet1 now.
    assert.deepEqual(
      p.ops.filter((o) => o.dev === "vnet1").map((o) => o.op),
      ["filter-del"],
      JSON.stringify(p.ops),
    );
  });

  test("scope all finds virtqos objects without records", () => {
    const { kernel } = shapedKernel(true);
    const ifb = interfaceIfbName(UUID_A, M.a1);
    const p = plan([], kernel.observe([]), THIS_KERNEL, options(scope, { scope: "all" }));
    const got = p.ops.map((o) => `${o.op} ${o.dev}`);
    for (const want of ["root-del vnet1", "filter-del vnet1", `ifb-del ${ifb}`])
      assert.ok(got.includes(want), `${want} in ${got}`);
    assert.ok(!got.includes("hook-del vnet1"), "without a record virtqos cannot know it created the clsact");
    kernel.apply(p.ops);
    assert.ok(!kernel.devs.has(ifb));
  });
});

describe("golden: sweep", () => {
  function orphanKernel(): FakeKernel {
    const k = new FakeKernel();
    k.addLink("vnet1", { ifindex: 11, kind: "tun" });
    const orphan = interfaceIfbName(UUID_B, M.b1);
    k.addLink(orphan, {
      kind: "ifb",
      alias: formatIfbAlias({ role: "iface", domainUuid: UUID_B, mac: M.b1, dev: "vnet7" }),
    });
    // An IFB of a live tap, another domain's, and someone else's IFB without our alias.
    k.addLink(interfaceIfbName(UUID_B, "52:54:00:0f:00:02"), {
      kind: "ifb",
      alias: formatIfbAlias({ role: "iface", domainUuid: UUID_B, mac: "52:54:00:0f:00:02", dev: "vnet1" }),
    });
    k.addLink("ifb0", { kind: "ifb" });
    return k;
  }

  test("sweep-on: an IFB aliased to a tap that no longer exists is deleted", () => {
    const p = plan([], orphanKernel().observe(), THIS_KERNEL, { leaf: "auto", scope: [UUID_A], sweep: true });
    assert.deepEqual(
      p.ops.map((o) => `${o.op} ${o.dev}`),
      [`ifb-del ${interfaceIfbName(UUID_B, M.b1)}`],
    );
    assert.equal(p.ops[0].iface, `${UUID_B}/${M.b1}`);
    assertGolden("sweep-on", render(p.ops));
  });

  test("sweep-off: the orphan is kept", () => {
    const p = plan([], orphanKernel().observe(), THIS_KERNEL, {
      leaf: "auto",
      scope: [UUID_A],
      sweep: false,
    });
    assert.deepEqual(p.ops, []);
    assertGolden("sweep-off", render(p.ops));
  });

  test("an alias that is not ours is never swept", () => {
    const k = orphanKernel();
    const observed = k.observe();
    assert.equal(parseIfbAlias(observed.links.get("ifb0")?.alias), undefined);
    const p = plan([], observed, THIS_KERNEL, { leaf: "auto", scope: "all", sweep: true });
    assert.ok(p.ops.every((o) => o.dev !== "ifb0"));
  });
});

describe("golden: libvirt's own <bandwidth> already on the device (kernels with the police action)", () => {
  // What libvirt 9.0 (virNetDevBandwidthSet) runs before the start hook for <outbound average='1250'/> on a
  // tap, or <inbound> on a macvtap (where the host's receive side is the guest's download):
  //   tc qdisc add dev vnet1 ingress
  //   tc filter add dev vnet1 parent ffff: protocol all u32 match u32 0 0 \
  //     police rate 1250kbps burst 1250kb mtu 64kb drop flowid :1
  // The kernel gives the filter the default priority 49152, which runs before virtqos's 64000.
  function libvirtPolice(kernel: FakeKernel, dev: string, kBps: number): void {
    const k = kernel.devs.get(dev);
    assert.ok(k);
    k.qdiscs.push({ kind: "ingress", handle: "ffff:", parent: "ffff:fff1", options: {} });
    k.filters.push({
      hook: "ingress",
      prio: 49152,
      kind: "u32",
      protocol: "all",
      police: { rate: kBps * 1000, burst: kBps * 1024 },
    });
  }
  const POLICY = "domains:\n  - name: web1\n    outbound: { average: 5mbit }\n";

  test("libvirt-police-tap: INGRESS_FILTER_FOREIGN names the filter; nothing of that interface is applied", () => {
    const d = desired(
      domainXml("web1", UUID_A, [
        bridge(M.a1, "vnet1", { outbound: { average: 1250 } }),
        bridge(M.a2, "vnet2", IN_OUT),
      ]),
      POLICY,
    );
    const kernel = freshKernel(d.interfaces);
    libvirtPolice(kernel, "vnet1", 1250);
    const c = runCase(d, PRODUCTION, kernel);
    assert.deepEqual(codes(c.plan), ["INGRESS_FILTER_FOREIGN"]);
    const [problem] = c.plan.problems;
    assert.equal(problem.dev, "vnet1");
    assert.equal(problem.iface, `${UUID_A}/${M.a1}`);
    assert.match(
      problem.message,
      /u32 police filter \(rate 10 Mbit\/s.*\) at ingress prio 49152 runs before virtqos's redirect at prio 64000/,
    );
    assert.match(problem.message, /tc filter del dev vnet1 ingress prio 49152/);
    assert.deepEqual(opsFor(c.plan, `${UUID_A}/${M.a1}`), []);
    assert.ok(c.plan.ops.every((o) => o.dev !== "vnet1" && o.dev !== interfaceIfbName(UUID_A, M.a1)));
    assert.ok(opsFor(c.plan, `${UUID_A}/${M.a2}`).length > 0, "the other interface is still shaped");
    // Recorded as refused, so `status` keeps saying it is not in force.
    const refused = c.plan.records.flatMap((r) => r.refused ?? []);
    assert.deepEqual(
      refused.map((r) => [r.mac, r.code, r.outbound?.rateBitsPerSec]),
      [[M.a1, "INGRESS_FILTER_FOREIGN", 5_000_000]],
    );
    assertGolden("libvirt-police-tap", c.rendered);
    assertIdempotent(c, d, PRODUCTION);
  });

  test("libvirt-police-macvtap: a macvtap's download is intercepted the same way", () => {
    const d = desired(
      domainXml("web1", UUID_A, [
        {
          type: "direct",
          mac: M.a1,
          dev: "macvtap0",
          source: "<source dev='uplinkA' mode='bridge'/>",
          inbound: { average: 3750 },
        },
      ]),
    );
    const kernel = freshKernel(d.interfaces);
    libvirtPolice(kernel, "macvtap0", 3750);
    const c = runCase(d, PRODUCTION, kernel);
    assert.deepEqual(codes(c.plan), ["INGRESS_FILTER_FOREIGN"]);
    assert.equal(c.plan.problems[0].direction, "inbound");
    assertGolden("libvirt-police-macvtap", c.rendered);
  });

  test("virtqos's own police mode does not hide behind libvirt's either", () => {
    const d = desired(
      domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", { outbound: { average: 1250 } })]),
      "upload: police\n",
    );
    const kernel = freshKernel(d.interfaces);
    libvirtPolice(kernel, "vnet1", 1250);
    assert.deepEqual(codes(runCase(d, PRODUCTION, kernel).plan), ["INGRESS_FILTER_FOREIGN"]);
  });

  test("a foreign filter after virtqos's priorities does not intercept: applied, the filter untouched", () => {
    const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]));
    const kernel = freshKernel(d.interfaces);
    const k = kernel.devs.get("vnet1");
    assert.ok(k);
    k.qdiscs.push({ kind: "clsact", handle: "ffff:", parent: "ffff:fff1", options: {} });
    k.filters.push({ hook: "ingress", prio: 65000, kind: "u32", protocol: "all" });
    const c = runCase(d, THIS_KERNEL, kernel);
    assert.deepEqual(c.plan.problems, []);
    assert.ok(c.rendered.tc.some((l) => / ingress protocol all prio 64000 u32 /.test(l)));
    assert.ok(!c.rendered.tc.some((l) => /prio 65000/.test(l)));
  });
});

describe("golden: police bucket (libvirt's rule, never below one GSO packet)", () => {
  // libvirt: burst = the given burst (KiB), else `average` read as KiB (about 1.024 s of data).
  const cases: [string, number, number | undefined, number][] = [
    // name, average kB/s, burst KiB, expected bucket bytes
    ["police-1mbit", 125, undefined, 125 * 1024],
    ["police-10mbit", 1250, undefined, 1250 * 1024],
    ["police-100mbit", 12500, undefined, 12500 * 1024],
    ["police-1mbit-small-burst", 125, 16, 65536 + 1514],
  ];
  for (const [name, average, burst, bucket] of cases) {
    test(`${name}: bucket ${bucket} B`, () => {
      const d = desired(
        domainXml("web1", UUID_A, [
          bridge(M.a1, "vnet1", { outbound: burst ? { average, burst } : { average } }),
        ]),
        "upload: police\n",
      );
      const c = runCase(d, PRODUCTION);
      assert.deepEqual(c.plan.problems, []);
      const police = c.plan.ops.find((o) => o.op === "filter-add" && o.filter.action === "police");
      assert.ok(police?.op === "filter-add" && police.filter.action === "police");
      assert.equal(police.filter.burstBytes, bucket);
      assert.ok(bucket >= 65536 + 1514, "a policer must pass a whole GSO packet");
      if (burst && burst * 1024 < bucket)
        assert.ok(
          c.plan.notes.some(
            (n) => n.level === "warning" && /police burst raised from 16 KiB/.test(n.message),
          ),
        );
      assertGolden(name, c.rendered);
      assertIdempotent(c, d, PRODUCTION);
    });
  }
});

describe("golden: the edges of libvirt's range fit what tc accepts", () => {
  test("rate-libvirt-max: average = peak = 4294967295 kB/s, burst 4294967295 KiB", () => {
    const max = { average: 4294967295, peak: 4294967295, burst: 4294967295 };
    const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", { inbound: max, outbound: max })]));
    const c = runCase(d, PRODUCTION);
    assert.deepEqual(c.plan.problems, []);
    assert.ok(
      c.plan.notes.some(
        (n) =>
          n.level === "warning" && /inbound burst lowered from 4 TiB|inbound burst lowered/.test(n.message),
      ),
      JSON.stringify(c.plan.notes),
    );
    assertGolden("rate-libvirt-max", c.rendered);
    for (const l of c.rendered.tc) assert.deepEqual(tcRejects(l), [], l);
  });

  test("rate-libvirt-min: average 1 kB/s", () => {
    const min = { average: 1 };
    const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", { inbound: min, outbound: min })]));
    const c = runCase(d, PRODUCTION);
    assert.deepEqual(c.plan.problems, []);
    assertGolden("rate-libvirt-min", c.rendered);
    assertIdempotent(c, d, PRODUCTION);
  });

  test("above libvirt's maximum the attribute is ignored with a warning", () => {
    const d = desired(
      domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", { inbound: { average: 4294967296 } })]),
    );
    assert.equal(d.interfaces[0].inbound, undefined);
    assert.ok(d.warnings.some((w) => /above libvirt's maximum 4294967295/.test(w)));
  });
});

describe("floors outside a group", () => {
  test("a lone floor is reported with its fix, not as 'no bandwidth limits found'", () => {
    const d = desired(
      domainXml("web1", UUID_A, [
        {
          type: "network",
          mac: M.a1,
          dev: "vnet1",
          source: "<source network='lab'/>",
          inbound: { floor: 200 },
        },
      ]),
    );
    assert.deepEqual(d.interfaces[0].floorOnly, ["inbound"]);
    const w = d.warnings.find((x) => /floor/.test(x));
    assert.ok(w);
    assert.match(
      w,
      /interface 52:54:00:6d:00:01 \(vnet1\): <bandwidth><inbound floor='200'> is ignored: a floor is a guarantee inside a group/,
    );
    assert.match(w, /select: \{ networks: \["lab"\] \}/);
    const c = runCase(d, THIS_KERNEL);
    assert.deepEqual(c.plan.ops, []);
    assert.ok(!c.plan.notes.some((n) => /no bandwidth limits found/.test(n.message)));
  });

  test("a floor next to an average: the average is applied, the floor reported as ignored", () => {
    const d = desired(
      domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", { inbound: { average: 1250, floor: 200 } })]),
    );
    assert.equal(d.interfaces[0].inbound?.rateBitsPerSec, 10_000_000);
    assert.equal(d.interfaces[0].floorOnly, undefined);
    assert.ok(
      d.warnings.some((x) => /inbound floor='200'> is ignored/.test(x) && /bridges: \["br0"\]/.test(x)),
    );
  });
});

test("every golden file belongs to a case", () => {
  if (UPDATE_GOLDEN) return;
  // group-*.txt and restore-*.txt belong to groups.test.ts and restore.test.ts, which check them themselves.
  const stale = goldens.unused((n) => !n.startsWith("group-") && !n.startsWith("restore-"));
  assert.deepEqual(stale, [], "golden files no test uses (renamed or removed cases?)");
});
