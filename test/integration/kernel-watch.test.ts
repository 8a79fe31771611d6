import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { after, before, describe, test } from "node:test";
import {
  isVirtqosTcObject,
  type KernelEvent,
  type KernelWatch,
  preciseNow,
  watchKernel,
} from "../../src/adapters/kernel-watch.js";
import { run, sleep } from "../../src/lab/exec.js";
import { SKIP_NOT_ROOT } from "../helpers/netns.js";

// The kernel watch against the real tc and ip in a scratch namespace: what virtqos builds on a tap (an HTB
// root 7651: with a class, clsact with a redirect to an IFB at prio 64000) is taken apart the ways drift
// happens, and each change must arrive as an event of the right kind for the right device within 1 s.
// Latency is measured from just before the command is spawned to the event's arrival.

const NS = `vqkw-${process.pid}`;
const TAP = "vqkwt0";
const PEER = "vqkwt1";
const IFB = "vqikw0";
const IFB2 = "vqikw1";
const WITHIN_MS = 1000;

const ip = (...args: string[]) => run("ip", ["-n", NS, ...args]);
const tc = (...args: string[]) => run("tc", ["-n", NS, ...args]);

/** Every process whose command line mentions the namespace (our monitors run as `tc -n NS ...`). */
function processesIn(ns: string): string[] {
  const out: string[] = [];
  for (const pid of readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      const argv = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").filter(Boolean);
      if (argv.includes(ns) && pid !== String(process.pid)) out.push(`${pid}: ${argv.join(" ")}`);
    } catch {
      // gone
    }
  }
  return out;
}

