import assert from "node:assert/strict";
import { test } from "node:test";
import { run } from "../src/lab/exec.js";
import { runTransfers } from "../src/lab/iperf.js";
import { pingLatency } from "../src/lab/ping.js";
import { addGuest, createLab, destroyAllLabs, type Lab, removeGuest } from "../src/lab/topology.js";

const skip = process.getuid?.() !== 0 ? "needs root: builds network namespaces, veths and a bridge" : false;

async function namespaces(): Promise<string[]> {
  const res = await run("ip", ["netns", "list"]);
  return res.stdout
    .split("\n")
    .map((l) => l.trim().split(/\s+/)[0] ?? "")
    .filter((n) => n.length > 0);
}

function labNamespaces(lab: Lab, all: string[]): string[] {
  return all.filter((n) => n === lab.hostNs || n === lab.peerNs || n.startsWith(`vqg-${lab.id}-`));
}

/** Processes left running inside the lab (e.g. leaked iperf3 servers). */
async function pidsInLab(lab: Lab): Promise<string[]> {
  const out: string[] = [];
  for (const ns of labNamespaces(lab, await namespaces())) {
    const res = await run("ip", ["netns", "pids", ns]);
    out.push(
      ...res.stdout
        .split("\n")
        .filter((l) => l.trim() !== "")
        .map((pid) => `${ns}:${pid.trim()}`),
    );
  }
  return out;
}

const mbit = (bps: number): string => `${(bps / 1e6).toFixed(1)} Mbit/s`;

