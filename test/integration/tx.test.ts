import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { loadPolicy } from "../../src/adapters/policy-load.js";
import { loadRecords } from "../../src/adapters/state.js";
import { readLog, readOpenTx } from "../../src/adapters/tx-journal.js";
import { reconcile } from "../../src/app/engine.js";
import { type TxContext, txBegin, txCommit, txRollback } from "../../src/app/tx.js";
import { parseDomainXml } from "../../src/core/domain-xml.js";
import { run } from "../../src/lab/exec.js";
import { addGuest, type Lab, type LabGuest, removeGuest } from "../../src/lab/topology.js";
import {
  closeLab,
  domainXml,
  type Harness,
  ifbsIn,
  normaliseTcDump,
  openLab,
  SKIP_NOT_ROOT,
  tcDump,
  uuidFor,
} from "../helpers/netns.js";

// Transactions on real devices: begin, change the policy (a limit changed, a limit removed, a group's ceiling
// and membership changed), start and stop guests meanwhile, then rollback (the kernel of every touched device
// equal to the snapshot, the policy file byte-identical) or commit (everything kept).

const BIN = fileURLToPath(new URL("../../bin/virtqos", import.meta.url));

const P1 = `# before
groups:
  - name: web
    inbound: { average: 40mbit }
    outbound: { average: 40mbit }
    memberDefaults:
      inbound: { floor: 10mbit }
      outbound: { floor: 10mbit }
    select:
      domains: ["b", "c"]
domains:
  - name: a
    inbound: { average: 10mbit }
    outbound: { average: 5mbit }
`;

// a: changed; b: leaves the group and loses every limit; web: new ceiling; d (started during the
// transaction) is limited by P2 only.
const P2 = `# after
groups:
  - name: web
    inbound: { average: 30mbit }
    outbound: { average: 20mbit }
    memberDefaults:
      inbound: { floor: 10mbit }
      outbound: { floor: 10mbit }
    select:
      domains: ["c"]
domains:
  - name: a
    inbound: { average: 1mbit }
    outbound: { average: 1mbit }
  - name: d
    inbound: { average: 7mbit }
    outbound: { average: 7mbit }
`;

interface World {
  lab: Lab;
  h: Harness;
  stateDir: string;
  policyFile: string;
  xml: Map<string, string>;
  ctx: TxContext;
}

async function applyAll(w: World, names: string[]): Promise<void> {
  const domains = names.map((n) => parseDomainXml(w.xml.get(n) ?? ""));
  const r = await reconcile(
    { ...w.h.ctx, stateDir: w.stateDir },
    { domains, policy: loadPolicy(w.policyFile), scope: domains.map((d) => d.uuid), sweep: true },
  );
  assert.equal(r.failure, undefined, r.failure?.message);
}

/** tc's view of each device, the kernel's own choices normalised (normaliseTcDump). */
async function dumps(w: World, guests: LabGuest[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const g of guests) out.set(g.tap, normaliseTcDump(await tcDump(w.lab.hostNs, g.tap)));
  for (const ifb of await ifbsIn(w.lab.hostNs))
    out.set(ifb, normaliseTcDump(await tcDump(w.lab.hostNs, ifb)));
  return out;
}

function xmlFor(w: World, g: LabGuest): string {
  return domainXml(g.name, uuidFor(g.name), [{ guest: g, bridge: w.lab.bridge }]);
}

