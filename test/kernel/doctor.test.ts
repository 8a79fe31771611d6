import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { run } from "../../src/lab/exec.js";
import { kernelGate } from "../helpers/kernel.js";

// `virtqos doctor` on a kernel with everything: it must find fq_codel, sfq, police and matchall and pick the
// fq_codel leaf (the test kernel has none of them and gets the tbf/bfifo FIFO recipe).

const gate = await kernelGate(["qdisc:fq_codel", "qdisc:sfq", "action:police", "classifier:matchall", "ifb"]);
const CLI = new URL("../../bin/virtqos", import.meta.url).pathname;

interface Doctor {
  kernel: string;
  qdiscs: string[];
  classifiers: string[];
  actions: string[];
  ifb: boolean;
  ok: boolean;
  recipe: { download: string; leafReason: string; upload: string };
}

describe("virtqos doctor on the stock kernel", { skip: gate.skip }, () => {
  const ns = `vqk-doctor-${process.pid}`;
  let dir: string;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "virtqos-doctor-"));
    await run("ip", ["netns", "add", ns]);
  });
  after(async () => {
    await run("ip", ["netns", "del", ns], { allowFail: true });
    rmSync(dir, { recursive: true, force: true });
  });

  const doctor = async (policyText: string): Promise<Doctor> => {
    const config = join(dir, `policy-${Math.random().toString(36).slice(2)}.yaml`);
    writeFileSync(config, policyText);
    // --netns: the probe's throw-away IFB is created in our own namespace.
    const r = await run(process.execPath, [
      CLI,
      "--netns",
      ns,
      "--config",
      config,
      "--run-dir",
      dir,
      "doctor",
      "--json",
    ]);
    return JSON.parse(r.stdout) as Doctor;
  };

  test("the kernel has what this file tests", () => gate.assertPresent());

  test("doctor --json reports fq_codel, sfq, police and matchall and chooses the fq_codel leaf", async () => {
    const d = await doctor("leaf: auto\n");
    console.log(
      `doctor: kernel ${d.kernel}; qdiscs ${d.qdiscs.join(",")}; classifiers ${d.classifiers.join(",")}; actions ${d.actions.join(",")}`,
    );
    console.log(
      `doctor: download ${d.recipe.download}; leaf: ${d.recipe.leafReason}; upload ${d.recipe.upload}`,
    );
    for (const q of ["htb", "fq_codel", "sfq", "clsact"])
      assert.ok(d.qdiscs.includes(q), `qdisc ${q} missing: ${d.qdiscs}`);
    assert.ok(d.classifiers.includes("matchall"), `matchall missing: ${d.classifiers}`);
    assert.ok(d.classifiers.includes("u32"));
    for (const a of ["police", "mirred"])
      assert.ok(d.actions.includes(a), `action ${a} missing: ${d.actions}`);
    assert.equal(d.ifb, true);
    assert.equal(d.ok, true);
    assert.match(d.recipe.download, /leaf fq_codel/);
    assert.match(d.recipe.leafReason, /fq_codel/);
    assert.match(d.recipe.upload, /matchall/);
  });

  test("doctor follows the policy's leaf and upload choices", async () => {
    const sfq = await doctor("leaf: sfq\n");
    assert.match(sfq.recipe.download, /leaf sfq/);
    const fifo = await doctor("leaf: fifo\n");
    assert.match(fifo.recipe.download, /leaf (tbf|bfifo)/);
    const police = await doctor("upload: police\n");
    assert.match(police.recipe.upload, /^police/);
  });
});
