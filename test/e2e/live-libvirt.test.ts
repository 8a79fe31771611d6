/**
 * Live changes with a real libvirtd + QEMU (TCG) and the installed hook: `virtqos set` on a running guest's
 * bridge, network, ethernet, direct and Open vSwitch interfaces (tc changed in place: the same classes and
 * qdiscs, new rates), the agent's REST PATCH over its unix socket, the Nova action over TCP with a real token,
 * a `virsh metadata --live` edit by hand applied by the agent within a second, and OpenStack's hard reboot
 * (destroy, undefine, define of the original XML without metadata, start): the limit set with --config is in
 * force again and `virtqos get` says it comes from the live store.
 *
 * Uses the real default paths (/etc/virtqos/policy.yaml, /run/virtqos, /var/lib/virtqos) because libvirtd runs
 * the hook with its own environment; HookTestHost saves and puts back what it changes.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { liveFilePath } from "../../src/adapters/live-store.js";
import { recordIfb } from "../../src/core/plan.js";
import { http as httpTo, until } from "./agent-client.js";
import {
  createLinuxBridge,
  createNetwork,
  createOvsBridge,
  createVethPair,
  defineAndStart,
  defineDomain,
  destroy,
  ensureLibvirt,
  type InterfaceSpec,
  makeDomainXml,
  startDomain,
  tapsOf,
  undefine,
  virshOk,
} from "./libvirt-env.js";
import {
  cli,
  HookTestHost,
  type HtbClassText,
  htbClasses,
  installHook,
  ms,
  qdiscs,
  REPO,
  readRecord,
  writePolicy,
} from "./virtqos-e2e.js";

const P = "vql";
const NAME = `${P}-one`;
const NEUTRAL = "# Written by test/e2e/live-libvirt.test.ts; the original is put back when the test ends.\n";
// Defaults, not a domain rule: <metadata> outranks policy defaults, so a metadata edit by hand shows.
const POLICY = `${NEUTRAL}defaults:\n  inbound: { average: 10mbit }\n  outbound: { average: 10mbit }\n`;
const env = await ensureLibvirt({ ovs: true });
const host = new HookTestHost(P, NEUTRAL);
const CLI = join(REPO, "bin", "virtqos");

interface View {
  index: number;
  dev?: string;
  mac?: string;
  inbound: { inForce?: { rateBitsPerSec: number; source: string } };
  outbound: { inForce?: { rateBitsPerSec: number; source: string } };
  matches?: boolean;
}

async function get(iface?: string): Promise<View[]> {
  const r = await cli(["get", NAME, ...(iface ? [iface] : []), "--direct", "--json"]);
  assert.equal(r.code, 0, `get: ${r.stderr}`);
  return (JSON.parse(r.stdout) as { interfaces: View[] }).interfaces;
}

/** Every HTB class and qdisc on the interface's tap and its IFB: handles must survive a live change. */
async function objects(
  uuid: string,
  mac: string,
  dev: string,
): Promise<{ shape: string[]; rates: string[] }> {
  const rec = (await readRecord(uuid)).interfaces.find((i) => i.mac === mac);
  const devs = [dev, ...(rec ? [recordIfb(uuid, rec)].filter((x): x is string => !!x) : [])];
  const shape: string[] = [];
  const rates: string[] = [];
  for (const d of devs) {
    for (const q of await qdiscs(d)) if (q.kind !== "clsact") shape.push(`${d} qdisc ${q.kind} ${q.handle}`);
    for (const c of (await htbClasses(d)) as HtbClassText[]) {
      shape.push(`${d} class ${c.classid} ${c.parent}`);
      rates.push(`${c.rate}`);
    }
  }
  return { shape: shape.sort(), rates };
}

const http = (
  o: { socketPath?: string; port?: number; method: string; path: string; headers?: Record<string, string> },
  body?: unknown,
) => httpTo({ socketPath: o.socketPath, port: o.port, headers: o.headers }, o.method, o.path, body);

