import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { dropLiveSlots, readLiveFile } from "../../src/adapters/live-store.js";
import type { LocalService } from "../../src/agent/service.js";
import type { AuditEntry, Principal } from "../../src/agent/types.js";
import { reconcile } from "../../src/app/engine.js";
import { parseDomainXml } from "../../src/core/domain-xml.js";
import { run } from "../../src/lab/exec.js";
import { runTransfers } from "../../src/lab/iperf.js";
import type { MemorySource } from "../../src/lab/memory-source.js";
import type { Lab } from "../../src/lab/topology.js";
import { labService } from "../helpers/lab-service.js";
import {
  closeLab,
  domainXml,
  type Harness,
  openLab,
  policy,
  SKIP_NOT_ROOT,
  uuidFor,
} from "../helpers/netns.js";

// Live changes through the agent's service on real tc in a namespace lab: the kernel changes in place (same
// class and qdisc handles, counters never reset), the guest gets the new rate, and the limit survives a
// restart and a "hard reboot" (a fresh XML without metadata) through the live store.

const OP: Principal = { name: "test-operator", role: "operator", via: "token" };
const mbit = (x: number) => `${(x / 1e6).toFixed(2)} Mbit/s`;

interface TcObj {
  dev?: string;
  kind: string;
  handle: string;
  parent?: string;
  bytes?: number;
}

async function tcObjects(ns: string, dev: string): Promise<TcObj[]> {
  const out: TcObj[] = [];
  const q = await run("tc", ["-n", ns, "-s", "-j", "qdisc", "show", "dev", dev]);
  for (const o of JSON.parse(q.stdout || "[]") as TcObj[]) {
    out.push({ dev, kind: `qdisc:${o.kind}`, handle: o.handle, parent: o.parent, bytes: o.bytes });
  }
  // iproute2 6.1 prints HTB classes as text even with -j: "class htb 1:1 root ..." then " Sent N bytes".
  const c = await run("tc", ["-n", ns, "-s", "class", "show", "dev", dev]);
  for (const line of c.stdout.split("\n")) {
    const m = /^class (\S+) (\S+) (?:root|parent (\S+))/.exec(line);
    if (m) out.push({ dev, kind: `class:${m[1]}`, handle: m[2], parent: m[3] });
    const sent = /^\s*Sent (\d+) bytes/.exec(line);
    const last = out.at(-1);
    if (sent && last?.kind.startsWith("class:") && last.bytes === undefined) last.bytes = Number(sent[1]);
  }
  return out;
}

const shape = (objs: TcObj[]) =>
  objs.map((o) => `${o.dev} ${o.kind} ${o.handle} ${o.parent ?? "root"}`).sort();

/**
 * What the shaper lets through: a UDP flood at 1.5x the limit (TCP over this kernel's FIFO leaf swings a few
 * per cent below the limit at 5 Mbit/s whether or not anything changed; the shaper is what is under test).
 * With no limit given, TCP: an unshaped direction is measured by how far above any limit it goes.
 */
async function measure(
  lab: Lab,
  direction: "download" | "upload",
  limitBitsPerSec?: number,
): Promise<number> {
  const [r] = await runTransfers(lab, [
    {
      guest: lab.guests[0],
      direction,
      protocol: limitBitsPerSec ? "udp" : "tcp",
      seconds: 4,
      omitSeconds: 1,
      udpRateBitsPerSec: limitBitsPerSec ? 1.5 * limitBitsPerSec : undefined,
    },
  ]);
  return r.l2BitsPerSec;
}

function assertRate(actual: number, expected: number, what: string): void {
  assert.ok(
    Math.abs(actual / expected - 1) <= 0.03,
    `${what}: ${mbit(actual)} not within 3 % of ${mbit(expected)}`,
  );
}

