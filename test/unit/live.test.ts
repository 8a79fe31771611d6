import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import {
  dropLiveSlots,
  type LiveFile,
  liveFilePath,
  liveLimitsOf,
  readLiveFile,
  writeLiveFile,
} from "../../src/adapters/live-store.js";
import { WorkQueue } from "../../src/agent/queue.js";
import { parseDomainXml } from "../../src/core/domain-xml.js";
import {
  findInterface,
  liveLimitFrom,
  parseDomiftune,
  renderQosMetadata,
  toLibvirtRate,
} from "../../src/core/live.js";
import { parsePolicy } from "../../src/core/policy.js";
import { resolveDomain } from "../../src/core/resolve.js";

const UUID = "4b1d2c3e-0000-4000-8000-00000000a001";
const XML = `<domain type='kvm'><name>web1</name><uuid>${UUID}</uuid><devices>
<interface type='bridge'><mac address='52:54:00:aa:00:01'/><source bridge='br0'/><target dev='vnet3'/><alias name='net0'/>
<bandwidth><inbound average='1250'/></bandwidth></interface>
<interface type='network'><mac address='52:54:00:aa:00:02'/><source network='default'/><target dev='vnet4'/><alias name='ua-second'/></interface>
</devices></domain>`;

const codeOf = (f: () => unknown) => {
  try {
    f();
    return "ok";
  } catch (e) {
    return `${(e as { code?: string }).code} ${(e as { field?: string }).field}`;
  }
};

describe("live limits: request numbers and units", () => {
  test("libvirt units (kB/s, KiB) and explicit units give the same limit", () => {
    assert.deepEqual(liveLimitFrom({ average: 2500, peak: 5000, burst: 64 }, "/inbound"), {
      rateBitsPerSec: 20e6,
      ceilBitsPerSec: 40e6,
      burstBytes: 65536,
    });
    assert.deepEqual(liveLimitFrom({ average: "20mbit", peak: "40mbit", burst: "64KiB" }, "/inbound"), {
      rateBitsPerSec: 20e6,
      ceilBitsPerSec: 40e6,
      burstBytes: 65536,
    });
    assert.deepEqual(liveLimitFrom({ average: 1250, floor: 625 }, "/inbound"), {
      rateBitsPerSec: 10e6,
      ceilBitsPerSec: 10e6,
      floorBitsPerSec: 5e6,
    });
  });

  test("average 0 clears the direction", () => {
    assert.equal(liveLimitFrom({ average: 0 }, "/outbound"), null);
    assert.equal(liveLimitFrom({ average: "0mbit" }, "/outbound"), null);
  });

  test("bad numbers name the field", () => {
    assert.equal(
      codeOf(() => liveLimitFrom({ average: -1 }, "/inbound")),
      "REQUEST_INVALID /inbound/average",
    );
    assert.equal(
      codeOf(() => liveLimitFrom({ average: 1.5 }, "/inbound")),
      "REQUEST_INVALID /inbound/average",
    );
    assert.equal(
      codeOf(() => liveLimitFrom({ average: Number.NaN }, "/inbound")),
      "REQUEST_INVALID /inbound/average",
    );
    assert.equal(
      codeOf(() => liveLimitFrom({ average: 2 ** 32 }, "/inbound")),
      "REQUEST_INVALID /inbound/average",
    );
    assert.equal(
      codeOf(() => liveLimitFrom({ average: "10" }, "/inbound")),
      "REQUEST_INVALID /inbound/average",
    );
    assert.equal(
      codeOf(() => liveLimitFrom({ average: "10kbps" }, "/inbound")),
      "REQUEST_INVALID /inbound/average",
    );
    assert.equal(
      codeOf(() => liveLimitFrom({ average: "1e999mbit" }, "/inbound")),
      "REQUEST_INVALID /inbound/average",
    );
    assert.equal(
      codeOf(() => liveLimitFrom({ average: 100, peak: 50 }, "/outbound")),
      "REQUEST_INVALID /outbound/peak",
    );
    assert.equal(
      codeOf(() => liveLimitFrom({ average: 100, burst: "9" }, "/outbound")),
      "REQUEST_INVALID /outbound/burst",
    );
    assert.equal(
      codeOf(() => liveLimitFrom({ average: 100, floor: 200 }, "/inbound")),
      "REQUEST_INVALID /inbound/floor",
    );
    assert.equal(
      codeOf(() => liveLimitFrom({ average: "99999999999999gbit" }, "/inbound")),
      "REQUEST_INVALID /inbound/average",
    );
  });

  test("domiftune syntax: AVERAGE[,PEAK[,BURST[,FLOOR]]], empty fields absent, units allowed", () => {
    assert.deepEqual(parseDomiftune("1000", "/inbound"), { average: 1000 });
    assert.deepEqual(parseDomiftune("1000,2000,64,500", "/inbound"), {
      average: 1000,
      peak: 2000,
      burst: 64,
      floor: 500,
    });
    assert.deepEqual(parseDomiftune("1000,,64", "/inbound"), { average: 1000, burst: 64 });
    assert.deepEqual(parseDomiftune("20mbit,40mbit", "/inbound"), { average: "20mbit", peak: "40mbit" });
    assert.equal(
      codeOf(() => parseDomiftune("1,2,3,4,5", "/inbound")),
      "REQUEST_INVALID /inbound",
    );
    assert.equal(
      codeOf(() => parseDomiftune(",5", "/inbound")),
      "REQUEST_INVALID /inbound/average",
    );
  });

  test("libvirt units back: rounded kB/s and KiB, 0 for no limit", () => {
    assert.deepEqual(toLibvirtRate({ rateBitsPerSec: 20e6, ceilBitsPerSec: 40e6, burstBytes: 65536 }), {
      average: 2500,
      peak: 5000,
      burst: 64,
      floor: 0,
    });
    assert.deepEqual(toLibvirtRate(null), { average: 0, peak: 0, burst: 0, floor: 0 });
  });

  test("an interface is named by target dev, MAC (any case), alias or 1-based index", () => {
    const d = parseDomainXml(XML);
    assert.equal(findInterface(d, "vnet4")?.index, 1);
    assert.equal(findInterface(d, "52:54:00:AA:00:01")?.index, 0);
    assert.equal(findInterface(d, "ua-second")?.index, 1);
    assert.equal(findInterface(d, "1")?.index, 0);
    assert.equal(findInterface(d, "2")?.index, 1);
    assert.equal(findInterface(d, "0"), undefined);
    assert.equal(findInterface(d, "3"), undefined);
    assert.equal(findInterface(d, "vnet9"), undefined);
  });

  test("metadata written is metadata read back", () => {
    const xml = renderQosMetadata(
      [
        {
          mac: "52:54:00:aa:00:01",
          inbound: { average: 2500, peak: 5000, burst: 64 },
          outbound: { average: 125 },
        },
      ],
      'g"1',
    );
    const d = parseDomainXml(XML.replace("</uuid>", `</uuid><metadata>${xml}</metadata>`));
    assert.deepEqual(d.warnings, []);
    assert.equal(d.metadataGroup, 'g"1');
    assert.deepEqual(d.metadata[0].inbound, { average: 2500, peak: 5000, burst: 64 });
    assert.deepEqual(d.metadata[0].outbound, { average: 125 });
  });
});

