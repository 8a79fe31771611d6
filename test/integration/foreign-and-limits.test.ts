import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { loadRecords } from "../../src/adapters/state.js";
import { collectStatus } from "../../src/app/status.js";
import { emptyPolicy } from "../../src/core/policy.js";
import { run } from "../../src/lab/exec.js";
import { runTransfers } from "../../src/lab/iperf.js";
import type { Lab } from "../../src/lab/topology.js";
import {
  applyXml,
  closeLab,
  domainXml,
  type Harness,
  openLab,
  policy,
  removeDomain,
  SKIP_NOT_ROOT,
  tcDump,
  uuidFor,
} from "../helpers/netns.js";

// A foreign filter that runs before virtqos's redirect takes the traffic (libvirt's own <bandwidth> police
// filter does this on production kernels; this kernel has no police action, so a plain match-all u32 filter
// at the kernel's default priority stands in for it: on an ingress hook it accepts every packet it matches).
// And the extremes of libvirt's range applied by the real tc, read back, re-planned.

const TOLERANCE = 0.03;

describe("a foreign filter before virtqos's redirect", { skip: SKIP_NOT_ROOT }, () => {
  let lab: Lab;
  let h: Harness;
  before(async () => {
    ({ lab, h } = await openLab({ guests: [{ name: "a" }] }));
  });
  after(() => closeLab(lab, h));

  test("is refused with INGRESS_FILTER_FOREIGN, traffic shows it, status says NO; removing it lets virtqos shape", async () => {
    const g = lab.guests[0];
    const uuid = uuidFor("foreign");
    const xml = domainXml("foreign", uuid, [{ guest: g, bridge: lab.bridge, outbound: { average: 1250 } }]);
    const tc = (...args: string[]) => run("tc", ["-n", lab.hostNs, ...args]);
    // libvirt's shape: an `ingress` qdisc and a match-all u32 filter, no priority given (the kernel picks 49152).
    await tc("qdisc", "add", "dev", g.tap, "ingress");
    await tc(
      "filter",
      "add",
      "dev",
      g.tap,
      "parent",
      "ffff:",
      "protocol",
      "all",
      "u32",
      "match",
      "u32",
      "0",
      "0",
      "flowid",
      ":1",
    );
    assert.match(await tcDump(lab.hostNs, g.tap), /pref 49152/);

    const r = await applyXml(
      h,
      [xml],
      policy("domains:\n  - name: foreign\n    outbound: { average: 10mbit }\n"),
    );
    assert.deepEqual(
      r.plan.problems.map((p) => p.code),
      ["INGRESS_FILTER_FOREIGN"],
    );
    assert.match(
      r.plan.problems[0]?.message ?? "",
      /u32 filter at ingress prio 49152 runs before virtqos's redirect at prio 64000/,
    );
    assert.doesNotMatch(
      await tcDump(lab.hostNs, g.tap),
      /pref 64000/,
      "virtqos added a redirect behind the foreign filter",
    );

    // What the guest gets is what the foreign filter lets through: far above virtqos's 10 Mbit/s.
    const [intercepted] = await runTransfers(lab, [
      { guest: g, direction: "upload", protocol: "tcp", seconds: 2 },
    ]);
    assert.ok(intercepted.l2BitsPerSec > 100e6, `upload ${intercepted.l2BitsPerSec} bit/s`);

    // status keeps the refused interface and never calls it a match.
    const rows = await collectStatus(h.runner, h.runDir, h.caps, emptyPolicy());
    assert.equal(rows.length, 1);
    assert.equal(rows[0]?.matches, false);
    assert.match(rows[0]?.note ?? "", /INGRESS_FILTER_FOREIGN/);

    // The operator removes the foreign filter and applies again: shaped, and within 3 % of the limit.
    await tc("filter", "del", "dev", g.tap, "ingress", "prio", "49152");
    const again = await applyXml(
      h,
      [xml],
      policy("domains:\n  - name: foreign\n    outbound: { average: 10mbit }\n"),
    );
    assert.deepEqual(again.plan.problems, []);
    // UDP offered at 1.5x the limit: whether the shaper is in effect, whatever TCP's congestion control does
    // (TCP accuracy is shaping.test.ts's).
    const [shaped] = await runTransfers(lab, [
      {
        guest: g,
        direction: "upload",
        protocol: "udp",
        seconds: 4,
        omitSeconds: 1,
        udpRateBitsPerSec: 15e6,
      },
    ]);
    const ratio = shaped.l2BitsPerSec / 10e6;
    assert.ok(Math.abs(ratio - 1) <= TOLERANCE, `upload ratio ${ratio.toFixed(3)}`);
    const ok = await collectStatus(h.runner, h.runDir, h.caps, emptyPolicy());
    assert.deepEqual(
      ok.map((x) => x.matches),
      [true],
    );
    assert.equal(loadRecords(h.runDir)[0]?.refused, undefined);

    // A foreign filter added after virtqos applied makes status report the mismatch and why.
    await tc(
      "filter",
      "add",
      "dev",
      g.tap,
      "ingress",
      "protocol",
      "all",
      "prio",
      "100",
      "u32",
      "match",
      "u32",
      "0",
      "0",
      "flowid",
      ":1",
    );
    const drifted = await collectStatus(h.runner, h.runDir, h.caps, emptyPolicy());
    assert.equal(drifted[0]?.matches, false);
    assert.match(drifted[0]?.note ?? "", /INGRESS_FILTER_FOREIGN.*prio 100/);
    await tc("filter", "del", "dev", g.tap, "ingress", "prio", "100");
    await removeDomain(h, uuid);
  });

  test("status judges each direction on its own: a deleted root qdisc leaves the upload row in force", async () => {
    const g = lab.guests[0];
    const uuid = uuidFor("perdir");
    const tc = (...args: string[]) => run("tc", ["-n", lab.hostNs, ...args]);
    const xml = domainXml("perdir", uuid, [
      { guest: g, bridge: lab.bridge, inbound: { average: 1250 }, outbound: { average: 1250 } },
    ]);
    await applyXml(h, [xml]);
    const byDir = async () =>
      Object.fromEntries(
        (await collectStatus(h.runner, h.runDir, h.caps, emptyPolicy())).map((r) => [r.direction, r.matches]),
      );
    assert.deepEqual(await byDir(), { inbound: true, outbound: true });
    // The download is shaped on the tap's root (gone), the upload on the IFB behind the ingress hook (kept).
    await tc("qdisc", "del", "dev", g.tap, "root");
    assert.deepEqual(await byDir(), { inbound: false, outbound: true });
    await applyXml(h, [xml]);
    assert.deepEqual(await byDir(), { inbound: true, outbound: true });
    // And the other way round: the redirect to the IFB gone, the download still in force.
    const filters = JSON.parse(
      (await run("tc", ["-n", lab.hostNs, "-j", "filter", "show", "dev", g.tap, "ingress"])).stdout,
    );
    const prio = filters.find((f: { options?: unknown }) => f.options)?.pref;
    await tc("filter", "del", "dev", g.tap, "ingress", "prio", String(prio));
    assert.deepEqual(await byDir(), { inbound: true, outbound: false });
    await removeDomain(h, uuid);
  });
});