describe("kernel watch (tc monitor, ip monitor link)", { skip: SKIP_NOT_ROOT }, () => {
  let watch: KernelWatch | undefined;
  const events: KernelEvent[] = [];
  const errors: string[] = [];
  const resyncs: string[] = [];
  /** Per label: ms from spawning the command, and from seeing it exit (negative: the event came first). */
  const latencies: Record<string, { spawn: number[]; exit: number[] }> = {};
  let waiters: { match: (e: KernelEvent) => boolean; resolve: (e: KernelEvent) => void }[] = [];

  const onEvent = (e: KernelEvent) => {
    events.push(e);
    const hit = waiters.filter((w) => w.match(e));
    waiters = waiters.filter((w) => !w.match(e));
    for (const w of hit) w.resolve(e);
  };

  /** Run `action`, wait for the event `match` accepts; returns it and its latency. */
  async function expectEvent(
    label: string,
    match: (e: KernelEvent) => boolean,
    action: () => Promise<unknown>,
  ): Promise<KernelEvent> {
    const from = events.length;
    const t0 = preciseNow();
    let timer: NodeJS.Timeout | undefined;
    const got = new Promise<KernelEvent | undefined>((resolve) => {
      waiters.push({ match, resolve });
      timer = setTimeout(() => resolve(undefined), WITHIN_MS);
    });
    await action();
    const exited = preciseNow();
    const e = await got;
    clearTimeout(timer);
    assert.ok(
      e,
      `${label}: no matching event within ${WITHIN_MS} ms; got ${JSON.stringify(events.slice(from), null, 1)}`,
    );
    const ms = e.at - t0;
    assert.ok(ms < WITHIN_MS, `${label}: ${ms.toFixed(1)} ms`);
    const l = latencies[label] ?? { spawn: [], exit: [] };
    latencies[label] = l;
    l.spawn.push(ms);
    l.exit.push(e.at - exited);
    return e;
  }

  before(async () => {
    await run("ip", ["netns", "add", NS]);
    await ip("link", "add", TAP, "type", "veth", "peer", "name", PEER);
    await ip("link", "add", IFB, "type", "ifb");
    for (const d of [TAP, PEER, IFB]) await ip("link", "set", d, "up");
    // virtqos's shape on a tap: download HTB, upload redirected to its IFB.
    await tc("qdisc", "add", "dev", TAP, "root", "handle", "7651:", "htb", "default", "1");
    await tc("class", "add", "dev", TAP, "parent", "7651:", "classid", "7651:1", "htb", "rate", "10mbit");
    await tc("qdisc", "add", "dev", TAP, "clsact");
    await tc(
      ..."filter add dev X ingress pref 64000 protocol all u32 match u32 0 0 action mirred egress redirect dev Y"
        .split(" ")
        .map((a) => (a === "X" ? TAP : a === "Y" ? IFB : a)),
    );
    const t0 = preciseNow();
    watch = watchKernel({
      netns: NS,
      onEvent,
      onError: (e) => errors.push(e.message),
      onResync: (m, why) => resyncs.push(`${m}: ${why}`),
    });
    await watch.ready;
    console.log(
      `# watch ready (both monitors subscribed, links listed) in ${(preciseNow() - t0).toFixed(0)} ms`,
    );
  });

  after(async () => {
    await watch?.close();
    await run("ip", ["netns", "del", NS], { allowFail: true });
  });

  test("what exists when the watch starts is not reported", async () => {
    await sleep(200);
    assert.deepEqual(events, []);
    assert.deepEqual(errors, []);
  });

  test("a class changed, the redirect filter deleted, the root qdisc deleted", async (t) => {
    const cls = await expectEvent(
      "class change",
      (e) => e.kind === "class-changed" && e.dev === TAP,
      () =>
        tc("class", "change", "dev", TAP, "parent", "7651:", "classid", "7651:1", "htb", "rate", "20mbit"),
    );
    assert.equal(cls.handle, "7651:1");
    assert.match(cls.detail, /rate 20Mbit/);

    const f = await expectEvent(
      "filter del",
      (e) => e.kind === "filter-deleted" && e.dev === TAP && e.pref === 64000,
      () => tc("filter", "del", "dev", TAP, "ingress", "pref", "64000"),
    );
    assert.equal(f.parent, "ingress");
    assert.equal(isVirtqosTcObject(f), true);

    const q = await expectEvent(
      "qdisc del",
      (e) => e.kind === "qdisc-deleted" && e.dev === TAP && e.handle === "7651:",
      () => tc("qdisc", "del", "dev", TAP, "root"),
    );
    assert.equal(q.parent, "root");
    assert.equal(q.tcKind, "htb");
    assert.equal(isVirtqosTcObject(q), true);
    t.diagnostic(`sample: ${JSON.stringify(q)}`);
  });

  test("a qdisc added, a filter added", async () => {
    const q = await expectEvent(
      "qdisc add",
      (e) => e.kind === "qdisc-changed" && e.dev === TAP && e.handle === "7651:",
      () => tc("qdisc", "add", "dev", TAP, "root", "handle", "7651:", "htb", "default", "1"),
    );
    assert.equal(q.parent, "root");
    const f = await expectEvent(
      "filter add",
      (e) => e.kind === "filter-changed" && e.dev === TAP && e.pref === 64000,
      () =>
        tc(
          ..."filter add dev X ingress pref 64000 protocol all u32 match u32 0 0 action mirred egress redirect dev Y"
            .split(" ")
            .map((a) => (a === "X" ? TAP : a === "Y" ? IFB : a)),
        ),
    );
    assert.match(f.detail, new RegExp(`Redirect to device ${IFB}`), "continuation lines are in the detail");
  });

  test("an IFB deleted, one added, a link changed; a re-created tap has a new ifindex", async () => {
    const del = await expectEvent(
      "link del",
      (e) => e.kind === "link-deleted" && e.dev === IFB,
      () => ip("link", "del", IFB),
    );
    assert.ok(del.ifindex && del.ifindex > 0);
    const add = await expectEvent(
      "link add",
      (e) => e.kind === "link-added" && e.dev === IFB2,
      () => ip("link", "add", IFB2, "type", "ifb"),
    );
    const up = await expectEvent(
      "link up",
      (e) => e.kind === "link-changed" && e.dev === IFB2,
      () => ip("link", "set", IFB2, "up"),
    );
    assert.equal(up.ifindex, add.ifindex);

    const old = (await ip("-j", "link", "show", "dev", TAP)).stdout;
    const oldIndex = (JSON.parse(old) as { ifindex: number }[])[0].ifindex;
    await expectEvent(
      "tap del",
      (e) => e.kind === "link-deleted" && e.dev === TAP && e.ifindex === oldIndex,
      () => ip("link", "del", TAP),
    );
    const again = await expectEvent(
      "tap add",
      (e) => e.kind === "link-added" && e.dev === TAP,
      () => ip("link", "add", TAP, "type", "veth", "peer", "name", PEER),
    );
    assert.notEqual(again.ifindex, oldIndex);
  });

  test("a monitor that dies is restarted, says so, and events flow again", async () => {
    const [tcPid, linkPid] = watch!.pids();
    const before_ = resyncs.length;
    process.kill(tcPid, "SIGKILL");
    process.kill(linkPid, "SIGKILL");
    const deadline = Date.now() + 5000;
    while (resyncs.length < before_ + 2 && Date.now() < deadline) await sleep(20);
    assert.deepEqual(resyncs.slice(before_).sort(), [
      "link: ip monitor restarted",
      "tc: tc monitor restarted",
    ]);
    assert.ok(
      errors.some((e) => /tc monitor exited by SIGKILL; restarting in \d+ ms/.test(e)),
      errors.join("\n"),
    );
    assert.equal(watch!.pids().length, 2);
    assert.ok(!watch!.pids().includes(tcPid));
    await expectEvent(
      "qdisc add after restart",
      (e) => e.kind === "qdisc-changed" && e.dev === TAP && e.parent === "root" && e.handle === "7651:",
      () => tc("qdisc", "add", "dev", TAP, "root", "handle", "7651:", "htb"),
    );
    // A link that came and went while ip monitor was down is reported from the new snapshot.
    const [, link2] = watch!.pids();
    process.kill(link2, "SIGKILL");
    await ip("link", "del", IFB2);
    const gone = await new Promise<KernelEvent | undefined>((resolve) => {
      const t = setTimeout(() => resolve(undefined), 5000);
      waiters.push({
        match: (e) => e.kind === "link-deleted" && e.dev === IFB2,
        resolve: (e) => {
          clearTimeout(t);
          resolve(e);
        },
      });
    });
    assert.match(gone?.detail ?? "", /gone while the link monitor was down/);
  });

  test("latency of `tc qdisc del` to the parsed event, 20 times", async (t) => {
    for (let i = 0; i < 20; i++) {
      await expectEvent(
        "qdisc del x20",
        (e) => e.kind === "qdisc-deleted" && e.dev === TAP && e.handle === "7651:",
        () => tc("qdisc", "del", "dev", TAP, "root"),
      );
      await tc("qdisc", "add", "dev", TAP, "root", "handle", "7651:", "htb");
      await sleep(5);
    }
    const stats = (ms: number[]) => {
      const s = [...ms].sort((a, b) => a - b);
      return `median ${s[Math.floor(s.length / 2)].toFixed(1)} max ${s[s.length - 1].toFixed(1)}`;
    };
    for (const [label, l] of Object.entries(latencies)) {
      t.diagnostic(
        `${label}: n=${l.spawn.length}; ms from spawning the command: ${stats(l.spawn)}; after seeing it exit: ${stats(l.exit)}`,
      );
    }
  });

  test("close() leaves no monitor running", async () => {
    const pids = watch!.pids();
    assert.equal(pids.length, 2);
    await watch!.close();
    watch = undefined;
    for (const pid of pids) assert.throws(() => process.kill(pid, 0), /ESRCH/, `pid ${pid} still runs`);
    assert.deepEqual(processesIn(NS), []);
  });
});
