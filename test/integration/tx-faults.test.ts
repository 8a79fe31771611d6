import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { loadPolicy } from "../../src/adapters/policy-load.js";
import { readOpenTx } from "../../src/adapters/tx-journal.js";
import { reconcile } from "../../src/app/engine.js";
import { collectStatus } from "../../src/app/status.js";
import { type TxContext, txBegin, txRollback } from "../../src/app/tx.js";
import { parseDomainXml } from "../../src/core/domain-xml.js";
import type { Lab } from "../../src/lab/topology.js";
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

// Fault injection: `virtqos apply` and `virtqos tx rollback` killed with SIGKILL at a random moment, then run
// again. Every time the next run must converge: status all matching, the expected IFBs and no others, a
// second plan with nothing to do; after a rollback, the kernel equal to the snapshot.

const BIN = fileURLToPath(new URL("../../bin/virtqos", import.meta.url));
const RUNS = Number(process.env.VIRTQOS_FAULT_RUNS ?? 50);

const POLICY = (rate: string, members: string) => `groups:
  - name: g
    inbound: { average: 40mbit }
    outbound: { average: 40mbit }
    memberDefaults:
      inbound: { floor: 5mbit }
      outbound: { floor: 5mbit }
    select:
      domains: [${members}]
defaults:
  inbound: { average: ${rate} }
  outbound: { average: ${rate} }
`;
const PA = POLICY("10mbit", '"f0", "f1"');
const PB = POLICY("3mbit", '"f2", "f3"');

describe("SIGKILL at a random moment, then the next run converges", { skip: SKIP_NOT_ROOT }, () => {
  let lab: Lab;
  let h: Harness;
  let dir: string;
  let policyFile: string;
  let files: string[];
  let ctx: TxContext;
  const env = () => ({ ...process.env, VIRTQOS_LOG: "silent" });
  const cli = (args: string[]) => [
    BIN,
    "--config",
    policyFile,
    "--run-dir",
    h.runDir,
    "--state-dir",
    dir,
    "--netns",
    lab.hostNs,
    ...args,
  ];

  /** Start the CLI, SIGKILL it after `delayMs`; whether it was still running then. */
  function killAfter(args: string[], delayMs: number): Promise<boolean> {
    return new Promise((resolve) => {
      const child = spawn(process.execPath, cli(args), { stdio: "ignore", env: env() });
      let exited = false;
      child.on("exit", () => {
        exited = true;
      });
      setTimeout(() => {
        const alive = !exited;
        child.kill("SIGKILL");
        child.on("close", () => resolve(alive));
        if (exited) resolve(false);
      }, delayMs);
    });
  }

  async function applyInProcess(): Promise<number> {
    const domains = files.map((f, i) => parseDomainXml(domainXmls[i] ?? f));
    const r = await reconcile(
      { ...h.ctx, stateDir: dir },
      { domains, policy: loadPolicy(policyFile), scope: domains.map((d) => d.uuid), sweep: true },
    );
    assert.equal(r.failure, undefined, r.failure?.message);
    return r.plan.ops.length;
  }

  async function assertConverged(what: string): Promise<void> {
    // The next run, as an operator (or the hook) would start it: finishes whatever the killed one left,
    // including a probe device it was killed with.
    const next = spawnSync(process.execPath, cli(["apply", "--xml", ...files]), {
      env: env(),
      encoding: "utf8",
    });
    assert.equal(next.status, 0, `${what}: the next run failed: ${next.stdout}${next.stderr}`);
    assert.equal(await applyInProcess(), 0, `${what}: the run after the next one still had work`);
    const rows = await collectStatus(h.runner, h.runDir, h.caps, loadPolicy(policyFile));
    assert.equal(rows.length, 8, `${what}: ${rows.length} status rows`);
    for (const r of rows) assert.ok(r.matches, `${what}: ${r.dev} ${r.direction} does not match`);
    // Two group IFBs and one upload IFB per guest outside the group: nothing leaked, nothing missing.
    assert.equal(
      (await ifbsIn(lab.hostNs)).length,
      4,
      `${what}: IFBs ${(await ifbsIn(lab.hostNs)).join(",")}`,
    );
  }

  let domainXmls: string[] = [];
  before(async () => {
    ({ lab, h } = await openLab({ guests: [0, 1, 2, 3].map((i) => ({ name: `f${i}` })) }));
    dir = mkdtempSync(join(tmpdir(), "virtqos-faults-"));
    policyFile = join(dir, "policy.yaml");
    domainXmls = lab.guests.map((g) =>
      domainXml(g.name, uuidFor(g.name), [{ guest: g, bridge: lab.bridge }]),
    );
    files = domainXmls.map((x, i) => {
      const f = join(dir, `f${i}.xml`);
      writeFileSync(f, x);
      return f;
    });
    ctx = {
      runner: h.runner,
      runDir: h.runDir,
      stateDir: dir,
      policyFile,
      log: h.ctx.log,
      who: { uid: 0, user: "test", door: "test" },
      caps: async () => h.caps,
    };
  });
  after(async () => {
    await closeLab(lab, h);
    rmSync(dir, { recursive: true, force: true });
  });

  test(`apply killed ${RUNS} times`, async (t) => {
    let midRun = 0;
    for (let i = 0; i < RUNS; i++) {
      writeFileSync(policyFile, i % 2 ? PA : PB);
      if (await killAfter(["apply", "--xml", ...files], 150 + Math.random() * 450)) midRun++;
      await assertConverged(`apply run ${i}`);
    }
    t.diagnostic(
      `apply: ${RUNS} runs killed, ${midRun} of them while still running; every next run converged`,
    );
    assert.ok(midRun >= RUNS / 4, `only ${midRun} kills landed while apply ran: the delays miss it`);
  });

  test(`rollback killed ${RUNS} times`, async (t) => {
    let midRun = 0;
    const norm = normaliseTcDump;
    for (let i = 0; i < RUNS; i++) {
      writeFileSync(policyFile, PA);
      await applyInProcess();
      const before = await Promise.all(lab.guests.map((g) => tcDump(lab.hostNs, g.tap).then(norm)));
      await txBegin(ctx);
      writeFileSync(policyFile, PB);
      await applyInProcess();
      if (await killAfter(["tx", "rollback"], 150 + Math.random() * 450)) midRun++;
      if (readOpenTx(dir)) {
        const r = await txRollback(ctx);
        assert.deepEqual(r.differences, [], `rollback run ${i}`);
      }
      const now = await Promise.all(lab.guests.map((g) => tcDump(lab.hostNs, g.tap).then(norm)));
      assert.deepEqual(now, before, `rollback run ${i}: taps differ from the snapshot`);
      await assertConverged(`rollback run ${i}`);
    }
    t.diagnostic(
      `rollback: ${RUNS} runs killed, ${midRun} of them while still running; every next run converged`,
    );
    assert.ok(midRun >= RUNS / 4, `only ${midRun} kills landed while the rollback ran`);
  });
});