describe("live changes on a running guest (namespace lab, real tc)", { skip: SKIP_NOT_ROOT }, () => {
  let lab: Lab;
  let h: Harness;
  let stateDir: string;
  let source: MemorySource;
  let service: LocalService;
  const audit: AuditEntry[] = [];
  const uuid = uuidFor("live1");
  let xml: string;
  const pol = policy(`
domains:
  - name: live1
    inbound: { average: 10mbit }
    outbound: { average: 10mbit }
`);

  before(async () => {
    ({ lab, h } = await openLab({ guests: [{ name: "live1" }] }));
    stateDir = mkdtempSync(join(tmpdir(), "virtqos-live-"));
    xml = domainXml("live1", uuid, [{ guest: lab.guests[0], bridge: lab.bridge }]);
    ({ service, source } = labService(h, stateDir, pol, {
      audit: { record: (e) => audit.push(e), query: () => audit },
    }));
    source.add("live1", uuid, xml);
    await service.reapply(uuid);
  });
  after(async () => {
    await closeLab(lab, h);
    rmSync(stateDir, { recursive: true, force: true });
  });

  test("10 -> 20 -> 5 Mbit/s, both directions: classes changed in place, rates within 3 %", async () => {
    const tap = lab.guests[0].tap;
    const ifbOf = async () =>
      (
        JSON.parse((await run("ip", ["-n", lab.hostNs, "-j", "link", "show", "type", "ifb"])).stdout) as {
          ifname: string;
        }[]
      ).map((l) => l.ifname);
    const [ifb] = await ifbOf();
    assert.ok(ifb, "an IFB carries the guest's upload");
    assertRate(await measure(lab, "download", 10e6), 10e6, "download at 10");
    assertRate(await measure(lab, "upload", 10e6), 10e6, "upload at 10");
    const before = [...(await tcObjects(lab.hostNs, tap)), ...(await tcObjects(lab.hostNs, ifb))];
    for (const [value, expected] of [
      ["20mbit", 20e6],
      [625, 5e6], // libvirt units: kB/s
    ] as const) {
      const v = await service.setInterface(
        uuid,
        tap,
        { inbound: { average: value }, outbound: { average: value }, persist: "live" },
        OP,
      );
      assert.equal(v.inbound.inForce?.rateBitsPerSec, expected);
      assert.equal(v.inbound.inForce?.source, "live");
      assert.equal(v.outbound.inForce?.rateBitsPerSec, expected);
      assert.equal(v.inbound.configured?.rateBitsPerSec, 10e6, "the configured limit is still shown");
      const now = [...(await tcObjects(lab.hostNs, tap)), ...(await tcObjects(lab.hostNs, ifb))];
      assert.deepEqual(shape(now), shape(before), "same qdiscs and classes, same handles");
      for (const o of before) {
        const n = now.find(
          (x) => x.dev === o.dev && x.kind === o.kind && x.handle === o.handle && x.parent === o.parent,
        );
        assert.ok(
          (n?.bytes ?? 0) >= (o.bytes ?? 0),
          `${o.dev} ${o.kind} ${o.handle}: counters reset (re-created)`,
        );
      }
      assert.deepEqual(await ifbOf(), [ifb], "the same IFB");
      assertRate(await measure(lab, "download", expected), expected, `download at ${mbit(expected)}`);
      assertRate(await measure(lab, "upload", expected), expected, `upload at ${mbit(expected)}`);
    }
    assert.deepEqual(
      audit.map((a) => [a.result, a.door, a.who]),
      [
        ["ok", "api", "test-operator"],
        ["ok", "api", "test-operator"],
      ],
    );
    assert.equal(
      (audit[1].after as { inbound: { inForce: { rateBitsPerSec: number } } }).inbound.inForce.rateBitsPerSec,
      5e6,
    );
  });

  test("get shows configured, live and in force; clearing goes back to the configuration", async () => {
    const [v] = await service.getInterfaces("live1");
    assert.equal(v.index, 1);
    assert.equal(v.mac, lab.guests[0].mac);
    assert.equal(v.inbound.live?.rateBitsPerSec, 5e6);
    assert.equal(v.matches, true);
    assert.ok((v.counters?.txBytes ?? 0) > 0, "tap counters");
    const cleared = await service.clearInterface("live1", "1", "live", OP);
    assert.equal(cleared.inbound.inForce?.rateBitsPerSec, 10e6);
    assert.equal(cleared.inbound.inForce?.source, "policy");
    assert.equal(cleared.inbound.live, undefined);
    assert.equal(readLiveFile(stateDir, uuid), undefined, "an empty live file is removed");
  });

  test("average 0 lifts a direction live; the other direction keeps its limit", async () => {
    const v = await service.setInterface(
      uuid,
      lab.guests[0].mac.toUpperCase(),
      { inbound: { average: 0 }, persist: "live" },
      OP,
    );
    assert.equal(v.inbound.inForce, undefined);
    assert.equal(v.inbound.live, null);
    assert.equal(v.outbound.inForce?.rateBitsPerSec, 10e6);
    const down = await measure(lab, "download");
    assert.ok(down > 50e6, `download unshaped: ${mbit(down)}`);
    await service.clearInterface(uuid, "1", "live", OP);
  });

  test("persist config: the running guest keeps its limit; the next start, even from an XML without metadata, gets the new one", async () => {
    const tap = lab.guests[0].tap;
    const v = await service.setInterface(uuid, tap, { inbound: { average: "8mbit" }, persist: "config" }, OP);
    assert.equal(v.inbound.inForce?.rateBitsPerSec, 10e6, "running guest unchanged");
    const meta = source.metadataWrites.at(-1);
    assert.ok(
      meta?.config && meta.xml?.includes('average="1000"'),
      `metadata written: ${JSON.stringify(meta)}`,
    );
    // A hard reboot: the domain stops (the hook removes its shaping), Nova defines a fresh XML without our
    // metadata and starts it; the hook drops the previous run's live slots and applies what the store keeps.
    const ctx = { ...h.ctx, stateDir };
    await reconcile(ctx, { domains: [], policy: pol, scope: [uuid] });
    dropLiveSlots(stateDir, uuid);
    const r = await reconcile(ctx, { domains: [parseDomainXml(xml)], policy: pol, scope: [uuid] });
    assert.equal(r.failure, undefined);
    const inbound = r.desired[0].inbound;
    assert.equal(inbound?.rateBitsPerSec, 8e6);
    assert.equal(inbound?.source, "live");
    assert.equal(r.desired[0].outbound?.source, "policy");
    assertRate(await measure(lab, "download", 8e6), 8e6, "download after the hard reboot");
    await service.clearInterface(uuid, tap, "both", OP);
    assert.equal(readLiveFile(stateDir, uuid), undefined);
  });

  test("refusals change nothing: not running, no such interface, unshapeable type, bad numbers", async () => {
    const before = await tcObjects(lab.hostNs, lab.guests[0].tap);
    const n = audit.length;
    const codeOf = async (p: Promise<unknown>) => {
      try {
        await p;
        return "resolved";
      } catch (e) {
        return (e as { code?: string }).code;
      }
    };
    source.add(
      "off1",
      uuidFor("off1"),
      domainXml("off1", uuidFor("off1b"), [{ guest: lab.guests[0] }]),
      "shut off",
    );
    assert.equal(
      await codeOf(service.setInterface("off1", "1", { inbound: { average: 100 }, persist: "live" }, OP)),
      "DOMAIN_NOT_RUNNING",
    );
    assert.equal(
      await codeOf(service.setInterface(uuid, "7", { inbound: { average: 100 }, persist: "live" }, OP)),
      "INTERFACE_NOT_FOUND",
    );
    assert.equal(
      await codeOf(service.setInterface("nope", "1", { inbound: { average: 100 }, persist: "live" }, OP)),
      "DOMAIN_NOT_FOUND",
    );
    assert.equal(
      await codeOf(service.setInterface(uuid, "1", { inbound: { average: -1 }, persist: "live" }, OP)),
      "REQUEST_INVALID",
    );
    assert.equal(
      await codeOf(service.setInterface(uuid, "1", { inbound: { average: "10" }, persist: "live" }, OP)),
      "REQUEST_INVALID",
    );
    assert.equal(
      await codeOf(
        service.setInterface(uuid, "1", { inbound: { average: 100, peak: 50 }, persist: "live" }, OP),
      ),
      "REQUEST_INVALID",
    );
    const vhost = uuidFor("vhost");
    source.add(
      "vhost1",
      vhost,
      `<domain type='kvm'><name>vhost1</name><uuid>${vhost}</uuid><devices><interface type='vhostuser'><mac address='52:54:00:99:00:01'/><source type='unix' path='/tmp/x' mode='client'/></interface></devices></domain>`,
    );
    assert.equal(
      await codeOf(service.setInterface("vhost1", "1", { inbound: { average: 100 }, persist: "live" }, OP)),
      "NOT_SHAPEABLE",
    );
    assert.deepEqual(shape(await tcObjects(lab.hostNs, lab.guests[0].tap)), shape(before));
    assert.ok(
      audit.slice(n).every((a) => a.result === "refused"),
      JSON.stringify(audit.slice(n)),
    );
  });
});
