import assert from "node:assert/strict";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import type { FastifyInstance } from "fastify";
import { AuditStore } from "../../src/adapters/audit.js";
import { buildApi } from "../../src/agent/api/server.js";
import type { AuditEntry, Authenticator, InterfaceView } from "../../src/agent/types.js";
import { MemorySource } from "../../src/lab/memory-source.js";
import type { Lab } from "../../src/lab/topology.js";
import { labService } from "../helpers/lab-service.js";
import {
  closeLab,
  domainXml,
  type Harness,
  normaliseTcDump,
  openLab,
  policy,
  SKIP_NOT_ROOT,
  tcDump,
  uuidFor,
} from "../helpers/netns.js";

// The REST API on the real service, the real engine and real tc (a namespace lab), with the real SQLite audit
// log: concurrent writers end in the last accepted write per interface with nothing lost, and no invalid
// request changes anything (kernel, live store, audit).

const TOKENS: Record<string, { name: string; role: "operator"; via: "token" }> = {
  "tok-op": { name: "op", role: "operator", via: "token" },
};
const auth: Authenticator = {
  authenticate: (h) => {
    const v = h.authorization;
    return typeof v === "string" ? TOKENS[v.replace(/^Bearer /, "")] : undefined;
  },
};
const HEADERS = { authorization: "Bearer tok-op" };