function runWithEnv(
  args: string[],
  env: Record<string, string>,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, args, { env: { ...process.env, ...env } });
    let stdout = "";
    let stderr = "";
    c.stdout.setEncoding("utf8").on("data", (d: string) => {
      stdout += d;
    });
    c.stderr.setEncoding("utf8").on("data", (d: string) => {
      stderr += d;
    });
    c.on("close", (code) => resolve({ code: code ?? 1, stdout, stderr }));
  });
}

test(
  "live changes with a real libvirtd",
  { skip: env.ok ? false : env.reason, timeout: 900_000 },
  async (t) => {
    await host.setUp(t);
    const installed = await installHook(t);
    assert.equal(installed.code, 0, installed.stderr);
    await writePolicy(POLICY);

    const br0 = await createLinuxBridge(`${P}-br0`);
    const br1 = await createLinuxBridge(`${P}-br1`);
    const veth = await createVethPair(`${P}-up0`, `${P}-up1`);
    const network = await createNetwork({ name: `${P}-net`, mode: "bridge", bridge: br1 });
    const ovsBridge = env.ovs.ok ? await createOvsBridge(`${P}-ovs0`) : undefined;
    if (!ovsBridge) t.diagnostic(`OVS interface left out: ${env.ovs.reason}`);
    const specs: InterfaceSpec[] = [
      { type: "bridge", bridge: br0, mac: "52:54:00:7d:00:01" },
      { type: "network", network, mac: "52:54:00:7d:00:02" },
      { type: "ethernet", mac: "52:54:00:7d:00:03" },
      { type: "direct", dev: veth.a, mode: "bridge", mac: "52:54:00:7d:00:04" },
      ...(ovsBridge
        ? [{ type: "bridge", bridge: ovsBridge, ovs: true, mac: "52:54:00:7d:00:05" } as const]
        : []),
    ];
    const uuid = host.newUuid();
    const original = makeDomainXml({ name: NAME, uuid, interfaces: specs });
    t.after(async () => {
      await destroy(NAME);
      await undefine(NAME);
      await rm(liveFilePath(undefined, uuid), { force: true });
    });
    await defineAndStart(original);
    const taps = await tapsOf(NAME);

    await t.test("virtqos set on every interface type: in place, new rates, source live", async () => {
      for (const [i, s] of specs.entries()) {
        const dev = taps.get(s.mac) ?? "";
        const before = await objects(uuid, s.mac, dev);
        assert.ok(
          before.rates.includes("10Mbit"),
          `${s.type}: shaped at 10 Mbit/s by the hook: ${before.rates}`,
        );
        const t0 = performance.now();
        const r = await cli([
          "set",
          NAME,
          String(i + 1),
          "--inbound",
          "20mbit",
          "--outbound",
          "2500",
          "--live",
          "--direct",
        ]);
        assert.equal(r.code, 0, `${s.type}: set: ${r.stderr}`);
        t.diagnostic(`${s.type} (${dev}): virtqos set ${ms(t0)}`);
        const after = await objects(uuid, s.mac, dev);
        assert.deepEqual(
          after.shape,
          before.shape,
          `${s.type}: the same qdiscs and classes (changed in place)`,
        );
        assert.ok(
          after.rates.includes("20Mbit") && !after.rates.includes("10Mbit"),
          `${s.type}: ${after.rates}`,
        );
        const [v] = await get(String(i + 1));
        assert.equal(v.inbound.inForce?.rateBitsPerSec, 20e6);
        assert.equal(v.inbound.inForce?.source, "live");
        assert.equal(v.outbound.inForce?.rateBitsPerSec, 20e6);
        assert.equal(v.matches, true, `${s.type}: status matches`);
      }
    });

    const dir = await mkdtemp(join(tmpdir(), `${P}-agent-`));
    const socketPath = join(dir, "api.sock");
    const tokens = join(dir, "tokens.yaml");
    const port = 18000 + (process.pid % 1000);
    let agent: ChildProcess | undefined;
    t.after(async () => {
      agent?.kill("SIGTERM");
      await rm(dir, { recursive: true, force: true });
    });

    await t.test("the agent: REST PATCH over the socket, the Nova action over TCP with a token", async () => {
      const tok = await runWithEnv(
        [CLI, "token", "add", "nova", "--role", "operator", "--domains", `${P}-*`, "--json"],
        { VIRTQOS_TOKENS: tokens },
      );
      assert.equal(tok.code, 0, tok.stderr);
      const token = (JSON.parse(tok.stdout) as { token: string }).token;
      let stderr = "";
      agent = spawn(
        process.execPath,
        [CLI, "agent", "--socket", socketPath, "--listen", `127.0.0.1:${port}`, "--tokens", tokens],
        { env: { ...process.env, VIRTQOS_LOG: "stderr" }, stdio: ["ignore", "ignore", "pipe"] },
      );
      agent.stderr?.setEncoding("utf8").on("data", (d: string) => {
        stderr += d;
      });
      await until("agent socket", async () => existsSync(socketPath), 20_000);
      const health = await http({ socketPath, method: "GET", path: "/v1/health" });
      assert.equal(health.status, 200, JSON.stringify(health.body));

      const mac = specs[0].mac;
      const patched = await http(
        { socketPath, method: "PATCH", path: `/v1/domains/${NAME}/interfaces/${mac}` },
        { inbound: { average: "5mbit" }, outbound: { average: 625 }, persist: "live" },
      );
      assert.equal(patched.status, 200, JSON.stringify(patched.body));
      assert.ok((await objects(uuid, mac, taps.get(mac) ?? "")).rates.includes("5Mbit"));
      // The same through the API on every interface type, by 1-based index.
      for (const [i, s] of specs.entries()) {
        const before = await objects(uuid, s.mac, taps.get(s.mac) ?? "");
        const p = await http(
          { socketPath, method: "PATCH", path: `/v1/domains/${NAME}/interfaces/${i + 1}` },
          { inbound: { average: "6mbit" }, outbound: { average: 750 } },
        );
        assert.equal(p.status, 200, `${s.type}: ${JSON.stringify(p.body)}`);
        const after = await objects(uuid, s.mac, taps.get(s.mac) ?? "");
        assert.deepEqual(after.shape, before.shape, `${s.type}: changed in place through the API`);
        assert.ok(after.rates.includes("6Mbit"), `${s.type}: ${after.rates}`);
      }
      for (const [i, s] of specs.entries()) {
        const n = await http(
          { port, method: "POST", path: `/v2.1/servers/${uuid}/action`, headers: { "x-auth-token": token } },
          { setInterface: { interface: i + 1, rate: 875 } },
        );
        assert.equal(n.status, 202, `${s.type}: ${JSON.stringify(n.body)}`);
        assert.ok(
          (await objects(uuid, s.mac, taps.get(s.mac) ?? "")).rates.includes("7Mbit"),
          `${s.type} Nova`,
        );
      }

      const nova = await http(
        {
          port,
          method: "POST",
          path: `/v2.1/p1/servers/${uuid}/action`,
          headers: { "x-auth-token": token },
        },
        { setInterface: { interface: 2, rate: 1250 } },
      );
      assert.equal(nova.status, 202, `${JSON.stringify(nova.body)}\n${stderr}`);
      const params = (nova.body as { interfaceParameters: Record<string, number> }).interfaceParameters;
      assert.equal(params["inbound.average"], 1250);
      assert.equal(params["outbound.average"], 1250);
      const [v2] = await get("2");
      assert.equal(v2.inbound.inForce?.rateBitsPerSec, 10e6);
      assert.equal(v2.inbound.inForce?.source, "live");
      const noToken = await http(
        { port, method: "POST", path: `/v2.1/servers/${uuid}/action` },
        {
          setInterface: { interface: 2, rate: 1 },
        },
      );
      assert.equal(noToken.status, 401);
      const m = await httpTo({ socketPath }, "GET", "/metrics");
      const metrics = `${m.status}\n${m.body}`;
      assert.match(metrics, /^200\n/);
      assert.match(metrics, /virtqos_live_changes_total\{door="api",result="ok"\} [1-9]/);
      assert.match(metrics, /virtqos_live_changes_total\{door="nova",result="ok"\} [1-9]/);
      assert.match(metrics, new RegExp(`virtqos_limit_rate_bits_per_second\\{[^}]*domain="${NAME}"`));
      const audit = await cli(["audit", "--domain", NAME, "--json"]);
      assert.equal(audit.code, 0, audit.stderr);
      const doors = (JSON.parse(audit.stdout) as { entries: { door: string; result: string }[] }).entries.map(
        (e) => `${e.door}:${e.result}`,
      );
      assert.ok(doors.includes("api:ok") && doors.includes("nova:ok"), doors.join(" "));
    });

    await t.test("a `virsh metadata --live` edit by hand is applied by the agent within 1 s", async () => {
      const mac = specs[2].mac;
      // Clear the live limit first (set in the first step): a live change outranks <metadata>.
      const del = await http({
        socketPath,
        method: "DELETE",
        path: `/v1/domains/${NAME}/interfaces/${mac}?persist=both`,
      });
      assert.equal(del.status, 200, JSON.stringify(del.body));
      const dev = taps.get(mac) ?? "";
      const t0 = performance.now();
      await virshOk([
        "metadata",
        NAME,
        "--uri",
        "https://virtqos.dev/xmlns/qos/1",
        "--key",
        "virtqos",
        "--live",
        "--set",
        `<qos xmlns="https://virtqos.dev/xmlns/qos/1"><interface mac="${mac}"><inbound average="375"/></interface></qos>`,
      ]);
      const took = await until(
        "metadata applied",
        async () => (await objects(uuid, mac, dev)).rates.includes("3Mbit"),
        5000,
      );
      t.diagnostic(`metadata --live -> kernel: ${Math.round(took)} ms (virsh call included: ${ms(t0)})`);
      assert.ok(took <= 1000, `applied after ${Math.round(took)} ms`);
    });

    await t.test(
      "hard reboot: --config survives destroy, undefine, define without metadata, start",
      async () => {
        agent?.kill("SIGTERM");
        // Interface 4 keeps its Nova limit live only: the next start must end it.
        const keepLive = await cli(["set", NAME, "4", "--clear", "--config", "--direct"]);
        assert.equal(keepLive.code, 0, keepLive.stderr);
        const mac = specs[0].mac;
        const r = await cli([
          "set",
          NAME,
          mac,
          "--inbound",
          "4000",
          "--outbound",
          "4000",
          "--live",
          "--config",
          "--direct",
        ]);
        assert.equal(r.code, 0, r.stderr);
        await destroy(NAME);
        await undefine(NAME);
        await defineDomain(original);
        assert.doesNotMatch(
          await virshOk(["dumpxml", NAME, "--inactive"]),
          /virtqos\.dev/,
          "fresh XML, no metadata",
        );
        await startDomain(NAME);
        const [v] = await get(mac);
        if (v.inbound.inForce?.rateBitsPerSec !== 32e6) {
          t.diagnostic(`live store: ${await readFile(liveFilePath(undefined, uuid), "utf8").catch(String)}`);
          t.diagnostic(`record: ${JSON.stringify(await readRecord(uuid))}`);
        }
        assert.equal(v.inbound.inForce?.rateBitsPerSec, 32e6);
        assert.equal(v.inbound.inForce?.source, "live");
        assert.equal(v.outbound.inForce?.rateBitsPerSec, 32e6);
        const [other] = await get("4");
        assert.equal(other.inbound.inForce?.rateBitsPerSec, 10e6, "a live-only change ended with the run");
        assert.equal(other.inbound.inForce?.source, "defaults");
        // The Nova action persists (the seed's TODO: survive a hard reboot).
        const [nova] = await get("2");
        assert.equal(nova.inbound.inForce?.rateBitsPerSec, 10e6);
        assert.equal(nova.inbound.inForce?.source, "live");
      },
    );
  },
);
