import assert from "node:assert/strict";
import { test } from "node:test";
import { parseDomainXml } from "../../src/core/domain-xml.js";
import { type Observed, plan } from "../../src/core/plan/index.js";
import { emptyPolicy, PolicyError, parsePolicy } from "../../src/core/policy.js";
import type { Capabilities } from "../../src/core/recipe.js";
import { resolveDomain } from "../../src/core/resolve.js";
import { render } from "../../src/core/tc/render.js";
import { PRODUCTION, THIS_KERNEL } from "../helpers/caps.js";
import { tcRejects } from "../helpers/tc-limits.js";

// Property: whatever limit libvirt XML or the policy file can express, every number the planner writes into
// a tc line is one tc and the kernel take as meant (test/helpers/tc-limits.ts says what that means). Inputs
// are drawn log-uniformly over each unit's whole range, with the range's ends always included.

const UUID = "6d0e4a6c-5b0f-4c1e-9d7a-1f2e3d4c5b6a";
const MAC = "52:54:00:6d:00:01";
const LIBVIRT_MAX = 4294967295;

/** Small deterministic PRNG (mulberry32) so a failure can be replayed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function logUniform(rand: () => number, lo: number, hi: number): number {
  return Math.round(Math.exp(Math.log(lo) + rand() * (Math.log(hi) - Math.log(lo))));
}

function observedWithTap(): Observed {
  return {
    links: new Map([["vnet1", { name: "vnet1", ifindex: 11, up: true, kind: "tun" }]]),
    devices: new Map([
      [
        "vnet1",
        {
          dev: "vnet1",
          qdiscs: [{ kind: "noqueue", handle: "0:", parent: "root", options: {} }],
          classes: [],
          filters: [],
        },
      ],
    ]),
    records: [],
  };
}

const RECIPES: [string, Capabilities, string][] = [
  ["fifo (this kernel)", THIS_KERNEL, ""],
  ["fq_codel", PRODUCTION, ""],
  ["sfq", PRODUCTION, "leaf: sfq\n"],
  ["police", PRODUCTION, "upload: police\n"],
  ["macvtap", THIS_KERNEL, ""],
];

function rejected(xml: string, policyText: string, caps: Capabilities): string[] {
  const policy = policyText ? parsePolicy(policyText, "p.yaml") : emptyPolicy();
  const { interfaces } = resolveDomain(parseDomainXml(xml), policy);
  const p = plan(interfaces, observedWithTap(), caps, { leaf: policy.leaf, scope: [UUID], sweep: false });
  return render(p.ops).tc.flatMap((l) => tcRejects(l).map((why) => `${why}: ${l}`));
}

const xmlFor = (type: "bridge" | "direct", bw: string) =>
  `<domain type='kvm'><name>p</name><uuid>${UUID}</uuid><devices><interface type='${type}'><mac address='${MAC}'/>` +
  `${type === "direct" ? "<source dev='eth0' mode='bridge'/>" : "<source bridge='br0'/>"}<target dev='vnet1'/>` +
  `<bandwidth>${bw}</bandwidth></interface></devices></domain>`;

test("libvirt <bandwidth>: average, peak (kB/s) and burst (KiB) over 1..4294967295", () => {
  const rand = prng(1);
  let checked = 0;
  for (const [name, caps, policy] of RECIPES) {
    const samples: [number, number, number | undefined][] = [
      [1, 1, undefined],
      [1, 1, 1],
      [1, LIBVIRT_MAX, LIBVIRT_MAX],
      [LIBVIRT_MAX, LIBVIRT_MAX, undefined],
      [LIBVIRT_MAX, LIBVIRT_MAX, 1],
      [LIBVIRT_MAX, LIBVIRT_MAX, LIBVIRT_MAX],
    ];
    for (let i = 0; i < 400; i++) {
      const average = logUniform(rand, 1, LIBVIRT_MAX);
      const peak = logUniform(rand, average, LIBVIRT_MAX);
      samples.push([average, peak, rand() < 0.3 ? undefined : logUniform(rand, 1, LIBVIRT_MAX)]);
    }
    for (const [average, peak, burst] of samples) {
      const attrs = `average='${average}' peak='${peak}'${burst === undefined ? "" : ` burst='${burst}'`}`;
      const xml = xmlFor(name === "macvtap" ? "direct" : "bridge", `<inbound ${attrs}/><outbound ${attrs}/>`);
      assert.deepEqual(rejected(xml, policy, caps), [], `${name}: ${attrs}`);
      checked++;
    }
  }
  assert.ok(checked > 2000);
});

test("policy file: every rate and size unit over the range the policy accepts", () => {
  const rand = prng(2);
  const rateUnits: [string, number][] = [
    ["bit", 1],
    ["kbit", 1e3],
    ["mbit", 1e6],
    ["gbit", 1e9],
    ["tbit", 1e12],
    ["B/s", 8],
    ["kB/s", 8e3],
    ["MB/s", 8e6],
    ["GB/s", 8e9],
    ["KiB/s", 8 * 1024],
    ["MiB/s", 8 * 1024 ** 2],
    ["GiB/s", 8 * 1024 ** 3],
  ];
  const sizeUnits: [string, number][] = [
    ["B", 1],
    ["kB", 1e3],
    ["KiB", 1024],
    ["MB", 1e6],
    ["MiB", 1024 ** 2],
    ["GiB", 1024 ** 3],
  ];
  const MIN = 8000;
  const MAX = LIBVIRT_MAX * 8000;
  let accepted = 0;
  let refused = 0;
  for (const [unit, factor] of rateUnits) {
    for (let i = 0; i < 150; i++) {
      // Well past both ends, so the policy's own range check is exercised too.
      const bits = logUniform(rand, 1, MAX * 100);
      const value = Math.max(1, Math.round(bits / factor));
      const [sizeUnit, sizeFactor] = sizeUnits[i % sizeUnits.length] ?? ["B", 1];
      const burst = Math.max(1, Math.round(logUniform(rand, 1514, 2 ** 33) / sizeFactor));
      const [name, caps, extra] = RECIPES[i % RECIPES.length] ?? RECIPES[0];
      const text = `${extra}domains:\n  - name: p\n    inbound: { average: "${value}${unit}", burst: "${burst}${sizeUnit}" }\n    outbound: { average: "${value}${unit}" }\n`;
      let policyOk = true;
      try {
        parsePolicy(text, "p.yaml");
      } catch (e) {
        assert.ok(e instanceof PolicyError, String(e));
        const v = value * factor;
        const b = burst * sizeFactor;
        assert.ok(
          v < MIN || v > MAX || b < 1514 || b > 4294967295,
          `refused a policy inside the range: ${value}${unit} burst ${burst}${sizeUnit}: ${(e as Error).message}`,
        );
        policyOk = false;
        refused++;
      }
      if (!policyOk) continue;
      const xml = xmlFor(name === "macvtap" ? "direct" : "bridge", "");
      assert.deepEqual(rejected(xml, text, caps), [], `${name}: ${value}${unit} burst ${burst}${sizeUnit}`);
      accepted++;
    }
  }
  assert.ok(accepted > 500 && refused > 100, `accepted ${accepted}, refused ${refused}`);
});

test("the policy names the field and the fix for rates outside the range", () => {
  assert.throws(
    () => parsePolicy("defaults:\n  inbound: { average: 1kbit }\n", "p.yaml"),
    /defaults\.inbound\.average: is 1 kbit\/s, below the smallest rate virtqos shapes.*fix: write at least "8kbit"/s,
  );
  assert.throws(
    () => parsePolicy("defaults:\n  inbound: { average: 40tbit }\n", "p.yaml"),
    /defaults\.inbound\.average: is 40 Tbit\/s, above the largest rate .*34\.36 Tbit\/s/s,
  );
  assert.throws(
    () => parsePolicy("defaults:\n  inbound: { average: 1gbit, burst: 5GiB }\n", "p.yaml"),
    /defaults\.inbound\.burst: is 5 GiB, above the largest size tc accepts/,
  );
});
