import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { processRunner } from "../../src/adapters/exec.js";
import { readOvsState } from "../../src/adapters/ovs.js";
import { collectStatus } from "../../src/app/status.js";
import { interfaceIfbName } from "../../src/core/names.js";
import { run, sleep } from "../../src/lab/exec.js";
import { runTransfers } from "../../src/lab/iperf.js";
import type { Lab } from "../../src/lab/topology.js";
import {
  assertWithin,
  describeTransfer,
  kernelGate,
  mbit,
  policeActions,
  tailMean,
  tcState,
  udpStreams,
} from "../helpers/kernel.js";
import {
  applyXml,
  closeLab,
  type Harness,
  openLab,
  policy,
  removeDomain,
  uuidFor,
} from "../helpers/netns.js";

// Open vSwitch with the KERNEL datapath (the test machines only have the userspace one): a guest whose tap is
// an OVS port, shaped by virtqos in both directions and measured. Then what OVS does to the tap's tc state when
// it adds the port, when another port is added, and when it restarts -- recorded as facts (docs/kernel-vm.md)
// for the drift-repair work. OVS runs inside the lab's host namespace with its own database and run directory.

const gate = await kernelGate([
  "openvswitch",
  "qdisc:fq_codel",
  "classifier:matchall",
  "ifb",
  "action:police",
]);
const CTL = "/usr/share/openvswitch/scripts/ovs-ctl";
const BRIDGE = "vqovs0";
const RATE = 20e6;

