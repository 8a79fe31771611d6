import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { processRunner } from "../../src/adapters/exec.js";
import { loadRecords } from "../../src/adapters/state.js";
import { groupIfbName } from "../../src/core/names.js";
import { run, sleep } from "../../src/lab/exec.js";
import { runTransfers, type Transfer } from "../../src/lab/iperf.js";
import type { Lab, LabGuest } from "../../src/lab/topology.js";
import {
  applyXml,
  closeLab,
  domainXml,
  type Harness,
  ifbsIn,
  openLab,
  policy,
  removeDomain,
  SKIP_NOT_ROOT,
  tcDump,
  uuidFor,
} from "../helpers/netns.js";
import { SEED_001_GROUPS } from "../helpers/seed-policies.js";

// Groups on real devices: members on different taps share one HTB tree per direction; floors hold when all
// are busy, spare capacity is lent, joins and leaves do not disturb a busy member. One direction at a time.

const SEED_001 = SEED_001_GROUPS;

type Dir = "download" | "upload";
const DIRS: Dir[] = ["download", "upload"];

async function busy(lab: Lab, guests: LabGuest[], direction: Dir, protocol: "tcp" | "udp", offered = 40e6) {
  const transfers: Transfer[] = guests.map((guest) => ({
    guest,
    direction,
    protocol,
    seconds: 4,
    omitSeconds: 1,
    udpRateBitsPerSec: offered,
  }));
  return (await runTransfers(lab, transfers)).map((r) => r.l2BitsPerSec);
}

const mbit = (x: number) => `${(x / 1e6).toFixed(2)} Mbit/s`;

