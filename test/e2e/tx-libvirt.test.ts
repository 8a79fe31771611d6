/**
 * Transactions with a real libvirtd + QEMU (TCG) and the installed hook: begin, change a guest's limits through
 * the policy, start a second guest during the transaction (the hook shapes it under the new policy and
 * journals it), roll back: the first guest carries its pre-transaction limits, the second none (the old
 * policy did not cover it), the policy file is byte-identical, and no `virsh start` was blocked.
 *
 * Uses the real default paths (/etc/virtqos/policy.yaml, /run/virtqos, /var/lib/virtqos) because libvirtd runs
 * the hook with its own environment; HookTestHost saves and puts back what it changes.
 */
import assert from "node:assert/strict";
import { readFile, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import {
  createLinuxBridge,
  defineAndStart,
  destroy,
  ensureLibvirt,
  makeDomainXml,
  tapsOf,
  undefine,
  virshOk,
} from "./libvirt-env.js";
import { cli, cliOk, HookTestHost, htbClasses, installHook, ms, qdiscs, writePolicy } from "./virtqos-e2e.js";

const P = "vqx";
const NEUTRAL =
  "# Written by test/e2e/tx-libvirt.test.ts; the original is put back when the test ends.\nversion: 1\n";
const env = await ensureLibvirt();
const host = new HookTestHost(P, NEUTRAL);

const policy = (one: [string, string], two?: [string, string]) =>
  `${NEUTRAL}domains:\n  - name: ${P}-one\n    inbound: { average: ${one[0]} }\n    outbound: { average: ${one[1]} }\n${
    two
      ? `  - name: ${P}-two\n    inbound: { average: ${two[0]} }\n    outbound: { average: ${two[1]} }\n`
      : ""
  }`;

async function rootRate(dev: string): Promise<string | undefined> {
  const root = (await qdiscs(dev)).find((q) => q.root);
  if (root?.handle !== "7651:") return undefined;
  return (await htbClasses(dev)).find((c) => c.classid === "7651:1")?.rate;
}

test(
  "transactions with a real libvirtd",
  { skip: env.ok ? false : env.reason, timeout: 600_000 },
  async (t) => {
    await host.setUp(t);
    const installed = await installHook(t);
    assert.equal(installed.code, 0, installed.stderr);
    const status = JSON.parse(await cliOk(["tx", "status", "--json"])) as { open?: { id: string } };
    assert.equal(
      status.open,
      undefined,
      "a transaction is already open on this host; finish it before this test",
    );

    const bridge = await createLinuxBridge(`${P}-br0`);
    const P1 = policy(["10mbit", "5mbit"]);
    await writePolicy(P1);
    const one = `${P}-one`;
    const two = `${P}-two`;
    await defineAndStart(
      makeDomainXml({
        name: one,
        uuid: host.newUuid(),
        interfaces: [{ type: "bridge", bridge, mac: "52:54:00:7c:00:01" }],
      }),
    );
    t.after(async () => {
      for (const d of [one, two]) {
        await destroy(d);
        await undefine(d);
      }
    });
    const tapOne = (await tapsOf(one)).get("52:54:00:7c:00:01") ?? "";
    assert.equal(await rootRate(tapOne), "10Mbit", "one is shaped under the policy from before");

    const begin = await cli(["tx", "begin", "--json"]);
    assert.equal(begin.code, 0, begin.stderr);
    const id = (JSON.parse(begin.stdout) as { id: string }).id;

    // During the transaction: one's limits change through the policy, and two starts under the new policy.
    await writePolicy(policy(["2mbit", "1mbit"], ["3mbit", "3mbit"]));
    const xmlFile = join(tmpdir(), `${P}-one.xml`);
    await writeFile(xmlFile, await virshOk(["dumpxml", one]));
    const applied = await cli(["apply", "--xml", xmlFile]);
    assert.equal(applied.code, 0, applied.stderr);
    assert.equal(await rootRate(tapOne), "2Mbit", "the change is applied inside the transaction");
    const t0 = performance.now();
    await defineAndStart(
      makeDomainXml({
        name: two,
        uuid: host.newUuid(),
        interfaces: [{ type: "bridge", bridge, mac: "52:54:00:7c:00:02" }],
      }),
    );
    t.diagnostic(`virsh start during the transaction: ${ms(t0)}`);
    const tapTwo = (await tapsOf(two)).get("52:54:00:7c:00:02") ?? "";
    assert.equal(await rootRate(tapTwo), "3Mbit", "the hook shapes a guest started during the transaction");

    const rb = await cli(["tx", "rollback", "--json"]);
    assert.equal(rb.code, 0, `rollback: ${rb.stderr}`);
    const entry = JSON.parse(rb.stdout) as {
      id: string;
      outcome: string;
      verified: boolean;
      domains: string[];
    };
    assert.equal(entry.id, id);
    assert.equal(entry.verified, true);
    assert.ok(entry.domains.includes(two), `journal names the guest started meanwhile: ${entry.domains}`);

    assert.equal(await readFile("/etc/virtqos/policy.yaml", "utf8"), P1, "policy file byte-identical");
    assert.equal(await rootRate(tapOne), "10Mbit", "one is back at its pre-transaction limit");
    assert.equal(await rootRate(tapTwo), undefined, "two: the old policy gives it no limit, so none");
    const st = JSON.parse((await cli(["status", "--json"])).stdout) as {
      interfaces: { guest: string; matches: boolean }[];
    };
    for (const r of st.interfaces.filter((x) => x.guest === one))
      assert.ok(r.matches, "status matches after rollback");
    const log = JSON.parse(await cliOk(["tx", "log", "--json"])) as {
      transactions: { id: string; outcome: string }[];
    };
    assert.equal(log.transactions.at(-1)?.outcome, "rollback");
  },
);
