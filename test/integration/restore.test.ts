import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { observe, runBatch } from "../../src/adapters/kernel.js";
import { loadRecords, saveRecords } from "../../src/adapters/state.js";
import { groupIfbName } from "../../src/core/names.js";
import { type Observed, planRestore } from "../../src/core/plan/index.js";
import { render } from "../../src/core/tc/render.js";
import { run } from "../../src/lab/exec.js";
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
  uuidFor,
} from "../helpers/netns.js";
import { SEED_001_GROUPS } from "../helpers/seed-policies.js";

// planRestore on the real kernel: apply a state S1 through the engine, dump every device's tc state as text,
// apply a change S2, then plan the way back from the two observations, run it through render() and
// runBatch() as a rollback does, and dump again: the text must be what it was.

const SEED_001 = SEED_001_GROUPS;
/** The same, web's ceiling raised from 30 to 40 Mbit/s (every web member's ceiling with it). */
const SEED_001_WEB_40 = SEED_001.replace(
  "    inbound: { average: 30mbit }\n    outbound: { average: 30mbit }\n    memberDefaults",
  "    inbound: { average: 40mbit }\n    outbound: { average: 40mbit }\n    memberDefaults",
);

/**
 * Everything tc says about every device of the namespace, as text, qdiscs and classes in a stable order.
 * Numbers the kernel picks for itself are
 * blanked: an action's index and reference counts (a filter created again gets a new action), and the u32
 * table a hook filter lives in (`fh 801::800`, `key ht 801`: u32 numbers a priority's table cyclically, so a
 * priority created again gets the next number). A group tree's u32 tables (100:) are virtqos's and stay.
 */
async function tcState(ns: string): Promise<string> {
  const links = JSON.parse((await run("ip", ["-n", ns, "-j", "link", "show"])).stdout) as {
    ifname: string;
    ifalias?: string;
  }[];
  const parts: string[] = [];
  for (const l of links.sort((a, b) => a.ifname.localeCompare(b.ifname))) {
    parts.push(`== ${l.ifname} ${l.ifalias ?? ""}`);
    const qdiscs = (await run("tc", ["-n", ns, "-d", "qdisc", "show", "dev", l.ifname])).stdout;
    parts.push(sortedEntries(qdiscs, "qdisc "));
    parts.push(
      sortedEntries((await run("tc", ["-n", ns, "-d", "class", "show", "dev", l.ifname])).stdout, "class "),
    );
    for (const hook of ["ingress", "egress"]) {
      const r = await run("tc", ["-n", ns, "-d", "filter", "show", "dev", l.ifname, hook], {
        allowFail: true,
      });
      parts.push(
        `-- ${hook}\n${r.stdout.replace(/ fh [0-9a-f]+:/g, " fh H:").replace(/ key ht [0-9a-f]+ /g, " key ht H ")}`,
      );
    }
    if (/ 7651: root/.test(qdiscs)) {
      const r = await run("tc", ["-n", ns, "-d", "filter", "show", "dev", l.ifname, "parent", "7651:"]);
      parts.push(`-- parent 7651:\n${r.stdout}`);
    }
  }
  return parts
    .join("\n")
    .replace(/\bindex \d+ ref \d+ bind \d+/g, "index N ref N bind N")
    .replace(/ (installed|used|firstused|expires) \d+ sec/g, "");
}

/**
 * The entries of a `tc qdisc|class show` (each from a line starting with `head` to the next), sorted: the kernel
 * lists them in the order of its hash buckets, which follows the order they were created in and is not state.
 */
function sortedEntries(text: string, head: string): string {
  const entries: string[] = [];
  for (const line of text.split("\n")) {
    if (line.startsWith(head) || entries.length === 0) entries.push(line);
    else entries[entries.length - 1] += `\n${line}`;
  }
  return entries.sort().join("\n");
}