describe("groups: seed 001 in namespaces", { skip: SKIP_NOT_ROOT }, () => {
  let lab: Lab;
  let h: Harness;
  const uuids = { cliff: uuidFor("cliff"), rob: uuidFor("rob"), jason: uuidFor("jason") };
  let xml: Record<keyof typeof uuids, string>;
  const pol = () => policy(SEED_001);
  before(async () => {
    ({ lab, h } = await openLab({ guests: [{ name: "cliff" }, { name: "rob" }, { name: "jason" }] }));
    const [c, r, j] = lab.guests;
    xml = {
      cliff: domainXml("cliff", uuids.cliff, [{ guest: c, bridge: lab.bridge }]),
      rob: domainXml("rob", uuids.rob, [{ guest: r, bridge: lab.bridge, type: "ethernet" }]),
      jason: domainXml("jason", uuids.jason, [{ guest: j, bridge: lab.bridge }]),
    };
    for (const name of ["cliff", "rob", "jason"] as const) {
      const res = await applyXml(h, [xml[name]], pol());
      assert.equal(res.failure, undefined, res.failure?.message);
      assert.deepEqual(res.plan.problems, []);
    }
  });
  after(() => closeLab(lab, h));

  test("one tree per direction on the top-level group's IFBs, re-apply is a no-op", async () => {
    const ifbs = await ifbsIn(lab.hostNs);
    assert.deepEqual(ifbs.sort(), [groupIfbName("host", "inbound"), groupIfbName("host", "outbound")].sort());
    const again = await applyXml(h, Object.values(xml), pol());
    assert.deepEqual(again.plan.ops, []);
  });

  for (const protocol of ["tcp", "udp"] as const) {
    for (const direction of DIRS) {
      test(`all busy (${protocol} ${direction}): floors hold, the group total is its ceiling`, async () => {
        const [c, r, j] = lab.guests;
        const [cliff, rob, jason] = await busy(lab, [c, r, j], direction, protocol);
        assert.ok(cliff >= 0.95 * 15e6, `cliff ${mbit(cliff)} < 0.95 x 15`);
        assert.ok(rob >= 0.95 * 15e6, `rob ${mbit(rob)} < 0.95 x 15`);
        const total = cliff + rob;
        assert.ok(Math.abs(total / 30e6 - 1) <= 0.02, `group total ${mbit(total)} not within 2% of 30`);
        assert.ok(Math.abs(jason / 30e6 - 1) <= 0.03, `jason ${mbit(jason)} not ~30 on his own`);
      });
      test(`one member busy (${protocol} ${direction}): it borrows up to the group ceiling`, async () => {
        const [c] = lab.guests;
        const [cliff] = await busy(lab, [c], direction, protocol);
        assert.ok(cliff >= 0.95 * 30e6, `cliff alone ${mbit(cliff)} < 0.95 x 30`);
        assert.ok(cliff <= 1.03 * 30e6, `cliff alone ${mbit(cliff)} above the group ceiling`);
      });
    }
  }

  test("a busy member sees no stall and no unshaped gap while another joins and leaves", async () => {
    const [c] = lab.guests;
    await removeDomain(h, uuids.rob);
    try {
      for (const direction of DIRS) {
        const transfer = runTransfers(lab, [
          { guest: c, direction, protocol: "tcp", seconds: 6, omitSeconds: 1, intervalSeconds: 0.1 },
        ]);
        await sleep(2500);
        const joined = await applyXml(h, [xml.rob], pol());
        assert.equal(joined.failure, undefined);
        // The join touched only rob's class, leaf and filters (and rob's tap), nothing of cliff's: this is the
        // structural proof; the traffic below shows its effect.
        const cliffMinor = loadRecords(h.runDir).find((r) => r.domainUuid === uuids.cliff)?.interfaces[0]
          .group?.inbound?.minor;
        assert.ok(cliffMinor !== undefined);
        const cliffClass = `7651:${cliffMinor.toString(16)}`;
        const touched = JSON.stringify(joined.plan.ops);
        assert.ok(
          joined.plan.ops.every((o) => o.dev !== c.tap),
          "join touched cliff's tap",
        );
        assert.ok(
          !touched.includes(`${cliffClass}"`) && !touched.includes(`${cliffClass} `),
          `join touched ${cliffClass}: ${touched}`,
        );
        await sleep(1500);
        await removeDomain(h, uuids.rob);
        const [res] = await transfer;
        const iv = res.intervals.map((x) => x.l2BitsPerSec);
        assert.ok(iv.length >= 40, `only ${iv.length} intervals`);
        // Judged on 300 ms windows (three of iperf3's 100 ms intervals): on a loaded host a descheduled iperf3
        // books one interval's bytes in the next, so single intervals swing from ~0 to ~2x with nothing wrong.
        // A stall (a deleted class, a TCP timeout of 200 ms or more) still empties most of a window; an
        // unshaped moment (tens of Gbit/s in these namespaces) makes a window hundreds of times the ceiling.
        const windows = iv.slice(2).map((_, i) => (iv[i] + iv[i + 1] + iv[i + 2]) / 3);
        const series = iv.map((x) => (x / 1e6).toFixed(1)).join(" ");
        const worst = Math.min(...windows);
        assert.ok(
          worst > 0.25 * 30e6,
          `${direction}: a 300 ms window dropped to ${mbit(worst)} (Mbit/s: ${series})`,
        );
        const most = Math.max(...windows);
        assert.ok(
          most < 1.5 * 30e6,
          `${direction}: a 300 ms window reached ${mbit(most)}: shaping gap (${series})`,
        );
      }
    } finally {
      // The next test counts rob's members: put him back even when an assertion above failed.
      await applyXml(h, [xml.rob], pol());
    }
  });

  test("status reports every member in its group, matching", async () => {
    const { collectStatus } = await import("../../src/app/status.js");
    const rows = await collectStatus(processRunner({ netns: lab.hostNs }), h.runDir, h.caps, pol());
    const grouped = rows.filter((r) => r.group);
    assert.equal(grouped.length, 6);
    assert.ok(
      grouped.every((r) => r.matches),
      JSON.stringify(grouped.filter((r) => !r.matches)),
    );
    assert.deepEqual([...new Set(grouped.map((r) => r.group))].sort(), ["host/solo", "host/web"]);
  });

  test("cleanup: the group trees go with their last member, nothing is left", async () => {
    for (const u of Object.values(uuids)) await removeDomain(h, u);
    assert.deepEqual(await ifbsIn(lab.hostNs), []);
    for (const g of lab.guests) assert.doesNotMatch(await tcDump(lab.hostNs, g.tap), /7651|pref 6400|clsact/);
    assert.deepEqual(loadRecords(h.runDir), []);
  });
});