describe("REST API on the real engine (namespace lab)", { skip: SKIP_NOT_ROOT }, () => {
  let lab: Lab;
  let h: Harness;
  let stateDir: string;
  let audit: AuditStore;
  let app: FastifyInstance;
  const DOMAINS = 4;
  const PER_DOMAIN = 5;
  const domains: { name: string; uuid: string; macs: string[]; taps: string[] }[] = [];

  before(async () => {
    ({ lab, h } = await openLab({
      guests: Array.from({ length: PER_DOMAIN }, (_, i) => ({ name: `api${i}` })),
    }));
    stateDir = mkdtempSync(join(tmpdir(), "virtqos-api-"));
    audit = AuditStore.open(join(stateDir, "audit.db"));
    const source = new MemorySource();
    // Four domains of five interfaces on the lab's five taps... each tap may belong to one domain only, so
    // each domain gets interfaces whose target devs are the lab taps renamed per domain: only domain 0 holds
    // real taps; the others hold taps that do not exist (shaped when they appear), as a host's stopped NICs.
    for (let d = 0; d < DOMAINS; d++) {
      const name = `apidom${d}`;
      const uuid = uuidFor(name);
      const ifaces = lab.guests.map((g, i) => {
        const mac = `52:54:00:a${d}:00:${(i + 1).toString(16).padStart(2, "0")}`;
        return { guest: { ...g, mac, tap: d === 0 ? g.tap : `nx${d}x${i}` }, bridge: lab.bridge };
      });
      source.add(name, uuid, domainXml(name, uuid, ifaces));
      domains.push({
        name,
        uuid,
        macs: ifaces.map((f) => f.guest.mac),
        taps: ifaces.map((f) => f.guest.tap),
      });
    }
    const pol = policy(`defaults:\n  inbound: { average: 10mbit }\n  outbound: { average: 10mbit }\n`);
    const { service, source: labSource } = labService(h, stateDir, pol, { audit });
    for (const d of source.doms.values()) labSource.add(d.ref.name, d.ref.uuid, d.xml);
    for (const d of domains) await service.reapply(d.uuid);
    app = buildApi({ service, auth });
    await app.ready();
  });
  after(async () => {
    await app?.close();
    audit?.close();
    await closeLab(lab, h);
    rmSync(stateDir, { recursive: true, force: true });
  });

  test("100 concurrent PATCHes over 20 interfaces: the last accepted write per interface wins, all audited", async () => {
    const before = audit.query({ limit: 10000 }).length;
    const targets = domains.flatMap((d) => d.macs.map((mac) => ({ d, mac })));
    assert.equal(targets.length, 20);
    const requests = Array.from({ length: 100 }, (_, i) => {
      const { d, mac } = targets[i % 20];
      const kBps = 125 * (1 + ((i * 7) % 40)); // 1..40 Mbit/s
      return { d, mac, kBps, i };
    });
    const answers = await Promise.all(
      requests.map((r) =>
        app.inject({
          method: "PATCH",
          url: `/v1/domains/${r.d.name}/interfaces/${r.mac}`,
          headers: HEADERS,
          payload: { inbound: { average: r.kBps }, persist: "live" },
        }),
      ),
    );
    for (const a of answers) assert.equal(a.statusCode, 200, a.body);
    // The queue runs changes in arrival order: inject() delivers them in the order they were made, so the
    // last accepted write per interface is the last request made for it. The audit's order says the same.
    const entries = audit.query({ limit: 10000 }).slice(before);
    assert.equal(entries.length, 100, "every change audited");
    assert.ok(entries.every((e: AuditEntry) => e.result === "ok" && e.door === "api" && e.who === "op"));
    const lastWritten = new Map<string, number>();
    for (const e of entries) {
      // The live limit written (only domain 0's taps exist, so only they have one in force).
      const after = e.after as { inbound: { live?: { rateBitsPerSec: number } } };
      lastWritten.set(`${e.domainName}/${e.iface}`, after.inbound.live?.rateBitsPerSec ?? -1);
    }
    const lastRequested = new Map<string, number>();
    for (const r of requests) lastRequested.set(`${r.d.name}/${r.mac}`, r.kBps * 8000);
    assert.deepEqual(lastWritten, lastRequested, "the audit's last write per interface is the last request");
    // The kernel (domain 0's real taps) and the live store (every domain) hold exactly that.
    for (const d of domains) {
      const res = await app.inject({
        method: "GET",
        url: `/v1/domains/${d.name}/interfaces`,
        headers: HEADERS,
      });
      assert.equal(res.statusCode, 200);
      for (const v of (res.json() as { interfaces: InterfaceView[] }).interfaces) {
        assert.equal(
          v.inbound.live?.rateBitsPerSec,
          lastRequested.get(`${d.name}/${v.mac}`),
          `${d.name} ${v.mac} live`,
        );
      }
    }
    for (const [i, tap] of domains[0].taps.entries()) {
      const want = lastRequested.get(`${domains[0].name}/${domains[0].macs[i]}`) ?? 0;
      const dump = await tcDump(lab.hostNs, tap);
      assert.match(dump, new RegExp(`class htb 7651:1 [^\\n]*rate ${want / 1e6}Mbit`), `${tap}: ${dump}`);
    }
  });

  test("1000 invalid requests change nothing: kernel, live store and audit as before", async () => {
    const dumps = async () =>
      Promise.all(lab.guests.map(async (g) => normaliseTcDump(await tcDump(lab.hostNs, g.tap))));
    const liveFiles = () =>
      readdirSync(join(stateDir, "live"))
        .sort()
        .map((f) => readFileSync(join(stateDir, "live", f), "utf8"));
    const kernelBefore = await dumps();
    const storeBefore = liveFiles();
    const auditBefore = audit.query({ limit: 10000 }).length;
    let seed = 0x1234;
    const rnd = () => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed / 0x7fffffff;
    };
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)];
    const badValues: unknown[] = [
      -1,
      1.5,
      "NaN",
      "1e999mbit",
      "10",
      "10kbps",
      4294967296,
      null,
      [],
      {},
      true,
      "💥",
      "10mbit; rm -rf /",
      "9".repeat(400),
      { average: 5 },
    ];
    const bodies = (): unknown => {
      const r = rnd();
      const d = pick(["inbound", "outbound"]);
      if (r < 0.3) return { [d]: { average: pick(badValues) } };
      if (r < 0.45) return { [d]: { average: 100, peak: pick([50, -5, "x", 1e20]) } };
      if (r < 0.55) return { [d]: { average: 100 }, persist: pick(["forever", 1, null, ""]) };
      if (r < 0.65) return { [d]: { average: 100 }, extra: pick(badValues) };
      if (r < 0.72) return { [d]: { average: 100, floor: pick([1e12, -1, "z"]) } };
      if (r < 0.8) return pick([null, [], "text", 42, {}, { inbound: null }]);
      if (r < 0.9) return { [d]: { average: 100, burst: pick(badValues) } };
      return { [d]: { average: 100 }, door: "nova" };
    };
    const target = domains[0];
    let accepted = 0;
    for (let i = 0; i < 1000; i++) {
      const res = await app.inject({
        method: "PATCH",
        url: `/v1/domains/${target.name}/interfaces/${pick(target.macs)}`,
        headers: HEADERS,
        payload: JSON.stringify(bodies()),
        ...(rnd() < 0.5 ? { headers: { ...HEADERS, "content-type": "application/json" } } : {}),
      });
      assert.ok(res.statusCode < 500, `${res.statusCode}: ${res.body}`);
      if (res.statusCode < 300) accepted++;
    }
    assert.equal(accepted, 0, "every generated body is invalid");
    assert.deepEqual(await dumps(), kernelBefore, "kernel unchanged");
    assert.deepEqual(liveFiles(), storeBefore, "live store unchanged");
    assert.equal(audit.query({ limit: 10000 }).length, auditBefore, "nothing audited: nothing was attempted");
  });
});