describe("Open vSwitch kernel datapath", { skip: gate.skip }, () => {
  let lab: Lab;
  let h: Harness;
  let dir: string;
  const uuid = uuidFor("ovs");
  let xml: string;
  const pol = () =>
    policy(
      `domains:\n  - name: ovs\n    inbound: { average: ${RATE / 1e6}mbit }\n    outbound: { average: ${RATE / 1e6}mbit }\n`,
    );

  const ctl = async (command: "start" | "stop" | "restart") => {
    const t0 = Date.now();
    const r = await run(
      "env",
      [
        `OVS_RUNDIR=${dir}`,
        `OVS_LOGDIR=${dir}`,
        `OVS_DBDIR=${dir}`,
        CTL,
        command,
        "--system-id=random",
        `--db-file=${dir}/conf.db`,
        `--db-sock=${dir}/db.sock`,
        "--no-mlockall",
        "--no-record-hostname",
      ],
      { netns: lab.hostNs, allowFail: command === "stop", timeoutMs: 120_000 },
    );
    console.log(`ovs-ctl ${command}: ${((Date.now() - t0) / 1000).toFixed(1)} s`);
    return r;
  };
  const vsctl = async (...args: string[]) =>
    (await run("ovs-vsctl", [`--db=unix:${dir}/db.sock`, "--timeout=30", ...args], { netns: lab.hostNs }))
      .stdout;
  const state = async (what: string) => {
    const g = lab.guests[0];
    const s = await tcState(lab.hostNs, g.tap);
    const ifb = interfaceIfbName(uuid, g.mac);
    const ifbExists =
      (await run("ip", ["-n", lab.hostNs, "link", "show", "dev", ifb], { allowFail: true })).code === 0;
    const ifbState = ifbExists ? await tcState(lab.hostNs, ifb) : undefined;
    console.log(
      `---- ${what}: ${g.tap}\nqdiscs:\n${s.qdiscs}\nclasses:\n${s.classes || "(none)"}\nfilters:\n${s.filters || "(none)"}\nIFB ${ifb}: ${ifbExists ? `present, root ${/qdisc (\w+ \w+:) root/.exec(ifbState?.qdiscs ?? "")?.[1]}` : "GONE"}`,
    );
    return { ...s, ifbExists, ifbQdiscs: ifbState?.qdiscs ?? "" };
  };
  /** What is left of virtqos's state on the tap: the facts docs/kernel-vm.md records. */
  const facts = (x: Awaited<ReturnType<typeof state>>) => ({
    root: /qdisc htb 7651: root/.test(x.qdiscs)
      ? "virtqos htb 7651:"
      : /qdisc noqueue 0: root/.test(x.qdiscs)
        ? "noqueue (kernel default)"
        : x.qdiscs.split("\n")[0],
    classAndLeaf: /class htb 7651:1 /.test(x.classes) && /parent 7651:1/.test(x.qdiscs),
    clsact: /qdisc clsact ffff:/.test(x.qdiscs),
    redirect: /pref 64000 matchall[\s\S]*Redirect to device vqi/.test(x.filters),
    ifb: x.ifbExists && /qdisc htb 7651: root/.test(x.ifbQdiscs),
  });
  const OVS_WIPED = {
    root: "noqueue (kernel default)",
    classAndLeaf: false,
    clsact: true,
    redirect: true,
    ifb: true,
  };
  const INTACT = { root: "virtqos htb 7651:", classAndLeaf: true, clsact: true, redirect: true, ifb: true };
  /** Re-applying after OVS wiped the root touches only the root tree: the redirect and the IFB are reused. */
  const assertRootOnly = (ops: { op: string }[]) =>
    assert.deepEqual([...new Set(ops.map((o) => o.op))].sort(), [
      "class-replace",
      "leaf-replace",
      "root-replace",
    ]);
  const matches = async () => {
    const rows = await collectStatus(h.runner, h.runDir, h.caps, pol());
    return Object.fromEntries(rows.map((r) => [r.direction, r.matches]));
  };
  const measure = async (what: string, direction: "download" | "upload") => {
    const [r] = await runTransfers(lab, [
      { guest: lab.guests[0], direction, protocol: "tcp", seconds: 4, omitSeconds: 1 },
    ]);
    console.log(describeTransfer(`${what} ${direction}`, r, RATE));
    return r.l2BitsPerSec;
  };

  before(async () => {
    ({ lab, h } = await openLab({ guests: [{ name: "o" }] }));
    dir = mkdtempSync(join(existsSync("/run") ? "/run" : tmpdir(), "virtqos-ovs-"));
    const g = lab.guests[0];
    xml = `<domain type='kvm'><name>ovs</name><uuid>${uuid}</uuid><devices><interface type='bridge'><mac address='${g.mac}'/><source bridge='${BRIDGE}'/><virtualport type='openvswitch'/><target dev='${g.tap}'/><model type='virtio'/></interface></devices></domain>`;
    await ctl("start");
    // A kernel-datapath bridge (no datapath_type=netdev), joined to the lab's Linux bridge (and so to the
    // peer) by a veth pair.
    await vsctl("add-br", BRIDGE);
    const ip = (...args: string[]) => run("ip", ["-n", lab.hostNs, ...args]);
    await ip("link", "set", BRIDGE, "up");
    await ip("link", "add", "vqovp0", "type", "veth", "peer", "name", "vqovp1");
    await ip("link", "set", "vqovp0", "master", lab.bridge, "up");
    await ip("link", "set", "vqovp1", "up");
    await vsctl("add-port", BRIDGE, "vqovp1");
  });
  after(async () => {
    if (h) await removeDomain(h, uuid).catch(() => {});
    if (dir) await ctl("stop").catch(() => {});
    await closeLab(lab, h);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("the kernel has what this file tests", async () => {
    gate.assertPresent();
    const dp = await run("ovs-dpctl", ["show"], { netns: lab.hostNs });
    console.log(dp.stdout.trim());
    assert.match(dp.stdout, /system@ovs-system/, "no kernel datapath");
  });

  test("OVS adding a tap that virtqos already shapes deletes the root qdisc, not the redirect or IFB", async () => {
    const g = lab.guests[0];
    const r = await applyXml(h, [xml], pol());
    assert.deepEqual(r.plan.problems, []);
    assert.deepEqual(facts(await state("shaped, before add-port")), INTACT);
    await run("ip", ["-n", lab.hostNs, "link", "set", g.tap, "nomaster"]);
    await vsctl("add-port", BRIDGE, g.tap);
    await sleep(1000);
    const after_ = await state("after ovs-vsctl add-port of the tap");
    const m = await matches();
    console.log(`facts after add-port: ${JSON.stringify(facts(after_))}; status ${JSON.stringify(m)}`);
    // OVS deletes the root qdisc (virtqos's HTB, its class and leaf: guest download unshaped) and leaves the
    // clsact qdisc, the ingress redirect and the IFB alone (guest upload still shaped).
    assert.deepEqual(facts(after_), OVS_WIPED);
    assert.equal(m.inbound, false, "status did not notice the deleted root");
  });

  test("re-applied (as `started begin` does): both directions within 3 % through the kernel datapath", async () => {
    const r = await applyXml(h, [xml], pol());
    assert.deepEqual(r.plan.problems, []);
    console.log(`re-apply ops: ${r.plan.ops.map((o) => o.op).join(", ") || "none"}`);
    assertRootOnly(r.plan.ops);
    assert.deepEqual(await matches(), { inbound: true, outbound: true });
    for (const direction of ["download", "upload"] as const) {
      assertWithin(await measure("OVS port", direction), RATE, `OVS port ${direction}`);
    }
  });

  test("another port added: the shaped tap is left alone", async () => {
    const before_ = await state("before add-port of another port");
    await run("ip", ["-n", lab.hostNs, "link", "add", "vqovx0", "type", "veth", "peer", "name", "vqovx1"]);
    await vsctl("add-port", BRIDGE, "vqovx0");
    await sleep(1000);
    const after_ = await state("after add-port of another port");
    assert.deepEqual(facts(after_), INTACT);
    assert.equal(after_.qdiscs.replace(/refcnt \d+/, ""), before_.qdiscs.replace(/refcnt \d+/, ""));
    assert.equal(after_.classes, before_.classes);
    assert.equal(after_.filters, before_.filters);
    const again = await applyXml(h, [xml], pol());
    assert.deepEqual(again.plan.ops, []);
  });

  test("OVS restart deletes the root qdisc again; upload stays shaped; re-apply repairs download", async () => {
    await ctl("restart");
    await sleep(1000);
    const after_ = await state("after ovs-ctl restart");
    const m = await matches();
    console.log(`facts after restart: ${JSON.stringify(facts(after_))}; status ${JSON.stringify(m)}`);
    assert.deepEqual(facts(after_), OVS_WIPED);
    assert.equal(m.inbound, false, "status did not notice the deleted root");
    // Traffic agrees: download unshaped, upload still at the limit through the surviving redirect and IFB.
    const down = await measure("after restart, before re-apply", "download");
    assert.ok(down > 3 * RATE, `download ${mbit(down)}: still shaped after OVS deleted the root?`);
    assertWithin(await measure("after restart, before re-apply", "upload"), RATE, "upload after OVS restart");
    const r = await applyXml(h, [xml], pol());
    console.log(`re-apply ops: ${r.plan.ops.map((o) => o.op).join(", ") || "none"}`);
    assertRootOnly(r.plan.ops);
    assert.deepEqual(await matches(), { inbound: true, outbound: true });
    assertWithin(await measure("re-applied after restart", "download"), RATE, "download after re-apply");
  });

  test("with QoS type linux-noop on the port, a restart leaves everything in place", async () => {
    const g = lab.guests[0];
    await vsctl("--", "set", "port", g.tap, "qos=@q", "--", "--id=@q", "create", "qos", "type=linux-noop");
    await ctl("restart");
    await sleep(1000);
    const after_ = await state("linux-noop, after ovs-ctl restart");
    console.log(`facts after restart with linux-noop: ${JSON.stringify(facts(after_))}`);
    assert.deepEqual(facts(after_), INTACT);
    const again = await applyXml(h, [xml], pol());
    assert.deepEqual(again.plan.ops, []);
    await vsctl("clear", "port", g.tap, "qos");
  });

  // `ovs: native` (README "Open vSwitch: tc or native"): OVS enforces both directions itself, from OVSDB: a
  // linux-htb QoS with queue 0 for download, ingress policing for upload (this kernel has the police action).
  // Measured through the kernel datapath; an OVS restart must need no repair at all.
  test("ovs: native: OVS's own QoS and policing, both directions measured, a restart needs no repair", async () => {
    const g = lab.guests[0];
    const native = () =>
      policy(
        `ovs: native\ndomains:\n  - name: ovs\n    inbound: { average: ${RATE / 1e6}mbit }\n    outbound: { average: ${RATE / 1e6}mbit }\n`,
      );
    const saved = process.env.VIRTQOS_OVSDB;
    process.env.VIRTQOS_OVSDB = `unix:${dir}/db.sock`;
    const owner = `${uuid}/${g.mac}`;
    const ovsRows = async () => {
      const s = await readOvsState(processRunner(), process.env.VIRTQOS_OVSDB);
      return {
        qos: [...s.qos.values()].filter((q) => q.externalIds["virtqos-owner"] === owner),
        queues: [...s.queues.values()].filter((q) => q.externalIds["virtqos-owner"] === owner),
        iface: s.interfaces.get(g.tap),
        port: s.ports.get(g.tap),
      };
    };
    /** ovs-vsctl --no-wait returns before ovs-vswitchd acts: wait for the tap to carry OVS's objects. */
    const ovsOnTap = async (what: string) => {
      const deadline = Date.now() + 10_000;
      let x = await state(what);
      while (
        !(/qdisc htb 1: root/.test(x.qdiscs) && /qdisc ingress ffff:/.test(x.qdiscs)) &&
        Date.now() < deadline
      ) {
        await sleep(100);
        x = await state(what);
      }
      return x;
    };
    /** The best of up to three downloads (the VM shares a loaded host's cores), every one printed. */
    const download = async (what: string) => {
      let best = 0;
      for (let attempt = 1; attempt <= 3; attempt++) {
        const v = await measure(`${what} (attempt ${attempt})`, "download");
        if (Math.abs(v - RATE) < Math.abs(best - RATE)) best = v;
        if (Math.abs(v / RATE - 1) <= 0.03) break;
      }
      return best;
    };
    try {
      // Whatever the cases above left on the port when they failed (their linux-noop QoS) is not this case's.
      await vsctl("clear", "port", g.tap, "qos");
      const r = await applyXml(h, [xml], native());
      console.log(
        `native apply: tc ${r.plan.ops.map((o) => o.op).join(", ") || "none"}; ovs-vsctl ${r.ovsVsctl?.map((a) => a.join(" ")).join(" || ")}`,
      );
      assert.deepEqual(r.plan.problems, []);
      assert.equal(r.failure, undefined);
      assert.deepEqual(
        r.plan.notes.filter((n) => n.code.startsWith("OVS_")).map((n) => n.code),
        [],
        "police action present: no fallback",
      );
      const rows = await ovsRows();
      assert.equal(rows.qos.length, 1);
      assert.deepEqual(rows.qos[0].otherConfig, { "max-rate": String(RATE) });
      assert.deepEqual(
        rows.queues.map((q) => q.otherConfig),
        [{ "max-rate": String(RATE) }],
      );
      assert.equal(rows.iface?.policingRateKbitPerSec, RATE / 1000);
      // libvirt's bucket rule (average read as KiB: 2500 KiB = 2,560,000 B) in OVS's 128-byte units.
      assert.equal(rows.iface?.policingBurstKbit, 20_000);
      const x = await ovsOnTap("ovs: native applied");
      assert.doesNotMatch(x.qdiscs, /7651:|clsact/, "virtqos's own tc objects are gone from the tap");
      assert.equal(x.ifbExists, false, "no IFB");
      assert.match(x.classes, /class htb 1:fffe root rate 20Mbit ceil 20Mbit/);
      const [police] = await policeActions(lab.hostNs, g.tap, "ingress");
      console.log(`OVS's policer: ${JSON.stringify(police)}`);
      assert.ok(police, "OVS's police action on the tap's ingress");
      assert.ok(Math.abs(police.rateBitsPerSec / RATE - 1) < 0.001, `police rate ${police.rateBitsPerSec}`);
      assert.ok(Math.abs(police.burstBytes / 2_560_000 - 1) <= 0.01, `police burst ${police.burstBytes} B`);
      const status = await collectStatus(h.runner, h.runDir, h.caps, native());
      console.log(
        `status: ${JSON.stringify(status.map((s) => [s.direction, s.enforcer, s.matches, s.kernel?.rateBitsPerSec, s.note]))}`,
      );
      assert.deepEqual(
        status.map((s) => [s.direction, s.enforcer, s.matches]),
        [
          ["inbound", "ovs", true],
          ["outbound", "ovs", true],
        ],
      );
      // Download through OVS's htb: within 3 %. Upload through OVS's policer (drops, no queue): TCP at least 0.9
      // of the limit; UDP offered at 2x, once the bucket is spent, at most 1.02 (as police.test.ts judges it).
      assertWithin(await download("ovs: native"), RATE, "ovs: native download");
      const [tcp] = await runTransfers(lab, [
        { guest: g, direction: "upload", protocol: "tcp", seconds: 4, omitSeconds: 2 },
      ]);
      console.log(describeTransfer("ovs: native TCP upload (OVS policer)", tcp, RATE));
      assert.ok(
        tcp.l2BitsPerSec >= 0.9 * RATE,
        `TCP upload through OVS's policer: ${mbit(tcp.l2BitsPerSec)}`,
      );
      const udp = await udpStreams(lab, g, "upload", 2 * RATE, 6);
      const steady = tailMean(udp.intervalsL2, 3);
      console.log(
        `ovs: native UDP upload (offered 2x): per second ${udp.intervalsL2.map((v) => (v / RATE).toFixed(3)).join(" ")} x limit; last 3 s ${(steady / RATE).toFixed(4)}; loss ${udp.lostPercent.toFixed(1)} %`,
      );
      if (udp.lostPercent > 0) assert.ok(steady <= 1.02 * RATE, `UDP after the bucket: ${mbit(steady)}`);
      assert.ok(steady >= 0.9 * RATE, `UDP upload only ${mbit(steady)}`);

      // Another port added, then an OVS restart: OVS rebuilds its own objects; virtqos has nothing to do.
      await run("ip", [
        "-n",
        lab.hostNs,
        "link",
        "add",
        "vqnatx0",
        "type",
        "veth",
        "peer",
        "name",
        "vqnatx1",
      ]);
      await vsctl("add-port", BRIDGE, "vqnatx0");
      await ctl("restart");
      const y = await ovsOnTap("ovs: native, after add-port and ovs-ctl restart");
      assert.match(y.classes, /class htb 1:fffe root rate 20Mbit ceil 20Mbit/);
      const again = await applyXml(h, [xml], native());
      assert.deepEqual([again.plan.ops, again.ovsVsctl], [[], undefined], "nothing to repair");
      assertWithin(await download("ovs: native after restart"), RATE, "download after restart");

      // Removal (`stopped end` after libvirt deleted the port): no virtqos row left in OVSDB.
      await vsctl("del-port", g.tap);
      const gone = await removeDomain(h, uuid);
      assert.deepEqual(gone.plan.problems, []);
      const left = await ovsRows();
      assert.deepEqual([left.qos.length, left.queues.length, left.iface], [0, 0, undefined]);
      await vsctl("add-port", BRIDGE, g.tap);
    } finally {
      if (saved === undefined) delete process.env.VIRTQOS_OVSDB;
      else process.env.VIRTQOS_OVSDB = saved;
    }
  });
});