describe("live limits: precedence", () => {
  const policy = parsePolicy(
    `
domains:
  - name: web1
    inbound: { average: 50mbit }
groups:
  - name: g
    inbound: { average: 100mbit }
    select: { networks: [default] }
    memberDefaults:
      inbound: { average: 30mbit, floor: 10mbit }
`,
    "p.yaml",
  );

  test("a live limit beats the policy file; null lifts the direction; absent falls through", () => {
    const d = parseDomainXml(XML);
    const plain = resolveDomain(d, policy).interfaces[0];
    assert.equal(plain.inbound?.source, "policy");
    const live = resolveDomain(
      { ...d, live: [{ mac: "52:54:00:aa:00:01", inbound: { rateBitsPerSec: 7e6, ceilBitsPerSec: 7e6 } }] },
      policy,
    ).interfaces[0];
    assert.equal(live.inbound?.source, "live");
    assert.equal(live.inbound?.rateBitsPerSec, 7e6);
    assert.equal(live.inbound?.mode, "shape");
    const lifted = resolveDomain({ ...d, live: [{ mac: "52:54:00:aa:00:01", inbound: null }] }, policy)
      .interfaces[0];
    assert.equal(lifted.inbound, undefined);
    const other = resolveDomain({ ...d, live: [{ mac: "52:54:00:aa:00:01", outbound: null }] }, policy)
      .interfaces[0];
    assert.equal(other.inbound?.source, "policy");
  });

  test("a group member's live ceiling beats the member defaults; their floor stays unless the live one gives one", () => {
    const d = parseDomainXml(XML);
    const base = resolveDomain(d, policy).interfaces[1];
    assert.equal(base.group?.inbound?.ceilBitsPerSec, 30e6);
    const live = resolveDomain(
      { ...d, live: [{ mac: "52:54:00:aa:00:02", inbound: { rateBitsPerSec: 60e6, ceilBitsPerSec: 60e6 } }] },
      policy,
    ).interfaces[1];
    assert.equal(live.group?.inbound?.ceilBitsPerSec, 60e6);
    assert.equal(live.group?.inbound?.floorBitsPerSec, 10e6);
    const floor = resolveDomain(
      {
        ...d,
        live: [
          {
            mac: "52:54:00:aa:00:02",
            inbound: { rateBitsPerSec: 60e6, ceilBitsPerSec: 60e6, floorBitsPerSec: 20e6 },
          },
        ],
      },
      policy,
    ).interfaces[1];
    assert.equal(floor.group?.inbound?.floorBitsPerSec, 20e6);
  });
});

