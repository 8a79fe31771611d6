/**
 * Smoke test of the real libvirt environment used by the e2e suites:
 * one guest with every interface type we support, and the qemu hook
 * mechanism (which hooks libvirt calls, with what arguments, in what order).
 *
 * Skips (with the reason) where libvirt cannot run: not root, packages
 * missing (run scripts/setup-libvirt.sh), daemon not answering.
 */
import assert from "node:assert/strict";
import { readdir, readFile, rm } from "node:fs/promises";
import { test } from "node:test";
import {
  cleanupByPrefix,
  createLinuxBridge,
  createNetwork,
  createOvsBridge,
  createVethPair,
  defineAndStart,
  destroy,
  domainState,
  ensureLibvirt,
  type InterfaceSpec,
  installQemuHook,
  interfacesOf,
  linkExists,
  makeDomainXml,
  masterOf,
  ovsBridgeOfPort,
  QEMU_HOOK_DIR,
  qemuPid,
  reloadLibvirtd,
  removeQemuHook,
  restartLibvirtd,
  startDomain,
  tapsOf,
  teardown,
  trackFile,
} from "./libvirt-env.js";

// Every host object of this test starts with this, so a crashed earlier run
// can be swept up front and nothing collides with real host devices.
const P = "vqe2e";
const PROBE = "zz-vqe2e-probe";
const PROBE_LOG = `/tmp/${P}-hook-probe.log`;
// Silent and always successful: a hook that fails or prints would change what
// libvirt does with the domain. Drains stdin so libvirt never writes to a
// closed pipe.
const PROBE_SCRIPT = [
  "#!/bin/bash",
  "# vqe2e probe: log arguments and the first line of stdin (the domain XML).",
  'first=""',
  "IFS= read -r first || true",
  `printf '%s | %s\\n' "$*" "$first" >>${PROBE_LOG} 2>/dev/null || true`,
  "cat >/dev/null 2>&1 || true",
  "exit 0",
  "",
].join("\n");

// Starts the daemons if needed; installs packages only with VIRTQOS_E2E_INSTALL=1.
const env = await ensureLibvirt({ ovs: true });