test("lab topology, ping and iperf3 measurements", { skip }, async (t) => {
  const started = Date.now();
  const lab = await createLab({ guests: [{ name: "vm1" }, { name: "vm2", tap: "vnet-test" }] });
  t.diagnostic(`lab ${lab.id} built in ${Date.now() - started} ms`);
  try {
    await t.test("layout", async () => {
      assert.equal(lab.guests.length, 2);
      assert.equal(lab.guests[1]?.tap, "vnet-test");
      assert.notEqual(lab.guests[0]?.mac, lab.guests[1]?.mac);
      const names = [lab.bridge, ...lab.guests.map((g) => g.tap)];
      for (const n of names) assert.ok(n.length <= 15, n);
      const ports = await run("ip", ["-o", "link", "show", "master", lab.bridge], { netns: lab.hostNs });
      for (const g of lab.guests) assert.match(ports.stdout, new RegExp(`\\b${g.tap}@`));
      const eth0 = await run("ip", ["-o", "link", "show", "eth0"], { netns: lab.guests[0]!.ns });
      assert.match(eth0.stdout, new RegExp(lab.guests[0]!.mac));
    });

    await t.test("guests reach the peer over IPv4 and IPv6", async () => {
      for (const g of lab.guests) {
        for (const addr of [lab.peerIpv4, lab.peerIpv6]) {
          const r = await pingLatency(g.ns, addr, { count: 5, intervalSec: 0.01 });
          assert.equal(r.lossPercent, 0, `${g.name} -> ${addr}`);
          assert.equal(r.samplesMs.length, 5);
          assert.ok(r.p50Ms > 0 && r.p50Ms <= r.p99Ms && r.p99Ms <= r.maxMs);
        }
      }
    });

    await t.test("unshaped TCP download and upload exceed 1 Gbit/s", async () => {
      const guest = lab.guests[0]!;
      for (const direction of ["download", "upload"] as const) {
        const [r] = await runTransfers(lab, [{ guest, direction, protocol: "tcp", seconds: 2 }]);
        assert.ok(r);
        t.diagnostic(
          `tcp ${direction}: goodput ${mbit(r.goodputBitsPerSec)}, l2 ${mbit(r.l2BitsPerSec)}, ` +
            `first second l2 ${mbit(r.firstSecondL2BitsPerSec)}, retransmits ${r.retransmits}`,
        );
        assert.ok(r.goodputBitsPerSec > 1e9, `${direction} ${mbit(r.goodputBitsPerSec)}`);
        assert.ok(Math.abs(r.l2BitsPerSec / r.goodputBitsPerSec - 1514 / 1448) < 1e-9);
        assert.equal(r.intervals.length, 2);
        assert.equal(typeof r.retransmits, "number");
      }
      assert.deepEqual(await pidsInLab(lab), []);
    });

    await t.test("concurrent UDP transfers report receiver goodput", async () => {
      const [g1, g2] = lab.guests;
      assert.ok(g1 && g2);
      const rate = 50e6;
      const results = await runTransfers(lab, [
        { guest: g1, direction: "download", protocol: "udp", seconds: 2, udpRateBitsPerSec: rate },
        {
          guest: g2,
          direction: "upload",
          protocol: "udp",
          seconds: 2,
          udpRateBitsPerSec: rate,
          family: 6,
          intervalSeconds: 0.5,
        },
      ]);
      for (const r of results) {
        t.diagnostic(
          `udp: goodput ${mbit(r.goodputBitsPerSec)}, l2 ${mbit(r.l2BitsPerSec)}, lost ${r.lostPercent}%, ` +
            `first second l2 ${mbit(r.firstSecondL2BitsPerSec)}, ${r.intervals.length} intervals`,
        );
        // Unshaped, so the receiver sees the whole sending rate (the rate is payload bits).
        assert.ok(Math.abs(r.goodputBitsPerSec - rate) <= 0.1 * rate, mbit(r.goodputBitsPerSec));
        assert.equal(typeof r.lostPercent, "number");
      }
      assert.ok(Math.abs(results[0]!.l2BitsPerSec / results[0]!.goodputBitsPerSec - 1442 / 1400) < 1e-9);
      assert.ok(Math.abs(results[1]!.l2BitsPerSec / results[1]!.goodputBitsPerSec - 1462 / 1400) < 1e-9);
      assert.equal(results[1]!.intervals.length, 4);
      assert.ok(Math.abs(results[1]!.firstSecondL2BitsPerSec - rate * (1462 / 1400)) <= 0.1 * rate);
      assert.deepEqual(await pidsInLab(lab), []);
    });

    await t.test("a failing transfer throws and leaves no iperf3 behind", async () => {
      // The guest namespace has no such address, so the server cannot bind.
      const bogus = { ...lab.guests[0]!, ipv4: "10.99.0.250" };
      await assert.rejects(
        runTransfers(lab, [
          { guest: lab.guests[1]!, direction: "upload", protocol: "tcp", seconds: 1 },
          { guest: bogus, direction: "download", protocol: "tcp", seconds: 1 },
        ]),
        /exited early|Cannot assign/i,
      );
      assert.deepEqual(await pidsInLab(lab), []);
    });

    await t.test("guests join and leave", async () => {
      const g3 = await addGuest(lab, { name: "vm3" });
      assert.equal(lab.guests.length, 3);
      assert.ok((await namespaces()).includes(g3.ns));
      const r = await pingLatency(g3.ns, lab.peerIpv6, { count: 3, intervalSec: 0.01 });
      assert.equal(r.lossPercent, 0);
      await assert.rejects(addGuest(lab, { name: "vm3" }), /already exists/);

      await removeGuest(lab, "vm3");
      assert.equal(lab.guests.length, 2);
      assert.ok(!(await namespaces()).includes(g3.ns));
      const ports = await run("ip", ["-o", "link", "show", "master", lab.bridge], { netns: lab.hostNs });
      assert.doesNotMatch(ports.stdout, new RegExp(`\\b${g3.tap}@`));
    });

    await t.test("stale-lab cleanup spares live labs", async () => {
      await destroyAllLabs("", { onlyStale: true });
      assert.equal(labNamespaces(lab, await namespaces()).length, 4);
    });
  } finally {
    await lab.destroy();
  }

  assert.deepEqual(labNamespaces(lab, await namespaces()), []);
  await lab.destroy(); // idempotent
  t.diagnostic(`total ${Date.now() - started} ms`);
});