describe("live store (real files)", () => {
  const limit = (mbit: number) => ({ rateBitsPerSec: mbit * 1e6, ceilBitsPerSec: mbit * 1e6 });

  test("live slot wins over config slot while running; a new start drops live slots only", () => {
    const dir = mkdtempSync(join(tmpdir(), "vq-live-"));
    try {
      const f: LiveFile = {
        version: 1,
        domainUuid: UUID,
        domainName: "web1",
        interfaces: {
          "52:54:00:aa:00:01": {
            live: { inbound: limit(5), outbound: null },
            config: { inbound: limit(8) },
            setAt: "t",
            setBy: "me",
          },
          "52:54:00:aa:00:02": { live: { inbound: limit(3) }, setAt: "t", setBy: "me" },
        },
      };
      writeLiveFile(dir, structuredClone(f));
      assert.deepEqual(liveLimitsOf(readLiveFile(dir, UUID)), [
        { mac: "52:54:00:aa:00:01", inbound: limit(5), outbound: null },
        { mac: "52:54:00:aa:00:02", inbound: limit(3) },
      ]);
      assert.equal(dropLiveSlots(dir, UUID), true);
      assert.deepEqual(liveLimitsOf(readLiveFile(dir, UUID)), [
        { mac: "52:54:00:aa:00:01", inbound: limit(8) },
      ]);
      assert.equal(dropLiveSlots(dir, UUID), false, "nothing more to drop");
      const onDisk = JSON.parse(readFileSync(liveFilePath(dir, UUID), "utf8"));
      assert.deepEqual(Object.keys(onDisk.interfaces), ["52:54:00:aa:00:01"], "emptied interfaces removed");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a damaged file is LIVE_STORE_INVALID naming the file; a crafted UUID cannot leave the directory", () => {
    const dir = mkdtempSync(join(tmpdir(), "vq-live-"));
    try {
      const file = liveFilePath(dir, UUID);
      writeLiveFile(dir, {
        version: 1,
        domainUuid: UUID,
        domainName: "x",
        interfaces: { m: { live: { inbound: limit(1) }, setAt: "t", setBy: "me" } },
      });
      for (const bad of [
        "{",
        '{"version":2,"interfaces":{}}',
        '{"version":1,"interfaces":{"m":{"live":{"inbound":{"rateBitsPerSec":-5,"ceilBitsPerSec":1}}}}}',
        '{"version":1,"interfaces":{"m":{"live":{"sideways":null}}}}',
      ]) {
        writeFileSync(file, bad);
        assert.throws(
          () => readLiveFile(dir, UUID),
          (e: Error & { code?: string }) => e.code === "LIVE_STORE_INVALID" && e.message.includes(file),
          bad,
        );
      }
      assert.throws(() => liveFilePath(dir, "../../etc/passwd"), /not a domain UUID/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("work queue", () => {
  test("one job at a time in arrival order; re-applies of a waiting domain coalesce", async () => {
    const q = new WorkQueue();
    const order: string[] = [];
    let active = 0;
    let most = 0;
    const job = (name: string) => async () => {
      active++;
      most = Math.max(most, active);
      await new Promise((r) => setTimeout(r, 5));
      order.push(name);
      active--;
      return name;
    };
    const a = q.run("d1", job("a"));
    const r1 = q.reapply("d2", job("r1"));
    const r2 = q.reapply("d2", job("r2"));
    const b = q.run("d1", job("b"));
    assert.equal(q.depth, 3);
    assert.equal(await a, "a");
    await Promise.all([r1, r2, b]);
    assert.deepEqual(order, ["a", "r1", "b"], "r2 joined r1");
    assert.equal(most, 1);
    const failing = q.run("d3", async () => {
      throw new Error("boom");
    });
    await assert.rejects(failing, /boom/);
    assert.equal(await q.run("d3", async () => "after"), "after", "a failure does not stop the queue");
    await q.idle();
    assert.equal(q.depth, 0);
  });
});