describe("the edges of libvirt's range on the real tc", { skip: SKIP_NOT_ROOT }, () => {
  let lab: Lab;
  let h: Harness;
  before(async () => {
    ({ lab, h } = await openLab({ guests: [{ name: "a" }] }));
  });
  after(() => closeLab(lab, h));

  for (const [name, rate] of [
    [
      "largest: average = peak = burst = 4294967295",
      { average: 4294967295, peak: 4294967295, burst: 4294967295 },
    ],
    ["smallest: average 1 kB/s", { average: 1 }],
    ["slow with a huge burst: 1 kB/s, burst 4294967295 KiB", { average: 1, burst: 4294967295 }],
  ] as const) {
    test(`${name}: tc takes every line, reads back equal, a second plan is empty`, async () => {
      const g = lab.guests[0];
      const uuid = uuidFor("edge");
      const xml = domainXml("edge", uuid, [{ guest: g, bridge: lab.bridge, inbound: rate, outbound: rate }]);
      const r = await applyXml(h, [xml]);
      assert.equal(r.failure, undefined, r.failure?.message);
      assert.deepEqual(r.plan.problems, []);
      assert.ok(r.applied);
      const second = await applyXml(h, [xml]);
      assert.deepEqual(second.rendered.tc, [], "the kernel reads back different from what was planned");
      await removeDomain(h, uuid);
    });
  }
});
