import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { run } from "../../src/lab/exec.js";
import type { Lab } from "../../src/lab/topology.js";
import {
  applyXml,
  closeLab,
  domainXml,
  type Harness,
  openLab,
  removeDomain,
  SKIP_NOT_ROOT,
  tcDump,
  uuidFor,
} from "../helpers/netns.js";

// A GSO-splitting tbf (the FIFO leaf below ~54 Mbit/s here, fq_codel's front stage on production kernels,
// every group member) drops any packet larger than its bucket that is not a GSO packet it can split: a
// jumbo frame. Its bucket must hold the tap's largest frame (MTU + 18). Measured: with a two-frame bucket, an
// 8000-byte ping through a 10 Mbit/s limit on an MTU 9000 path lost 100 %.

const MTU = 9000;

async function pingLoss(fromNs: string, to: string, size: number): Promise<number> {
  const r = await run("ping", ["-n", "-c", "5", "-i", "0.2", "-w", "5", "-s", String(size), "-M", "do", to], {
    netns: fromNs,
    allowFail: true,
  });
  const m = /(\d+(?:\.\d+)?)% packet loss/.exec(r.stdout);
  assert.ok(m, `ping output: ${r.stdout} ${r.stderr}`);
  return Number(m[1]);
}

describe("jumbo frames through a shaped interface", { skip: SKIP_NOT_ROOT }, () => {
  let lab: Lab;
  let h: Harness;
  before(async () => {
    ({ lab, h } = await openLab({ guests: [{ name: "a" }] }));
    const g = lab.guests[0];
    // Every hop of the path: guest eth0, its tap, the bridge and its other port, the peer's eth0.
    const ports = JSON.parse(
      (await run("ip", ["-n", lab.hostNs, "-j", "link", "show", "master", lab.bridge])).stdout,
    ) as { ifname: string }[];
    for (const dev of ports.map((p) => p.ifname))
      await run("ip", ["-n", lab.hostNs, "link", "set", dev, "mtu", String(MTU)]);
    await run("ip", ["-n", lab.hostNs, "link", "set", lab.bridge, "mtu", String(MTU)]);
    await run("ip", ["-n", g.ns, "link", "set", "eth0", "mtu", String(MTU)]);
    await run("ip", ["-n", lab.peerNs, "link", "set", "eth0", "mtu", String(MTU)]);
  });
  after(() => closeLab(lab, h));

  test("an 8000-byte frame passes a 10 Mbit/s limit both ways (the tbf bucket holds MTU + 18)", async () => {
    const g = lab.guests[0];
    assert.equal(await pingLoss(lab.peerNs, g.ipv4, 8000), 0, "unshaped path carries jumbo frames");
    const uuid = uuidFor("jumbo");
    const xml = domainXml("jumbo", uuid, [
      { guest: g, bridge: lab.bridge, inbound: { average: 1250 }, outbound: { average: 1250 } },
    ]);
    const r = await applyXml(h, [xml]);
    assert.equal(r.failure, undefined, r.failure?.message);
    const dump = await tcDump(lab.hostNs, g.tap);
    // 9018 bytes, shown through the kernel's ticks.
    assert.match(dump, /qdisc tbf .* burst 90[01]\db/, dump);
    assert.equal((await applyXml(h, [xml])).plan.ops.length, 0, "re-apply is a no-op");
    // Download (peer -> guest, the tap's root) and upload (guest -> peer, the IFB): the echo crosses both.
    assert.equal(await pingLoss(lab.peerNs, g.ipv4, 8000), 0, "download and upload carry an 8000-byte frame");
    assert.equal(await pingLoss(g.ns, lab.peerIpv4, 8000), 0, "the guest's own jumbo frames too");
    await removeDomain(h, uuid);
  });
});
