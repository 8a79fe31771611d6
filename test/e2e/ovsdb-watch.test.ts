import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  type KernelEvent,
  type KernelWatch,
  preciseNow,
  watchKernel,
} from "../../src/adapters/kernel-watch.js";
import { type OvsEvent, type OvsWatch, watchOvsdb } from "../../src/adapters/ovsdb-watch.js";
import { type BackgroundProcess, run, sleep, spawnBackground } from "../../src/lab/exec.js";

// The OVSDB watch against real Open vSwitch binaries: a private ovsdb-server and ovs-vswitchd (userspace
// datapath) with their own database, sockets and pidfiles in a temporary directory, ovs-vswitchd in a scratch
// network namespace. Private rather than the host's OVS because this file restarts both daemons (the host's
// may be serving other tests, or not be running at all) and so that nothing it does can reach another bridge.
// Every change must arrive as an event within 1 s; an ovs-vswitchd restart must be noticed, and what it does to
// a port's root qdisc must show in the kernel watch; changes made while ovsdb-server was away must be reported
// when the watch reconnects.

const SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema";
const BINARIES = ["ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovsdb-client"];
const NS = `vqdw-${process.pid}`;
const BRIDGE = "vqdw-br";
const VETH = "vqdwv0";
const INTERNAL = "vqdwi0";
const WITHIN_MS = 1000;
// Long enough for ovsdb-server to be back and changed before the watch reconnects.
const RECONNECT_BACKOFF_MS = 3000;

async function gate(): Promise<string | false> {
  if (process.getuid?.() !== 0) return "needs root (network namespaces, ovs-vswitchd)";
  for (const b of BINARIES) {
    const r = await run(b, ["--version"], { allowFail: true }).catch(() => undefined);
    if (!r || r.code !== 0) return `${b} not available (openvswitch-switch not installed)`;
  }
  if (!existsSync(SCHEMA)) return `${SCHEMA} missing`;
  return false;
}
const skip = await gate();