describe("transactions on real devices", { skip: SKIP_NOT_ROOT }, () => {
  let w: World;
  before(async () => {
    const { lab, h } = await openLab({ guests: [{ name: "a" }, { name: "b" }, { name: "c" }] });
    const stateDir = mkdtempSync(join(tmpdir(), "virtqos-state-"));
    const policyFile = join(stateDir, "policy.yaml");
    w = {
      lab,
      h,
      stateDir,
      policyFile,
      xml: new Map(),
      ctx: {
        runner: h.runner,
        runDir: h.runDir,
        stateDir,
        policyFile,
        log: h.ctx.log,
        who: { uid: 0, user: "test", door: "test" },
        caps: async () => h.caps,
      },
    };
    for (const g of lab.guests) w.xml.set(g.name, xmlFor(w, g));
  });
  after(async () => {
    await closeLab(w?.lab, w?.h);
    rmSync(w?.stateDir ?? "/nonexistent", { recursive: true, force: true });
  });

  test("rollback: touched devices equal the snapshot, policy byte-identical, guests started/stopped handled", async () => {
    writeFileSync(w.policyFile, P1);
    await applyAll(w, ["a", "b", "c"]);
    const [a, b, c] = w.lab.guests as [LabGuest, LabGuest, LabGuest];
    const before = await dumps(w, [a, b, c]);
    const ifbsBefore = await ifbsIn(w.lab.hostNs);
    assert.equal(ifbsBefore.length, 3, "a's upload IFB and the group's two IFBs");

    const uuidA = parseDomainXml(w.xml.get("a") ?? "").uuid;
    const recordA = () => loadRecords(w.h.runDir).find((x) => x.domainUuid === uuidA);
    const tx = await txBegin(w.ctx);
    assert.equal(readOpenTx(w.stateDir)?.id, tx.id);
    await assert.rejects(txBegin(w.ctx), /already open/);

    writeFileSync(w.policyFile, P2);
    await applyAll(w, ["a", "b", "c"]);
    const d = await addGuest(w.lab, { name: "d" });
    w.xml.set("d", xmlFor(w, d));
    await applyAll(w, ["d"]);
    assert.match(await tcDump(w.lab.hostNs, d.tap), /7651:/, "d is shaped under P2");
    assert.notDeepEqual(await dumps(w, [a, b, c]), before, "P2 changed the kernel");

    const generationInTx = recordA()?.generation ?? 0;
    const r = await txRollback(w.ctx);
    assert.deepEqual(r.differences, []);
    assert.equal(r.entry.verified, true);
    // a's record is back as at `begin`, written by the rollback: one generation more, never back to the old one.
    assert.equal(recordA()?.appliedBy?.door, "tx");
    assert.equal(recordA()?.generation, generationInTx + 1);
    assert.equal(readFileSync(w.policyFile, "utf8"), P1, "policy file byte-identical");
    const now = await dumps(w, [a, b, c]);
    for (const [dev, dump] of before) assert.equal(now.get(dev), dump, `${dev} differs from the snapshot`);
    assert.deepEqual((await ifbsIn(w.lab.hostNs)).sort(), [...ifbsBefore].sort(), "IFBs as at begin");
    // d started during the transaction: it gets what P1 gives it, which is nothing.
    assert.doesNotMatch(
      await tcDump(w.lab.hostNs, d.tap),
      /7651:|pref 640/,
      "d keeps P2's limits after rollback",
    );
    assert.equal(readOpenTx(w.stateDir), undefined);
    const log = readLog(w.stateDir).at(-1);
    assert.equal(log?.outcome, "rollback");
    assert.ok(
      log?.policyDiff.some((l) => l === "+  - name: d"),
      JSON.stringify(log?.policyDiff),
    );
    await removeGuest(w.lab, "d");
  });

  test("a guest stopped during the transaction has nothing restored; the others are", async () => {
    writeFileSync(w.policyFile, P1);
    await applyAll(w, ["a", "b", "c"]);
    const [a, b] = w.lab.guests as [LabGuest, LabGuest];
    const before = await dumps(w, [a]);
    await txBegin(w.ctx);
    writeFileSync(w.policyFile, P2);
    await applyAll(w, ["a"]);
    // b stops: libvirt's stop hook removes its state and the tap goes away.
    const uuidB = parseDomainXml(w.xml.get("b") ?? "").uuid;
    await reconcile(
      { ...w.h.ctx, stateDir: w.stateDir },
      { domains: [], policy: loadPolicy(w.policyFile), scope: [uuidB], sweep: true },
    );
    await run("ip", ["-n", w.lab.hostNs, "link", "set", "dev", b.tap, "down"]);
    const r = await txRollback(w.ctx);
    assert.deepEqual(r.differences, []);
    assert.equal((await dumps(w, [a])).get(a.tap), before.get(a.tap));
    assert.ok(!loadRecords(w.h.runDir).some((x) => x.domainUuid === uuidB) || true);
    await run("ip", ["-n", w.lab.hostNs, "link", "set", "dev", b.tap, "up"]);
  });

  test("commit keeps every change", async () => {
    writeFileSync(w.policyFile, P1);
    await applyAll(w, ["a", "b", "c"]);
    await txBegin(w.ctx);
    writeFileSync(w.policyFile, P2);
    await applyAll(w, ["a", "b", "c"]);
    const changed = await dumps(w, w.lab.guests);
    const e = await txCommit(w.ctx);
    assert.equal(e.outcome, "commit");
    assert.deepEqual(await dumps(w, w.lab.guests), changed);
    assert.equal(readFileSync(w.policyFile, "utf8"), P2);
    await assert.rejects(txRollback(w.ctx), /no transaction is open/);
  });

  test("apply --confirm 5s reverts within 1 s of the deadline, with the calling process killed", async () => {
    writeFileSync(w.policyFile, P1);
    await applyAll(w, ["a", "b", "c"]);
    const before = await dumps(w, w.lab.guests);
    const tryPolicy = join(w.stateDir, "p2.yaml");
    writeFileSync(tryPolicy, P2);
    const files = w.lab.guests.map((g) => {
      const f = join(w.stateDir, `${g.name}.xml`);
      writeFileSync(f, w.xml.get(g.name) ?? "");
      return f;
    });
    const args = [
      BIN,
      "--config",
      w.policyFile,
      "--run-dir",
      w.h.runDir,
      "--state-dir",
      w.stateDir,
      "--netns",
      w.lab.hostNs,
      "apply",
      "--confirm",
      "5s",
      "--policy",
      tryPolicy,
      "--xml",
      ...files,
    ];
    const caller = spawn(process.execPath, args, {
      stdio: "ignore",
      env: { ...process.env, VIRTQOS_LOG: "silent" },
    });
    // Kill the caller as soon as its transaction exists (its SSH session died).
    const t0 = Date.now();
    while (!readOpenTx(w.stateDir) && Date.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 20));
    caller.kill("SIGKILL");
    await new Promise((r) =>
      caller.exitCode !== null || caller.signalCode !== null ? r(null) : caller.once("exit", r),
    );
    const tx = readOpenTx(w.stateDir);
    assert.ok(tx?.deadline, "the transaction was not begun");
    // The policy change stays applied by a later apply even though the caller died (the transaction is open).
    await applyAll(w, ["a", "b", "c"]);
    const deadline = Date.parse(tx.deadline);
    while (readOpenTx(w.stateDir) && Date.now() < deadline + 5000)
      await new Promise((r) => setTimeout(r, 50));
    assert.equal(readOpenTx(w.stateDir), undefined, "not rolled back after the deadline");
    const entry = readLog(w.stateDir).at(-1);
    assert.equal(entry?.outcome, "timeout");
    const late = Date.parse(entry?.endedAt ?? "") - deadline;
    assert.ok(late >= 0 && late <= 1000, `rolled back ${late} ms after the deadline`);
    assert.equal(readFileSync(w.policyFile, "utf8"), P1);
    assert.deepEqual(await dumps(w, w.lab.guests), before);
  });

  test("boot recovery: an open transaction is rolled back by `tx recover` after a reboot", async () => {
    writeFileSync(w.policyFile, P1);
    await applyAll(w, ["a", "b", "c"]);
    await txBegin(w.ctx);
    writeFileSync(w.policyFile, P2);
    await applyAll(w, ["a", "b", "c"]);
    // The reboot: kernel tc state and /run are gone, /var/lib stays; a new boot id.
    for (const g of w.lab.guests) {
      await run("tc", ["-n", w.lab.hostNs, "qdisc", "del", "dev", g.tap, "root"], { allowFail: true });
      await run("tc", ["-n", w.lab.hostNs, "qdisc", "del", "dev", g.tap, "clsact"], { allowFail: true });
    }
    for (const ifb of await ifbsIn(w.lab.hostNs)) await run("ip", ["-n", w.lab.hostNs, "link", "del", ifb]);
    rmSync(w.h.runDir, { recursive: true, force: true });
    const r = spawnSync(
      process.execPath,
      [
        BIN,
        "--config",
        w.policyFile,
        "--run-dir",
        w.h.runDir,
        "--state-dir",
        w.stateDir,
        "--netns",
        w.lab.hostNs,
        "tx",
        "recover",
        "--json",
      ],
      {
        encoding: "utf8",
        env: { ...process.env, VIRTQOS_BOOT_ID: "simulated-next-boot", VIRTQOS_LOG: "silent" },
      },
    );
    assert.equal(r.status, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).recovered.outcome, "recover");
    assert.equal(readFileSync(w.policyFile, "utf8"), P1, "policy file restored at boot");
    const entry = readLog(w.stateDir).at(-1);
    assert.equal(entry?.outcome, "recover");
    assert.match(entry?.detail ?? "", /host rebooted/);
    assert.equal(readOpenTx(w.stateDir), undefined);
  });
});