test("libvirt e2e environment", { skip: env.ok ? false : env.reason, timeout: 300_000 }, async (t) => {
  t.after(async () => {
    await teardown();
    // Belt and braces: teardown only knows what this process created.
    await cleanupByPrefix(P);
  });
  await cleanupByPrefix(P);
  await removeQemuHook(PROBE);

  const bridge = await createLinuxBridge(`${P}-br0`);
  const veth = await createVethPair(`${P}-up0`, `${P}-up1`);
  const network = await createNetwork({ name: `${P}-net`, mode: "bridge", bridge });
  const ovsBridge = env.ovs.ok ? await createOvsBridge(`${P}-ovs0`) : undefined;
  if (!ovsBridge) t.diagnostic(`OVS interface not tested: ${env.ovs.reason}`);

  const macs = {
    bridge: "52:54:00:7e:00:01",
    network: "52:54:00:7e:00:02",
    ethernet: "52:54:00:7e:00:03",
    direct: "52:54:00:7e:00:04",
    ovs: "52:54:00:7e:00:05",
  } as const;
  const interfaces: InterfaceSpec[] = [
    { type: "bridge", bridge, mac: macs.bridge, target: `${P}-tbr` },
    { type: "network", network, mac: macs.network },
    { type: "ethernet", mac: macs.ethernet, target: `${P}-teth` },
    { type: "direct", dev: veth.a, mode: "bridge", mac: macs.direct },
  ];
  if (ovsBridge) interfaces.push({ type: "bridge", bridge: ovsBridge, mac: macs.ovs, ovs: true });

  const allName = `${P}-all`;

  await t.test("a domain with every interface type gets a host device per interface", async () => {
    const t0 = performance.now();
    await defineAndStart(makeDomainXml({ name: allName, interfaces }));
    t.diagnostic(
      `define+start with ${interfaces.length} interfaces: ${Math.round(performance.now() - t0)} ms`,
    );
    assert.equal(await domainState(allName), "running");

    const taps = await tapsOf(allName);
    assert.equal(taps.size, interfaces.length, `taps: ${JSON.stringify([...taps])}`);
    for (const [mac, dev] of taps) {
      assert.ok(await linkExists(dev), `ip link show ${dev} (for ${mac})`);
    }
    t.diagnostic(`taps: ${[...taps].map(([m, d]) => `${m}=${d}`).join(" ")}`);

    // Requested names that libvirt does not reserve for itself are kept.
    assert.equal(taps.get(macs.bridge), `${P}-tbr`);
    assert.equal(taps.get(macs.ethernet), `${P}-teth`);
    // Each device is plugged where its type says.
    assert.equal(await masterOf(`${P}-tbr`), bridge);
    assert.equal(
      await masterOf(taps.get(macs.network)!),
      bridge,
      "network (forward=bridge) tap on its bridge",
    );
    assert.equal(await masterOf(`${P}-teth`), undefined, "ethernet tap is not enslaved");
    const direct = taps.get(macs.direct)!;
    assert.match(direct, /^macvtap\d+$/);
    assert.ok(await linkExists(`${direct}`));
    const lower = await readFile(`/sys/class/net/${direct}/iflink`, "utf8");
    const upIndex = await readFile(`/sys/class/net/${veth.a}/ifindex`, "utf8");
    assert.equal(lower.trim(), upIndex.trim(), "macvtap sits on the veth uplink");
    if (ovsBridge) {
      const ovsTap = taps.get(macs.ovs)!;
      assert.match(ovsTap, /^vnet\d+$/);
      assert.equal(await ovsBridgeOfPort(ovsTap), ovsBridge);
    }

    // On a forward-mode 'bridge' network the live XML turns type='network' into
    // 'bridge' and keeps the network name in <source>: parsers must accept both.
    const live = await interfacesOf(allName);
    const net = live.find((i) => i.mac === macs.network);
    assert.equal(net?.type, "bridge");
    assert.equal(net?.source.network, network);
    assert.equal(net?.source.bridge, bridge);
  });

  await t.test("qemu hooks in hooks/qemu.d are called with the documented arguments", async () => {
    trackFile(PROBE_LOG);
    await rm(PROBE_LOG, { force: true });
    await installQemuHook(PROBE, PROBE_SCRIPT);

    // libvirtd decides at start-up (or SIGHUP) whether qemu hooks exist at all.
    const pidBefore = await qemuPid(allName);
    const restartMs = await restartLibvirtd();
    t.diagnostic(`libvirtd restart: ${Math.round(restartMs)} ms`);
    assert.equal(await domainState(allName), "running", "running domain survives the libvirtd restart");
    assert.equal(await qemuPid(allName), pidBefore, "same QEMU process after the restart");

    // The reconnect to the surviving domain goes through the hook too.
    assert.deepEqual(await hookCalls(allName), [`${allName} reconnect begin -`]);

    const hookName = `${P}-hook`;
    await defineAndStart(makeDomainXml({ name: hookName, interfaces: [] }));
    const afterStart = await hookCalls(hookName);
    assert.deepEqual(afterStart, [
      `${hookName} prepare begin -`,
      `${hookName} start begin -`,
      `${hookName} started begin -`,
    ]);
    for (const l of await probeLog()) assert.match(l, /\| <domain type='qemu'/, "stdin is the domain XML");

    await destroy(hookName);
    assert.deepEqual((await hookCalls(hookName)).slice(afterStart.length), [
      `${hookName} stopped end -`,
      `${hookName} release end -`,
    ]);
    await removeQemuHook(PROBE);
  });

  await t.test("SIGHUP is enough for libvirtd to notice a hook installed after it started", async () => {
    const name = `${P}-hup`;
    await removeQemuHook(PROBE);
    // With no executable left in hooks/qemu.d, a reload makes libvirtd forget
    // qemu hooks altogether; a hook added afterwards is then ignored...
    await reloadLibvirtd();
    const othersPresent = (await readdir(QEMU_HOOK_DIR).catch(() => [])).length > 0;
    await rm(PROBE_LOG, { force: true });
    await installQemuHook(PROBE, PROBE_SCRIPT);
    await defineAndStart(makeDomainXml({ name, interfaces: [] }));
    await destroy(name);
    if (othersPresent) {
      t.diagnostic("other qemu hooks are installed on this host: libvirtd already runs the directory");
    } else {
      assert.deepEqual(await hookCalls(name), [], "hook added after the last (re)load is not called");
    }
    // ...until the next SIGHUP, which re-scans the hook directories.
    const reloadMs = await reloadLibvirtd();
    t.diagnostic(`libvirtd SIGHUP reload (incl. 0.5 s settle): ${Math.round(reloadMs)} ms`);
    await rm(PROBE_LOG, { force: true });
    await startDomain(name);
    await destroy(name);
    assert.deepEqual(await hookCalls(name), [
      `${name} prepare begin -`,
      `${name} start begin -`,
      `${name} started begin -`,
      `${name} stopped end -`,
      `${name} release end -`,
    ]);
    await removeQemuHook(PROBE);
  });
});

/** Lines of the probe log: "<args> | <first stdin line>". */
async function probeLog(): Promise<string[]> {
  return (await readFile(PROBE_LOG, "utf8").catch(() => "")).split("\n").filter(Boolean);
}

/** The hook arguments logged for one domain (other guests on the host may log too). */
async function hookCalls(domain: string): Promise<string[]> {
  return (await probeLog()).map((l) => l.split(" | ")[0] ?? "").filter((a) => a.startsWith(`${domain} `));
}