describe("OVSDB watch against a private Open vSwitch", { skip }, () => {
  let dir: string;
  let db: string;
  let server: BackgroundProcess | undefined;
  let vswitchd: BackgroundProcess | undefined;
  let watch: OvsWatch | undefined;
  let kernel: KernelWatch | undefined;
  const events: OvsEvent[] = [];
  const states: { at: number; up: boolean; err?: string }[] = [];
  const latencies: string[] = [];
  let waiters: { match: (e: OvsEvent) => boolean; resolve: (e: OvsEvent) => void }[] = [];

  const env = () => [`OVS_RUNDIR=${dir}`, `OVS_LOGDIR=${dir}`, `OVS_DBDIR=${dir}`];
  const vsctl = (...args: string[]) => run("ovs-vsctl", [`--db=${db}`, "--timeout=10", ...args]);
  const startServer = async () => {
    server = spawnBackground("env", [
      ...env(),
      "ovsdb-server",
      join(dir, "conf.db"),
      `--remote=punix:${join(dir, "db.sock")}`,
      `--unixctl=${join(dir, "ovsdb-server.ctl")}`,
      `--pidfile=${join(dir, "ovsdb-server.pid")}`,
      `--log-file=${join(dir, "ovsdb-server.log")}`,
      "--no-chdir",
    ]);
    const deadline = Date.now() + 10_000;
    while (
      (await run("ovs-vsctl", [`--db=${db}`, "--timeout=1", "--no-wait", "show"], { allowFail: true })).code
    ) {
      assert.ok(Date.now() < deadline, "ovsdb-server did not answer within 10 s");
      if (server.exited) assert.fail(`ovsdb-server exited: ${(await server.done).stderr}`);
      await sleep(20);
    }
  };
  const startVswitchd = () => {
    vswitchd = spawnBackground(
      "env",
      [
        ...env(),
        "ovs-vswitchd",
        db,
        `--unixctl=${join(dir, "ovs-vswitchd.ctl")}`,
        `--pidfile=${join(dir, "ovs-vswitchd.pid")}`,
        `--log-file=${join(dir, "ovs-vswitchd.log")}`,
        "--no-chdir",
      ],
      { netns: NS },
    );
  };

  const onEvent = (e: OvsEvent) => {
    events.push(e);
    const hit = waiters.filter((w) => w.match(e));
    waiters = waiters.filter((w) => !w.match(e));
    for (const w of hit) w.resolve(e);
  };
  function waitFor(match: (e: OvsEvent) => boolean, ms: number): Promise<OvsEvent | undefined> {
    return new Promise((resolve) => {
      const t = setTimeout(() => resolve(undefined), ms);
      waiters.push({
        match,
        resolve: (e) => {
          clearTimeout(t);
          resolve(e);
        },
      });
    });
  }
  async function expectEvent(
    label: string,
    match: (e: OvsEvent) => boolean,
    action: () => Promise<unknown>,
    within = WITHIN_MS,
  ): Promise<OvsEvent> {
    const from = events.length;
    const t0 = preciseNow();
    const got = waitFor(match, within);
    await action();
    const e = await got;
    assert.ok(
      e,
      `${label}: no matching event within ${within} ms; got ${JSON.stringify(events.slice(from))}`,
    );
    latencies.push(`${label}: ${(e.at - t0).toFixed(1)} ms`);
    return e;
  }

  // Bounded, so that a daemon that never answers fails the test and after() still cleans up.
  before(
    async () => {
      dir = mkdtempSync(join(tmpdir(), "vqdw-"));
      db = `unix:${join(dir, "db.sock")}`;
      await run("ip", ["netns", "add", NS]);
      await run("ovsdb-tool", ["create", join(dir, "conf.db"), SCHEMA]);
      await startServer();
      await vsctl("--no-wait", "init");
      startVswitchd();
      await vsctl("add-br", BRIDGE, "--", "set", "bridge", BRIDGE, "datapath_type=netdev");
      await run("ip", ["-n", NS, "link", "add", VETH, "type", "veth", "peer", "name", "vqdwv1"]);
      for (const d of [VETH, "vqdwv1"]) await run("ip", ["-n", NS, "link", "set", d, "up"]);
      watch = watchOvsdb({
        db,
        onEvent,
        onState: (up, err) => states.push({ at: preciseNow(), up, err }),
        backoffMinMs: RECONNECT_BACKOFF_MS,
      });
      await watch.ready;
    },
    { timeout: 60_000 },
  );

  after(async () => {
    await kernel?.close();
    await watch?.close();
    if (server && !server.exited && vswitchd && !vswitchd.exited) {
      await vsctl("--if-exists", "del-br", BRIDGE).catch(() => {});
    }
    await vswitchd?.stop(3000);
    await server?.stop(3000);
    await run("ip", ["netns", "del", NS], { allowFail: true });
    if (dir) rmSync(dir, { recursive: true, force: true });
    if (latencies.length)
      console.log(`# latencies (from spawning ovs-vsctl or signalling):\n#   ${latencies.join("\n#   ")}`);
  });

  test(
    "connected; the bridge's own port is in the snapshot, not reported as added",
    { timeout: 60_000 },
    () => {
      assert.deepEqual(
        states.map((s) => s.up),
        [true],
      );
      assert.deepEqual(events, []);
      assert.deepEqual(
        watch!.ports().map((p) => p.name),
        [BRIDGE],
      );
    },
  );

  test(
    "ports added (a veth, an internal port), policing set, QoS attached and changed, a port deleted",
    { timeout: 60_000 },
    async () => {
      const added = await expectEvent(
        "add-port veth",
        (e) => e.kind === "port-added" && e.port === VETH,
        () => vsctl("add-port", BRIDGE, VETH),
      );
      assert.equal(added.detail, `port ${VETH} added`);
      await expectEvent(
        "add-port internal",
        (e) => e.kind === "port-added" && e.port === INTERNAL,
        () => vsctl("add-port", BRIDGE, INTERNAL, "--", "set", "interface", INTERNAL, "type=internal"),
      );
      const pol = await expectEvent(
        "ingress_policing_rate",
        (e) => e.kind === "policing-changed" && e.port === VETH,
        () => vsctl("set", "interface", VETH, "ingress_policing_rate=1000"),
      );
      assert.match(pol.detail, /ingress_policing_rate 0 -> 1000/);
      const qos = await expectEvent(
        "qos attach",
        (e) => e.kind === "qos-changed" && e.port === VETH,
        () => vsctl("--", "set", "port", VETH, "qos=@q", "--", "--id=@q", "create", "qos", "type=linux-noop"),
      );
      assert.match(qos.detail, /qos: none -> [0-9a-f-]{36} \(linux-noop\)/);
      const qosId = /-> ([0-9a-f-]{36})/.exec(qos.detail)![1];
      const type = await expectEvent(
        "qos type",
        (e) => e.kind === "qos-changed" && e.port === VETH,
        () => vsctl("set", "qos", qosId, "type=linux-htb"),
      );
      assert.match(type.detail, /type linux-noop -> linux-htb/);
      assert.deepEqual(
        watch!.ports().find((p) => p.name === VETH),
        {
          name: VETH,
          qosType: "linux-htb",
          interfaces: [
            {
              name: VETH,
              ingressPolicingRate: 1000,
              ingressPolicingBurst: 0,
              ofport: watch!.ports().find((p) => p.name === VETH)?.interfaces[0].ofport,
            },
          ],
        },
      );
      assert.ok((watch!.ports().find((p) => p.name === VETH)?.interfaces[0].ofport ?? 0) > 0);
      await expectEvent(
        "del-port",
        (e) => e.kind === "port-deleted" && e.port === VETH,
        () => vsctl("del-port", VETH),
      );
    },
  );

  test(
    "ovs-vswitchd restart: noticed, and the root qdisc it deletes on a port shows in the kernel watch",
    { timeout: 60_000 },
    async (t) => {
      const kevents: KernelEvent[] = [];
      kernel = watchKernel({ netns: NS, onEvent: (e) => kevents.push(e) });
      await kernel.ready;
      // ovs-vsctl waits for ovs-vswitchd to have configured the port (and reset its root qdisc) before it exits.
      await vsctl("add-port", BRIDGE, VETH);
      await run("tc", [
        "-n",
        NS,
        "qdisc",
        "replace",
        "dev",
        VETH,
        "root",
        "handle",
        "7651:",
        "htb",
        "default",
        "1",
      ]);
      await sleep(200);
      kevents.length = 0;

      const oldPid = vswitchd!.pid;
      const stopped = await expectEvent(
        "vswitchd stop",
        (e) => e.kind === "vswitchd-stopped",
        () => vswitchd!.stop(3000),
      );
      assert.equal(stopped.detail, `ovs-vswitchd (pid ${oldPid}) stopped`);
      assert.deepEqual(
        kevents.filter((e) => e.dev === VETH && e.kind === "qdisc-deleted"),
        [],
        "stopping leaves the root qdisc",
      );

      const t0 = preciseNow();
      const restarted = await expectEvent(
        "vswitchd start",
        (e) => e.kind === "vswitchd-restart",
        async () => startVswitchd(),
      );
      assert.equal(restarted.detail, `ovs-vswitchd restarted: pid ${oldPid} -> ${vswitchd!.pid}`);
      const deadline = Date.now() + 10_000;
      let wiped: KernelEvent | undefined;
      while (!wiped && Date.now() < deadline) {
        wiped = kevents.find((e) => e.dev === VETH && e.kind === "qdisc-deleted" && e.handle === "7651:");
        await sleep(10);
      }
      assert.ok(wiped, `no qdisc-deleted for ${VETH}: ${JSON.stringify(kevents)}`);
      t.diagnostic(
        `ovs-vswitchd started; vswitchd-restart after ${(restarted.at - t0).toFixed(0)} ms, its deletion of ${VETH}'s root 7651: after ${(wiped.at - t0).toFixed(0)} ms`,
      );
      t.diagnostic(
        `kernel events during the restart: ${kevents.map((e) => `${e.kind} ${e.dev} ${e.handle ?? ""}`).join("; ")}`,
      );
      assert.ok(restarted.at <= wiped.at, "the pidfile is written before ovs-vswitchd configures its ports");
      // After a restart whose pid could not be seen in between, the pid change alone tells.
      const before_ = vswitchd!.pid;
      await vswitchd!.stop(3000);
      startVswitchd();
      const again = await waitFor((e) => e.kind === "vswitchd-restart", 3000);
      assert.ok(again, "second restart not noticed");
      assert.match(
        again.detail,
        new RegExp(`ovs-vswitchd (started|restarted: pid ${before_} ->) .*${vswitchd!.pid}`),
      );
      await kernel.close();
      kernel = undefined;
    },
  );

  test(
    "ovsdb-server restart: disconnected, reconnected, and what changed in between is reported",
    { timeout: 60_000 },
    async () => {
      // Ports the vswitchd restarts above re-reported are settled.
      await sleep(300);
      const from = states.length;
      await server!.stop(3000);
      const deadline = Date.now() + 3000;
      while (states.length === from && Date.now() < deadline) await sleep(10);
      assert.equal(states[from]?.up, false, JSON.stringify(states));
      assert.match(
        states[from].err ?? "",
        /ovsdb-client monitor exited with 1: ovsdb-client: .*(End of file|removed|failed)/,
      );
      const down = preciseNow();
      await startServer();
      // Changed before the watch is back (its back-off is RECONNECT_BACKOFF_MS).
      await vsctl("--no-wait", "del-port", INTERNAL);
      assert.equal(states.length, from + 1, "reconnected too early for this test");
      const gone = await waitFor(
        (e) => e.kind === "port-deleted" && e.port === INTERNAL,
        RECONNECT_BACKOFF_MS + 3000,
      );
      assert.ok(gone, `port-deleted not reported after reconnect: ${JSON.stringify(events.slice(-5))}`);
      assert.match(gone.detail, /while the monitor was disconnected/);
      assert.equal(states[from + 1]?.up, true);
      latencies.push(
        `reconnect after ovsdb-server restart: ${(states[from + 1].at - down).toFixed(0)} ms (back-off ${RECONNECT_BACKOFF_MS})`,
      );
    },
  );

  test("close() stops ovsdb-client", { timeout: 60_000 }, async () => {
    const pids = watch!.pids();
    assert.equal(pids.length, 1);
    await watch!.close();
    watch = undefined;
    for (const pid of pids) assert.throws(() => process.kill(pid, 0), /ESRCH/);
    // Nothing of this OVS went to the host's run directory.
    if (existsSync("/var/run/openvswitch")) {
      assert.deepEqual(
        readdirSync("/var/run/openvswitch").filter((f) => f.startsWith(BRIDGE)),
        [],
      );
    }
  });
});
