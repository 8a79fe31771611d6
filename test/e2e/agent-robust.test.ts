/**
 * The agent through what a host goes through, with a real libvirtd + QEMU (TCG) and the installed hook:
 * libvirtd restarted under a running agent (it reconnects and keeps following metadata edits), the agent
 * killed (SIGKILL) in the middle of a burst of live changes and started again (no accepted change lost, the
 * kernel matches the records), and a host "reboot" (the guest stopped, libvirtd and the agent restarted, the
 * guest started again): a limit set with persist "both" is in force again.
 *
 * Uses the real default paths, like the other libvirt e2e files; HookTestHost saves and puts back what it
 * changes.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { liveFilePath, readLiveFile } from "../../src/adapters/live-store.js";
import { type Answer, http as httpTo, until } from "./agent-client.js";
import {
  createLinuxBridge,
  defineAndStart,
  destroy,
  ensureLibvirt,
  makeDomainXml,
  restartLibvirtd,
  startDomain,
  undefine,
  virshOk,
} from "./libvirt-env.js";
import { cli, HookTestHost, installHook, REPO, virtqosStatus, writePolicy } from "./virtqos-e2e.js";

const P = "vqr";
const NAME = `${P}-one`;
const NEUTRAL = "# Written by test/e2e/agent-robust.test.ts; the original is put back when the test ends.\n";
const POLICY = `${NEUTRAL}defaults:\n  inbound: { average: 10mbit }\n  outbound: { average: 10mbit }\n`;
const env = await ensureLibvirt();
const host = new HookTestHost(P, NEUTRAL);
const CLI = join(REPO, "bin", "virtqos");
const MACS = ["52:54:00:7e:01:01", "52:54:00:7e:01:02", "52:54:00:7e:01:03", "52:54:00:7e:01:04"];

async function inForce(mac: string): Promise<number | undefined> {
  const r = await cli(["get", NAME, mac, "--direct", "--json"]);
  if (r.code !== 0) throw new Error(r.stderr);
  const [v] = (
    JSON.parse(r.stdout) as { interfaces: { inbound: { inForce?: { rateBitsPerSec: number } } }[] }
  ).interfaces;
  return v.inbound.inForce?.rateBitsPerSec;
}

test(
  "the agent through libvirtd restarts, its own crash and a host reboot",
  {
    skip: env.ok ? false : env.reason,
    timeout: 900_000,
  },
  async (t) => {
    await host.setUp(t);
    const installed = await installHook(t);
    assert.equal(installed.code, 0, installed.stderr);
    await writePolicy(POLICY);
    const br = await createLinuxBridge(`${P}-br0`);
    const uuid = host.newUuid();
    const xml = makeDomainXml({
      name: NAME,
      uuid,
      interfaces: MACS.map((mac) => ({ type: "bridge" as const, bridge: br, mac })),
    });
    const dir = await mkdtemp(join(tmpdir(), `${P}-agent-`));
    const socketPath = join(dir, "api.sock");
    let agent: ChildProcess | undefined;
    // SIGKILL leaves the agent's watchers (virsh event, tc/ip monitor, ovsdb-client) to init; under systemd
    // the unit's control group takes them along, here the test does.
    const killAgentHard = () => {
      const pid = agent?.pid;
      if (pid === undefined) return;
      let children: number[] = [];
      try {
        children = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8")
          .trim()
          .split(/\s+/)
          .filter(Boolean)
          .map(Number);
      } catch {
        // Already gone.
      }
      agent?.kill("SIGKILL");
      for (const c of children) {
        try {
          process.kill(c, "SIGKILL");
        } catch {
          // Already gone.
        }
      }
    };
    const startAgent = async () => {
      agent = spawn(process.execPath, [CLI, "agent", "--socket", socketPath], {
        env: { ...process.env, VIRTQOS_LOG: "stderr" },
        stdio: ["ignore", "ignore", "inherit"],
      });
      await until(
        "agent socket",
        async () =>
          existsSync(socketPath) && (await httpTo({ socketPath }, "GET", "/v1/health")).status === 200,
        20_000,
      );
      await until(
        "libvirt connected",
        async () =>
          ((await httpTo({ socketPath }, "GET", "/v1/health")).body as { libvirt: { connected: boolean } })
            .libvirt.connected,
        20_000,
      );
    };
    t.after(async () => {
      killAgentHard();
      await destroy(NAME);
      await undefine(NAME);
      await rm(liveFilePath(undefined, uuid), { force: true });
      await rm(dir, { recursive: true, force: true });
    });
    await defineAndStart(xml);
    await startAgent();

    await t.test(
      "libvirtd restarted under the agent: it reconnects and keeps applying metadata edits",
      async () => {
        const ms = await restartLibvirtd();
        t.diagnostic(`libvirtd restart: ${Math.round(ms)} ms`);
        const back = await until(
          "reconnected",
          async () =>
            ((await httpTo({ socketPath }, "GET", "/v1/health")).body as { libvirt: { connected: boolean } })
              .libvirt.connected,
          30_000,
        );
        t.diagnostic(`agent reconnected ${Math.round(back)} ms after the restart script returned`);
        await virshOk([
          "metadata",
          NAME,
          "--uri",
          "https://virtqos.dev/xmlns/qos/1",
          "--key",
          "virtqos",
          "--live",
          "--set",
          `<qos xmlns="https://virtqos.dev/xmlns/qos/1"><interface mac="${MACS[3]}"><inbound average="500"/></interface></qos>`,
        ]);
        const took = await until(
          "metadata applied after the restart",
          async () => (await inForce(MACS[3])) === 4e6,
          5000,
        );
        t.diagnostic(`metadata edit applied ${Math.round(took)} ms after virsh returned`);
      },
    );

    await t.test(
      "the agent killed in the middle of 24 live changes: nothing accepted is lost, the kernel matches",
      async () => {
        // Six changes per interface, from distinct rates; the agent dies after the fourth answer.
        const sent: { mac: string; kBps: number; answer?: Answer; error?: string }[] = [];
        for (let round = 0; round < 6; round++) {
          for (const mac of MACS.slice(0, 3)) sent.push({ mac, kBps: 250 * (1 + round + sent.length) });
        }
        let answered = 0;
        const all = sent.map(async (s) => {
          try {
            s.answer = await httpTo({ socketPath }, "PATCH", `/v1/domains/${NAME}/interfaces/${s.mac}`, {
              inbound: { average: s.kBps },
              persist: "live",
            });
            if (++answered === 4) killAgentHard();
          } catch (e) {
            s.error = (e as Error).message;
          }
        });
        await Promise.all(all);
        const accepted = sent.filter((s) => s.answer?.status === 200).length;
        t.diagnostic(`${accepted} accepted, ${sent.filter((s) => s.error).length} cut off by the kill`);
        assert.ok(accepted >= 4, "some changes were answered before the kill");
        await startAgent();
        for (const mac of MACS.slice(0, 3)) {
          const mine = sent.filter((s) => s.mac === mac);
          const lastAccepted = mine
            .map((s, i) => (s.answer?.status === 200 ? i : -1))
            .reduce((a, b) => Math.max(a, b), -1);
          // What may be in force: the last accepted change, or one sent after it that the kill cut off (it may
          // have reached the kernel and the store before the answer was lost).
          const allowed = new Set(mine.slice(Math.max(0, lastAccepted)).map((s) => s.kBps * 8000));
          const store = readLiveFile(undefined, uuid)?.interfaces[mac]?.live?.inbound?.rateBitsPerSec;
          const kernel = await inForce(mac);
          assert.ok(
            store !== undefined && allowed.has(store),
            `${mac}: store ${store}, allowed ${[...allowed]}`,
          );
          assert.equal(kernel, store, `${mac}: the kernel has what the store says`);
        }
        // The restarted agent re-checks every running guest once libvirt is connected: it converges.
        let rows: Awaited<ReturnType<typeof virtqosStatus>>["rows"] = [];
        try {
          await until(
            "status matches",
            async () => {
              rows = (await virtqosStatus()).rows.filter((r) => r.domainUuid === uuid);
              return rows.length > 0 && rows.every((r) => r.matches);
            },
            15_000,
          );
        } catch (e) {
          assert.fail(`${(e as Error).message}: ${JSON.stringify(rows.filter((r) => !r.matches))}`);
        }
      },
    );

    await t.test(
      "host reboot: guest stopped, libvirtd and agent restarted, guest started: persisted limit back",
      async () => {
        const set = await httpTo({ socketPath }, "PATCH", `/v1/domains/${NAME}/interfaces/${MACS[0]}`, {
          inbound: { average: 3000 },
          persist: "both",
        });
        assert.equal(set.status, 200, JSON.stringify(set.body));
        agent?.kill("SIGTERM");
        await destroy(NAME);
        await restartLibvirtd();
        await startAgent();
        await startDomain(NAME);
        await until("persisted limit in force", async () => (await inForce(MACS[0])) === 24e6, 10_000);
        assert.equal(await inForce(MACS[1]), 10e6, "a live-only limit ended with the run");
      },
    );
  },
);