describe("restore on the real kernel", { skip: SKIP_NOT_ROOT }, () => {
  let lab: Lab;
  let h: Harness;
  const uuids = { cliff: uuidFor("cliff"), rob: uuidFor("rob"), jason: uuidFor("jason") };
  let xml: Record<keyof typeof uuids, string>;

  before(async () => {
    ({ lab, h } = await openLab({ guests: [{ name: "cliff" }, { name: "rob" }, { name: "jason" }] }));
    const [c, r, j] = lab.guests;
    xml = {
      cliff: domainXml("cliff", uuids.cliff, [{ guest: c, bridge: lab.bridge }]),
      rob: domainXml("rob", uuids.rob, [{ guest: r, bridge: lab.bridge, type: "ethernet" }]),
      jason: domainXml("jason", uuids.jason, [{ guest: j, bridge: lab.bridge }]),
    };
  });
  after(() => closeLab(lab, h));

  const observeAll = async (): Promise<Observed> => {
    const links = JSON.parse((await run("ip", ["-n", lab.hostNs, "-j", "link", "show"])).stdout) as {
      ifname: string;
    }[];
    return observe(h.runner, {
      devs: links.map((l) => l.ifname),
      records: loadRecords(h.runDir),
      everything: true,
    });
  };

  /** Run `change` from the current state S1, then restore S1 through render() and runBatch(). */
  async function assertRestores(change: () => Promise<void>): Promise<void> {
    const text1 = await tcState(lab.hostNs);
    const s1 = await observeAll();
    const records1 = loadRecords(h.runDir);
    await change();
    const text2 = await tcState(lab.hostNs);
    assert.notEqual(text2, text1, "the change changes the kernel");
    const s2 = await observeAll();
    const devs = new Set([...s1.links.keys(), ...s2.links.keys()]);
    const r = render(planRestore(s1, s2, devs, h.caps));
    await runBatch(h.runner, "ip", r.ipPre);
    await runBatch(h.runner, "tc", r.tc);
    await runBatch(h.runner, "ip", r.ipPost);
    assert.equal(await tcState(lab.hostNs), text1);
    assert.deepEqual(planRestore(s1, await observeAll(), devs, h.caps), [], "nothing left to restore");
    // The records go back with the kernel, as a rollback leaves them, so the next case starts from S1 whole.
    const now = loadRecords(h.runDir).map((x) => x.domainUuid);
    saveRecords(
      h.runDir,
      records1,
      now.filter((u) => !records1.some((x) => x.domainUuid === u)),
      { door: "test" },
    );
  }

  const apply = async (xmls: string[], text = SEED_001) => {
    const res = await applyXml(h, xmls, policy(text));
    assert.equal(res.failure, undefined, res.failure?.message);
    assert.deepEqual(res.plan.problems, []);
  };

  test("group trees: a member leaves (his class, leaf and MAC filters come back)", async () => {
    for (const name of ["cliff", "rob", "jason"] as const) await apply([xml[name]]);
    await assertRestores(async () => {
      const res = await removeDomain(h, uuids.rob);
      assert.equal(res.failure, undefined, res.failure?.message);
    });
  });

  test("group trees: a group's ceiling changes", async () => {
    await assertRestores(() => apply([xml.cliff], SEED_001_WEB_40));
  });

  test("group trees: a member joins", async () => {
    await removeDomain(h, uuids.rob);
    await assertRestores(() => apply([xml.rob]));
  });

  test("group trees: the last member leaves and the group's IFBs go (they come back whole)", async () => {
    await removeDomain(h, uuids.rob);
    await removeDomain(h, uuids.jason);
    const ifbs = [groupIfbName("host", "inbound"), groupIfbName("host", "outbound")];
    await assertRestores(async () => {
      await removeDomain(h, uuids.cliff);
      const left = (await run("ip", ["-n", lab.hostNs, "-j", "link", "show", "type", "ifb"])).stdout;
      for (const ifb of ifbs) assert.ok(!left.includes(ifb), `${ifb} is gone`);
    });
    await removeDomain(h, uuids.cliff);
  });

  test("per-interface trees: rates change (tbf leaves, IFB tree, tap tree)", async () => {
    const [c] = lab.guests;
    const u = uuidFor("solo-iface");
    const bw = (down: number, up: number) =>
      domainXml("plain", u, [
        { guest: c, bridge: lab.bridge, inbound: { average: down }, outbound: { average: up } },
      ]);
    const res = await applyXml(h, [bw(3750, 1250)]);
    assert.equal(res.failure, undefined, res.failure?.message);
    await assertRestores(async () => {
      const again = await applyXml(h, [bw(2500, 625)]);
      assert.equal(again.failure, undefined, again.failure?.message);
    });
    await assertRestores(async () => {
      const gone = await removeDomain(h, u);
      assert.equal(gone.failure, undefined, gone.failure?.message);
    });
    await removeDomain(h, u);
  });
});