describe("groups: floors, admission, conflicts, sweep", { skip: SKIP_NOT_ROOT }, () => {
  let lab: Lab;
  let h: Harness;
  before(async () => {
    ({ lab, h } = await openLab({ guests: [{ name: "a" }, { name: "b" }, { name: "c" }] }));
  });
  after(() => closeLab(lab, h));

  test("unequal floors (20 and 5 in a 30 group): both get at least their floors", async () => {
    const [a, b] = lab.guests;
    const pol = policy(`
groups:
  - name: g
    inbound: { average: 30mbit }
    outbound: { average: 30mbit }
    members:
      - { domain: big, inbound: { floor: 20mbit }, outbound: { floor: 20mbit } }
      - { domain: small, inbound: { floor: 5mbit }, outbound: { floor: 5mbit } }
`);
    const ub = uuidFor("big");
    const us = uuidFor("small");
    await applyXml(h, [domainXml("big", ub, [{ guest: a, bridge: lab.bridge }])], pol);
    await applyXml(h, [domainXml("small", us, [{ guest: b, bridge: lab.bridge }])], pol);
    for (const protocol of ["tcp", "udp"] as const) {
      for (const direction of DIRS) {
        const [big, small] = await busy(lab, [a, b], direction, protocol);
        assert.ok(big >= 0.95 * 20e6, `${protocol} ${direction}: big ${mbit(big)} < 0.95 x 20`);
        assert.ok(small >= 0.95 * 5e6, `${protocol} ${direction}: small ${mbit(small)} < 0.95 x 5`);
        assert.ok(
          Math.abs((big + small) / 30e6 - 1) <= 0.02,
          `${protocol} ${direction}: total ${mbit(big + small)}`,
        );
      }
    }
    await removeDomain(h, ub);
    await removeDomain(h, us);
  });

  test("admission: a member whose floor does not fit is shaped on its own, with an error naming the numbers", async () => {
    const [a, b, c] = lab.guests;
    const pol = policy(`
groups:
  - name: adm
    inbound: { average: 30mbit }
    memberDefaults: { inbound: { floor: 15mbit } }
    select: { domains: ["m*"] }
`);
    const u = [uuidFor("m1"), uuidFor("m2"), uuidFor("m3")];
    try {
      await applyXml(h, [domainXml("m1", u[0], [{ guest: a, bridge: lab.bridge }])], pol);
      await applyXml(h, [domainXml("m2", u[1], [{ guest: b, bridge: lab.bridge }])], pol);
      const third = await applyXml(h, [domainXml("m3", u[2], [{ guest: c, bridge: lab.bridge }])], pol);
      const p = third.plan.problems.find((x) => x.code === "GROUP_ADMISSION");
      assert.ok(p, JSON.stringify(third.plan.problems));
      assert.match(p.message, /15 Mbit\/s.*30 Mbit\/s/);
      assert.equal(third.failure, undefined);
      // The guest still gets a limit: its own tree at the group ceiling, not the shared one.
      assert.match(await tcDump(lab.hostNs, c.tap), /qdisc htb 7651: root/);
      assert.match(await tcDump(lab.hostNs, c.tap), /rate 30Mbit/);
    } finally {
      for (const x of u) await removeDomain(h, x);
    }
  });

  test("an interface matching two groups is refused with both names and keeps its own limits", async () => {
    const [a] = lab.guests;
    const pol = policy(`
groups:
  - name: by-name
    inbound: { average: 30mbit }
    select: { domains: ["dup*"] }
  - name: by-bridge
    inbound: { average: 20mbit }
    select: { bridges: ["${lab.bridge}"] }
`);
    const u = uuidFor("dup");
    const r = await applyXml(
      h,
      [domainXml("dup", u, [{ guest: a, bridge: lab.bridge, inbound: { average: 1250 } }])],
      pol,
    );
    const p = r.plan.problems.find((x) => x.code === "GROUP_CONFLICT");
    assert.ok(p);
    assert.match(p.message, /by-name/);
    assert.match(p.message, /by-bridge/);
    assert.match(await tcDump(lab.hostNs, a.tap), /rate 10Mbit/);
    await removeDomain(h, u);
  });

  test("the sweep removes a member whose tap vanished without a stop hook", async () => {
    const pol = policy(`
groups:
  - name: sweep
    inbound: { average: 30mbit }
    select: { domains: ["s*"] }
`);
    const { addGuest, removeGuest } = await import("../../src/lab/topology.js");
    const ghost = await addGuest(lab, { name: "ghost" });
    const [a] = lab.guests;
    const ug = uuidFor("s-ghost");
    const ua = uuidFor("s-alive");
    await applyXml(h, [domainXml("s-ghost", ug, [{ guest: ghost, bridge: lab.bridge }])], pol);
    await applyXml(h, [domainXml("s-alive", ua, [{ guest: a, bridge: lab.bridge }])], pol);
    const ifb = groupIfbName("sweep", "inbound");
    const classesBefore = (await run("tc", ["-n", lab.hostNs, "class", "show", "dev", ifb])).stdout;
    assert.equal(classesBefore.match(/parent 7651:1 /g)?.length, 3, classesBefore); // default + 2 members
    await removeGuest(lab, "ghost"); // the tap is gone, no stopped hook ran
    await applyXml(h, [domainXml("s-alive", ua, [{ guest: a, bridge: lab.bridge }])], pol);
    const classesAfter = (await run("tc", ["-n", lab.hostNs, "class", "show", "dev", ifb])).stdout;
    assert.equal(classesAfter.match(/parent 7651:1 /g)?.length, 2, classesAfter);
    await removeDomain(h, ua);
    await removeDomain(h, ug);
    assert.deepEqual(await ifbsIn(lab.hostNs), []);
  });

  test("a macvtap (direct) member joins the same tree with its hooks swapped", async () => {
    const [a] = lab.guests;
    await run("ip", ["-n", lab.hostNs, "link", "add", "vqmvup", "type", "veth", "peer", "name", "vqmvpeer"]);
    await run("ip", ["-n", lab.hostNs, "link", "set", "vqmvup", "up"]);
    const made = await run(
      "ip",
      [
        "-n",
        lab.hostNs,
        "link",
        "add",
        "link",
        "vqmvup",
        "name",
        "vqmvtap",
        "address",
        "52:54:00:aa:00:01",
        "type",
        "macvtap",
        "mode",
        "bridge",
      ],
      { allowFail: true },
    );
    if (made.code !== 0) {
      await run("ip", ["-n", lab.hostNs, "link", "del", "vqmvup"], { allowFail: true });
      assert.fail(`macvtap not available here: ${made.stderr}`);
    }
    await run("ip", ["-n", lab.hostNs, "link", "set", "vqmvtap", "up"]);
    const pol = policy(`
groups:
  - name: mixed
    inbound: { average: 30mbit }
    outbound: { average: 30mbit }
    select: { domains: ["mx-*"] }
`);
    const ub = uuidFor("mx-br");
    const ud = uuidFor("mx-direct");
    await applyXml(h, [domainXml("mx-br", ub, [{ guest: a, bridge: lab.bridge }])], pol);
    const directXml = `<domain type='kvm'><name>mx-direct</name><uuid>${ud}</uuid><devices><interface type='direct'><mac address='52:54:00:aa:00:01'/><source dev='vqmvup' mode='bridge'/><target dev='vqmvtap'/></interface></devices></domain>`;
    const r = await applyXml(h, [directXml], pol);
    assert.equal(r.failure, undefined, r.failure?.message);
    const dump = await tcDump(lab.hostNs, "vqmvtap");
    // Download arrives on the macvtap's ingress, upload leaves by its egress.
    assert.match(
      dump,
      new RegExp(`pref 64000[\\s\\S]*Redirect to device ${groupIfbName("mixed", "inbound")}`),
    );
    assert.match(
      dump,
      new RegExp(`pref 64001[\\s\\S]*Redirect to device ${groupIfbName("mixed", "outbound")}`),
    );
    const tree = (
      await run("tc", [
        "-n",
        lab.hostNs,
        "filter",
        "show",
        "dev",
        groupIfbName("mixed", "inbound"),
        "parent",
        "7651:",
      ])
    ).stdout;
    assert.match(tree, /match 00005254\/0000ffff at -16/);
    assert.equal(tree.match(/\*flowid 7651:/g)?.length, 2, tree);
    await removeDomain(h, ud);
    await removeDomain(h, ub);
    await run("ip", ["-n", lab.hostNs, "link", "del", "vqmvup"], { allowFail: true });
    assert.deepEqual(await ifbsIn(lab.hostNs), []);
  });
});
