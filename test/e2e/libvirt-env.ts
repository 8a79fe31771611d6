/**
 * Helpers for end-to-end tests against a real libvirtd + QEMU (TCG) on this host.
 *
 * Everything runs external tools through `spawn` with argument arrays (never a
 * shell string), so names coming from tests cannot be interpreted by a shell.
 * Every host object created here is recorded and removed by `teardown()`, so a
 * test only has to register `after(teardown)`.
 *
 * Facts this module relies on (measured on Debian 12 / libvirt 9.0 / QEMU 7.2,
 * see docs/libvirt-e2e-notes.md): `<bandwidth>` on an interface fails on this
 * kernel (no sfq qdisc, no police action), libvirt renames requested target
 * devs that start with "vnet" or "macvtap", and OVS only works with the
 * userspace datapath (datapath_type=netdev).
 */
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, mkdtemp, readFile, rename, rm, unlink, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { XMLParser } from "fast-xml-parser";

export const LIBVIRT_URI = "qemu:///system";
export const QEMU_HOOK_DIR = "/etc/libvirt/hooks/qemu.d";
export const SETUP_SCRIPT = fileURLToPath(new URL("../../scripts/setup-libvirt.sh", import.meta.url));

// ------------------------------------------------------------------ processes

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  /** Written to the child's stdin (then closed). */
  input?: string;
  /** Kill the child after this long; default 60 s (libvirt calls may block on a stuck daemon). */
  timeoutMs?: number;
}

/** Run a command and collect its output; never throws (a missing binary gives code 127). */
export function run(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    let settled = false;
    const finish = (r: RunResult): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(r);
    };
    const timer = setTimeout(() => {
      stderr += `\n[killed after ${opts.timeoutMs ?? 60_000} ms]`;
      child.kill("SIGKILL");
    }, opts.timeoutMs ?? 60_000);
    child.stdout.setEncoding("utf8").on("data", (d: string) => {
      stdout += d;
    });
    child.stderr.setEncoding("utf8").on("data", (d: string) => {
      stderr += d;
    });
    child.on("error", (err: NodeJS.ErrnoException) => {
      finish({ code: err.code === "ENOENT" ? 127 : 1, stdout, stderr: `${stderr}${err.message}` });
    });
    child.on("close", (code, signal) => {
      finish({ code: code ?? (signal ? 128 : 1), stdout, stderr });
    });
    // Ignore EPIPE when the child exits without reading its input.
    child.stdin.on("error", () => {});
    child.stdin.end(opts.input ?? "");
  });
}

/** Like `run` but throws with the command line and stderr on a non-zero exit. */
export async function runOk(cmd: string, args: readonly string[], opts: RunOptions = {}): Promise<string> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) {
    throw new Error(`${cmd} ${args.join(" ")} exited ${r.code}: ${(r.stderr || r.stdout).trim()}`);
  }
  return r.stdout;
}

export function virsh(args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return run("virsh", ["-c", LIBVIRT_URI, ...args], opts);
}

export function virshOk(args: readonly string[], opts: RunOptions = {}): Promise<string> {
  return runOk("virsh", ["-c", LIBVIRT_URI, ...args], opts);
}

// ----------------------------------------------------------------- resources

/** What this process created on the host; `teardown()` removes exactly this. */
const created = {
  domains: new Set<string>(),
  /**
   * UUIDs of every domain defined here: libvirt leaves the OVS QoS/Queue rows
   * it creates for <bandwidth> on openvswitch ports behind after destroy,
   * tagged with external_ids:vm-id=<uuid>.
   */
  domainUuids: new Set<string>(),
  networks: new Set<string>(),
  /** Linux bridges and veth ends (deleting one veth end removes its peer). */
  links: new Set<string>(),
  ovsBridges: new Set<string>(),
  hooks: new Set<string>(),
  files: new Set<string>(),
};

/** virsh needs a file for define/net-define; keep them in one private temp dir. */
let scratchDir: string | undefined;
async function scratchFile(name: string, content: string): Promise<string> {
  scratchDir ??= await mkdtemp(join(tmpdir(), "vqe2e-"));
  const path = join(scratchDir, name);
  await writeFile(path, content);
  return path;
}

// -------------------------------------------------------------- availability

export interface Availability {
  ok: boolean;
  reason?: string;
}

/**
 * Whether the system libvirtd answers and drives QEMU. Only looks: it starts
 * nothing (see `ensureLibvirt` for that).
 */
export async function libvirtAvailable(): Promise<Availability> {
  if (process.platform !== "linux") return { ok: false, reason: `needs Linux, this is ${process.platform}` };
  if (process.getuid?.() !== 0) return { ok: false, reason: "needs root (qemu:///system, tap devices)" };
  const r = await virsh(["version"], { timeoutMs: 15_000 });
  if (r.code === 127) return { ok: false, reason: "virsh not found: run scripts/setup-libvirt.sh" };
  if (r.code !== 0) {
    return {
      ok: false,
      reason: `libvirtd does not answer (${firstLine(r.stderr)}): run scripts/setup-libvirt.sh`,
    };
  }
  if (!/Running hypervisor: QEMU/.test(r.stdout)) {
    return { ok: false, reason: `libvirt has no QEMU driver: ${r.stdout.trim().replace(/\n/g, "; ")}` };
  }
  return { ok: true };
}

/** Whether Open vSwitch answers (ovsdb-server + ovs-vswitchd running). */
export async function ovsAvailable(): Promise<Availability> {
  const r = await run("ovs-vsctl", ["--timeout=5", "show"], { timeoutMs: 10_000 });
  if (r.code === 127) return { ok: false, reason: "ovs-vsctl not found (openvswitch-switch not installed)" };
  if (r.code !== 0) return { ok: false, reason: `ovs-vsctl show failed: ${firstLine(r.stderr)}` };
  return { ok: true };
}

export interface EnsureOptions {
  /** Also start Open vSwitch. Its failure only shows in the `ovs` field. */
  ovs?: boolean;
  /**
   * Let the setup script apt-get missing packages. Default: only when
   * VIRTQOS_E2E_INSTALL=1, otherwise it only starts daemons.
   */
  install?: boolean;
}

/**
 * Start the daemons if needed (scripts/setup-libvirt.sh, idempotent) and
 * report what is usable. Installing packages is opt-in because a test run
 * should not silently spend minutes in apt-get: CI runs the script itself.
 */
export async function ensureLibvirt(
  opts: EnsureOptions = {},
): Promise<Availability & { ovs: Availability; setupLog: string }> {
  const noOvs: Availability = { ok: false, reason: "not requested" };
  if (process.platform !== "linux" || process.getuid?.() !== 0) {
    const a = await libvirtAvailable();
    return { ...a, ovs: noOvs, setupLog: "" };
  }
  const install = opts.install ?? process.env.VIRTQOS_E2E_INSTALL === "1";
  const base = install ? [] : ["--no-install"];
  const setup = await run("bash", [SETUP_SCRIPT, ...base], { timeoutMs: 600_000 });
  let setupLog = setup.stdout + setup.stderr;
  if (setup.code !== 0) {
    return {
      ok: false,
      reason: `setup-libvirt.sh failed: ${lastLine(setup.stderr || setup.stdout)}`,
      ovs: noOvs,
      setupLog,
    };
  }
  const avail = await libvirtAvailable();
  let ovs = noOvs;
  if (opts.ovs) {
    const o = await run("bash", [SETUP_SCRIPT, "--no-install", "--ovs"], { timeoutMs: 120_000 });
    setupLog += o.stdout + o.stderr;
    ovs = o.code === 0 ? await ovsAvailable() : { ok: false, reason: lastLine(o.stderr || o.stdout) };
  }
  return { ...avail, ovs, setupLog };
}

/**
 * Restart the host's Open vSwitch (ovsdb-server and ovs-vswitchd) the way scripts/setup-libvirt.sh --ovs
 * started it: `systemctl restart openvswitch-switch` where systemd is PID 1, otherwise ovs-ctl with the
 * daemons' clean environment. Waits until ovs-vsctl answers again; returns the wall time in ms (the
 * command and that wait).
 */
export async function restartOvs(): Promise<number> {
  const t0 = performance.now();
  const pid1 = await readFile("/proc/1/comm", "utf8").catch(() => "");
  if (pid1.trim() === "systemd" && existsSync("/run/systemd/system")) {
    await runOk("systemctl", ["restart", "openvswitch-switch.service"], { timeoutMs: 120_000 });
  } else {
    await runOk(
      "env",
      [
        "-i",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG=C.UTF-8",
        "HOME=/root",
        "/usr/share/openvswitch/scripts/ovs-ctl",
        "restart",
        // Keeps the system id setup.sh's `start --system-id=random` wrote (/etc/openvswitch/system-id.conf).
        "--system-id=random",
      ],
      { timeoutMs: 120_000 },
    );
  }
  const deadline = performance.now() + 60_000;
  for (;;) {
    const a = await ovsAvailable();
    if (a.ok) break;
    if (performance.now() > deadline) throw new Error(`Open vSwitch not back after a restart: ${a.reason}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return performance.now() - t0;
}

/** Stop and start libvirtd (hooks are re-scanned); returns the wall time in ms. */
export async function restartLibvirtd(): Promise<number> {
  const t0 = performance.now();
  await runOk("bash", [SETUP_SCRIPT, "--no-install", "--restart-libvirtd"], { timeoutMs: 180_000 });
  return performance.now() - t0;
}

/**
 * SIGHUP libvirtd: enough for it to notice hooks installed after it started,
 * without restarting the daemon. Returns the wall time in ms.
 */
export async function reloadLibvirtd(): Promise<number> {
  const t0 = performance.now();
  await runOk("bash", [SETUP_SCRIPT, "--no-install", "--reload-libvirtd"], { timeoutMs: 60_000 });
  return performance.now() - t0;
}

// ---------------------------------------------------------------- domain XML

/** libvirt units: average/peak/floor in KiB/s, burst in KiB. */
export interface BandwidthLimits {
  average: number;
  peak?: number;
  burst?: number;
  /** Only valid on type='network' interfaces whose network has a bandwidth. */
  floor?: number;
}

/**
 * libvirt's own QoS. NOTE: starting a domain with this FAILS on the dev/CI
 * kernel (inbound needs the sfq qdisc, outbound the police action).
 */
export interface Bandwidth {
  inbound?: BandwidthLimits;
  outbound?: BandwidthLimits;
}

interface InterfaceCommon {
  mac: string;
  /** NIC model; default virtio (no guest OS runs, any QEMU model would do). */
  model?: string;
  bandwidth?: Bandwidth;
}

/** Linux bridge (libvirt creates a tap and enslaves it). */
export interface BridgeInterfaceSpec extends InterfaceCommon {
  type: "bridge";
  bridge: string;
  target?: string;
  ovs?: false;
}

/** OVS bridge: `<virtualport type='openvswitch'/>`. */
export interface OvsInterfaceSpec extends InterfaceCommon {
  type: "bridge";
  bridge: string;
  ovs: true;
  target?: string;
}

export interface NetworkInterfaceSpec extends InterfaceCommon {
  type: "network";
  network: string;
}

/** Bare tap, not attached to anything. */
export interface EthernetInterfaceSpec extends InterfaceCommon {
  type: "ethernet";
  target?: string;
}

/** macvtap on top of `dev`. */
export interface DirectInterfaceSpec extends InterfaceCommon {
  type: "direct";
  dev: string;
  mode: "bridge";
}

export type InterfaceSpec =
  | BridgeInterfaceSpec
  | OvsInterfaceSpec
  | NetworkInterfaceSpec
  | EthernetInterfaceSpec
  | DirectInterfaceSpec;

export interface DomainSpec {
  name: string;
  uuid?: string;
  interfaces: readonly InterfaceSpec[];
  /** Raw XML placed inside `<metadata>`; elements must carry their own namespace. */
  metadataXml?: string;
  /** MiB of guest RAM; 64 is enough because no guest OS boots. */
  memoryMiB?: number;
}

const MAC_RE = /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/i;

export function xmlAttr(value: string | number): string {
  return String(value)
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/'/g, "&apos;")
    .replace(/"/g, "&quot;");
}

/** Throws for names the kernel would refuse (IFNAMSIZ) or libvirt would silently replace. */
export function checkIfName(name: string, what = "interface name"): void {
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(name)) {
    throw new Error(`${what} ${JSON.stringify(name)}: 1-15 chars of [A-Za-z0-9_.-] (kernel IFNAMSIZ)`);
  }
}

function checkTarget(target: string): void {
  checkIfName(target, "target dev");
  // libvirt treats these prefixes as its own auto-generated names and replaces them.
  if (/^(vnet|macvtap|macvlan)/.test(target)) {
    throw new Error(`target dev ${target}: libvirt renames devs starting with vnet/macvtap/macvlan`);
  }
}

function bandwidthXml(bw: Bandwidth | undefined, indent: string): string {
  if (!bw || (!bw.inbound && !bw.outbound)) return "";
  const one = (tag: "inbound" | "outbound", l: BandwidthLimits | undefined): string => {
    if (!l) return "";
    const attrs = (["average", "peak", "burst", "floor"] as const)
      .filter((k) => l[k] !== undefined)
      .map((k) => {
        const v = l[k] as number;
        if (!Number.isInteger(v) || v < 0)
          throw new Error(`bandwidth ${tag}.${k} must be a non-negative integer`);
        return ` ${k}='${v}'`;
      })
      .join("");
    return `${indent}  <${tag}${attrs}/>\n`;
  };
  return `${indent}<bandwidth>\n${one("inbound", bw.inbound)}${one("outbound", bw.outbound)}${indent}</bandwidth>\n`;
}

function interfaceXml(spec: InterfaceSpec): string {
  if (!MAC_RE.test(spec.mac)) throw new Error(`bad MAC ${spec.mac}`);
  const i = "      ";
  let body = "";
  switch (spec.type) {
    case "bridge":
      checkIfName(spec.bridge, "bridge");
      body += `${i}<source bridge='${xmlAttr(spec.bridge)}'/>\n`;
      if (spec.ovs) body += `${i}<virtualport type='openvswitch'/>\n`;
      break;
    case "network":
      body += `${i}<source network='${xmlAttr(spec.network)}'/>\n`;
      break;
    case "ethernet":
      break;
    case "direct":
      checkIfName(spec.dev, "direct source dev");
      body += `${i}<source dev='${xmlAttr(spec.dev)}' mode='${xmlAttr(spec.mode)}'/>\n`;
      break;
  }
  body += `${i}<mac address='${xmlAttr(spec.mac.toLowerCase())}'/>\n`;
  if ((spec.type === "bridge" || spec.type === "ethernet") && spec.target !== undefined) {
    checkTarget(spec.target);
    body += `${i}<target dev='${xmlAttr(spec.target)}'/>\n`;
  }
  body += `${i}<model type='${xmlAttr(spec.model ?? "virtio")}'/>\n`;
  body += bandwidthXml(spec.bandwidth, i);
  return `    <interface type='${spec.type}'>\n${body}    </interface>\n`;
}

/**
 * A minimal TCG guest: no disk, no graphics, no USB, no balloon. It never
 * boots anything (SeaBIOS spins looking for a boot device), which is all the
 * network plumbing needs, and it starts in ~0.3 s.
 */
export function makeDomainXml(spec: DomainSpec): string {
  if (!/^[A-Za-z0-9_.+-]{1,64}$/.test(spec.name)) throw new Error(`bad domain name ${spec.name}`);
  const uuid = spec.uuid ? `  <uuid>${xmlAttr(spec.uuid)}</uuid>\n` : "";
  const metadata = spec.metadataXml ? `  <metadata>\n${spec.metadataXml}\n  </metadata>\n` : "";
  return (
    "<domain type='qemu'>\n" +
    `  <name>${xmlAttr(spec.name)}</name>\n` +
    uuid +
    metadata +
    `  <memory unit='MiB'>${spec.memoryMiB ?? 64}</memory>\n` +
    "  <vcpu>1</vcpu>\n" +
    "  <os><type arch='x86_64' machine='pc'>hvm</type></os>\n" +
    "  <on_poweroff>destroy</on_poweroff>\n" +
    "  <on_reboot>destroy</on_reboot>\n" +
    "  <on_crash>destroy</on_crash>\n" +
    "  <devices>\n" +
    "    <controller type='usb' model='none'/>\n" +
    spec.interfaces.map(interfaceXml).join("") +
    "    <memballoon model='none'/>\n" +
    "  </devices>\n" +
    "</domain>\n"
  );
}

// ------------------------------------------------------------------ domains

const parser = new XMLParser({ ignoreAttributes: false, attributeNamePrefix: "@_", parseTagValue: false });

type XmlNode = Record<string, unknown>;

function asArray(x: unknown): XmlNode[] {
  if (x === undefined || x === null || x === "") return [];
  return (Array.isArray(x) ? x : [x]) as XmlNode[];
}

function attr(node: unknown, name: string): string | undefined {
  if (!node || typeof node !== "object") return undefined;
  const v = (node as XmlNode)[`@_${name}`];
  return v === undefined ? undefined : String(v);
}

function domainNameOf(xml: string): string {
  const doc = parser.parse(xml) as { domain?: { name?: unknown } };
  const name = doc.domain?.name;
  if (typeof name !== "string" || name === "") throw new Error("domain XML has no <name>");
  return name;
}

function isMissing(r: RunResult): boolean {
  return /failed to get domain|Domain not found|no domain with matching/i.test(r.stderr);
}

/** Names of all defined domains (running or not). */
export async function listDomains(): Promise<string[]> {
  const out = await virshOk(["list", "--all", "--name"]);
  return out
    .split("\n")
    .map((s) => s.trim())
    .filter(Boolean);
}

export async function domainState(name: string): Promise<string> {
  return (await virshOk(["domstate", name])).trim();
}

/** Live XML of a running domain (inactive XML otherwise). */
export async function domainXml(name: string, opts: { inactive?: boolean } = {}): Promise<string> {
  return virshOk(["dumpxml", ...(opts.inactive ? ["--inactive"] : []), name]);
}

/**
 * Define and start a domain, recording it for teardown. A leftover domain of
 * the same name (from a crashed run) is removed first, because defining a
 * name that exists with another UUID fails.
 */
export async function defineAndStart(xml: string): Promise<string> {
  const name = await defineDomain(xml);
  await startDomain(name);
  return name;
}

/**
 * Define a domain without starting it (e.g. to start several at once later),
 * recording it for teardown; replaces a same-named leftover like `defineAndStart`.
 */
export async function defineDomain(xml: string): Promise<string> {
  const name = domainNameOf(xml);
  if ((await virsh(["domuuid", name])).code === 0) {
    await destroy(name);
    await undefine(name);
  }
  const file = await scratchFile(`${name}.xml`, xml);
  await virshOk(["define", file]);
  created.domains.add(name);
  created.domainUuids.add((await virshOk(["domuuid", name])).trim());
  return name;
}

export async function startDomain(name: string): Promise<void> {
  await virshOk(["start", name]);
}

/** Hard stop; a domain that is not running or does not exist is fine. */
export async function destroy(name: string): Promise<void> {
  const r = await virsh(["destroy", name]);
  if (r.code !== 0 && !/not running/i.test(r.stderr) && !isMissing(r)) {
    throw new Error(`virsh destroy ${name}: ${r.stderr.trim()}`);
  }
}

/** Remove the definition; a domain that does not exist is fine. */
export async function undefine(name: string): Promise<void> {
  const r = await virsh(["undefine", name]);
  if (r.code !== 0 && !isMissing(r)) throw new Error(`virsh undefine ${name}: ${r.stderr.trim()}`);
  created.domains.delete(name);
}

/** Destroy and undefine every domain whose name starts with `prefix`. */
export async function cleanupDomains(prefix: string): Promise<string[]> {
  if (!prefix) throw new Error("cleanupDomains needs a non-empty prefix");
  const names = (await listDomains()).filter((n) => n.startsWith(prefix));
  for (const n of names) {
    await destroy(n);
    await undefine(n);
  }
  return names;
}

/** PID of the QEMU process of a running domain (libvirt's pid file). */
export async function qemuPid(name: string): Promise<number | undefined> {
  try {
    const pid = Number.parseInt((await readFile(`/run/libvirt/qemu/${name}.pid`, "utf8")).trim(), 10);
    return Number.isFinite(pid) ? pid : undefined;
  } catch {
    return undefined;
  }
}

export interface LiveInterface {
  /**
   * Type as libvirt reports it live: a type='network' interface on a
   * <forward mode='bridge'/> network shows up as 'bridge' (the network stays
   * in source.network); on a libvirt-owned bridge it stays 'network'.
   */
  type: string;
  mac: string;
  /** Host device (tap, macvtap); undefined when the domain is not running. */
  target?: string;
  /** Attributes of <source> (bridge, network, dev, mode, portid). */
  source: Record<string, string>;
  virtualport?: string;
}

/** Interfaces of a domain from `virsh dumpxml` (the live XML when it runs). */
export async function interfacesOf(name: string): Promise<LiveInterface[]> {
  const doc = parser.parse(await domainXml(name)) as { domain?: { devices?: XmlNode } };
  return asArray(doc.domain?.devices?.interface).map((itf) => {
    const source: Record<string, string> = {};
    const src = itf.source;
    if (src && typeof src === "object") {
      for (const [k, v] of Object.entries(src as XmlNode)) {
        if (k.startsWith("@_")) source[k.slice(2)] = String(v);
      }
    }
    return {
      type: attr(itf, "type") ?? "",
      mac: (attr(itf.mac, "address") ?? "").toLowerCase(),
      target: attr(itf.target, "dev"),
      source,
      virtualport: attr(itf.virtualport, "type"),
    };
  });
}

/** Live target devs (taps / macvtaps) of a running domain, keyed by lower-case MAC. */
export async function tapsOf(name: string): Promise<Map<string, string>> {
  const taps = new Map<string, string>();
  for (const itf of await interfacesOf(name)) {
    if (itf.target) taps.set(itf.mac, itf.target);
  }
  return taps;
}

// ------------------------------------------------------------- host network

export async function linkExists(dev: string): Promise<boolean> {
  return (await run("ip", ["link", "show", "dev", dev])).code === 0;
}

/** Bridge (Linux or OVS-internal) a link is enslaved to, from sysfs. */
export async function masterOf(dev: string): Promise<string | undefined> {
  const r = await run("readlink", [`/sys/class/net/${dev}/master`]);
  return r.code === 0 ? r.stdout.trim().split("/").pop() : undefined;
}

async function assertLinkAbsent(name: string): Promise<void> {
  if (await linkExists(name)) {
    throw new Error(`link ${name} already exists (left over? use cleanupByPrefix)`);
  }
}

/** A Linux bridge, up, without STP (no forwarding delay for fresh ports). */
export async function createLinuxBridge(name: string): Promise<string> {
  checkIfName(name, "bridge");
  await assertLinkAbsent(name);
  await runOk("ip", ["link", "add", "name", name, "type", "bridge", "stp_state", "0", "forward_delay", "0"]);
  created.links.add(name);
  await runOk("ip", ["link", "set", "dev", name, "up"]);
  return name;
}

/** A veth pair, both ends up; one end can be the uplink of a `direct` (macvtap) interface. */
export async function createVethPair(a: string, b: string): Promise<{ a: string; b: string }> {
  checkIfName(a);
  checkIfName(b);
  await assertLinkAbsent(a);
  await assertLinkAbsent(b);
  await runOk("ip", ["link", "add", "name", a, "type", "veth", "peer", "name", b]);
  created.links.add(a);
  await runOk("ip", ["link", "set", "dev", a, "up"]);
  await runOk("ip", ["link", "set", "dev", b, "up"]);
  return { a, b };
}

export interface NetworkSpec {
  name: string;
  /**
   * 'bridge': `<forward mode='bridge'/>` on an existing Linux bridge; no
   *   dnsmasq, no firewall rules. The simplest mode that works here.
   * 'isolated': libvirt creates and owns the bridge; no IP, so no dnsmasq,
   *   but libvirt still adds iptables rules for the bridge.
   */
  mode: "bridge" | "isolated";
  bridge: string;
}

/** Define and start a libvirt network (recorded for teardown). */
export async function createNetwork(spec: NetworkSpec): Promise<string> {
  checkIfName(spec.bridge, "bridge");
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(spec.name)) throw new Error(`bad network name ${spec.name}`);
  if ((await virsh(["net-uuid", spec.name])).code === 0) {
    throw new Error(`network ${spec.name} already exists (left over? use cleanupByPrefix)`);
  }
  const forward = spec.mode === "bridge" ? "  <forward mode='bridge'/>\n" : "";
  const stp = spec.mode === "isolated" ? " stp='off' delay='0'" : "";
  const xml =
    `<network>\n  <name>${xmlAttr(spec.name)}</name>\n${forward}` +
    `  <bridge name='${xmlAttr(spec.bridge)}'${stp}/>\n</network>\n`;
  const file = await scratchFile(`net-${spec.name}.xml`, xml);
  await virshOk(["net-define", file]);
  created.networks.add(spec.name);
  await virshOk(["net-start", spec.name]);
  return spec.name;
}

async function destroyNetwork(name: string): Promise<void> {
  const d = await virsh(["net-destroy", name]);
  if (d.code !== 0 && !/not active|Network not found|no network with matching/i.test(d.stderr)) {
    throw new Error(`virsh net-destroy ${name}: ${d.stderr.trim()}`);
  }
  const u = await virsh(["net-undefine", name]);
  if (u.code !== 0 && !/Network not found|no network with matching/i.test(u.stderr)) {
    throw new Error(`virsh net-undefine ${name}: ${u.stderr.trim()}`);
  }
  created.networks.delete(name);
}

/**
 * An OVS bridge on the userspace datapath: the kernel has no openvswitch
 * module, so the default 'system' datapath cannot work.
 */
export async function createOvsBridge(name: string): Promise<string> {
  checkIfName(name, "OVS bridge");
  await assertLinkAbsent(name);
  await runOk("ovs-vsctl", [
    "--timeout=10",
    "add-br",
    name,
    "--",
    "set",
    "bridge",
    name,
    "datapath_type=netdev",
  ]);
  created.ovsBridges.add(name);
  await runOk("ip", ["link", "set", "dev", name, "up"]);
  return name;
}

/**
 * Delete the QoS and Queue rows libvirt created in OVSDB for a domain's
 * <bandwidth> (it does not remove them itself when the domain stops).
 * No-op when OVS is not running.
 */
export async function removeOvsQosOf(domainUuid: string): Promise<void> {
  for (const table of ["QoS", "Queue"]) {
    const r = await run("ovs-vsctl", [
      "--timeout=5",
      "--bare",
      "--columns=_uuid",
      "find",
      table,
      `external_ids:vm-id="${domainUuid}"`,
    ]);
    if (r.code !== 0) return;
    for (const row of r.stdout
      .split("\n")
      .map((x) => x.trim())
      .filter(Boolean)) {
      await runOk("ovs-vsctl", ["--timeout=10", "--if-exists", "destroy", table, row]);
    }
  }
}

/** The OVS bridge a port belongs to, if any. */
export async function ovsBridgeOfPort(port: string): Promise<string | undefined> {
  const r = await run("ovs-vsctl", ["--timeout=5", "port-to-br", port]);
  return r.code === 0 ? r.stdout.trim() : undefined;
}

// --------------------------------------------------------------------- hooks

/**
 * Drop an executable into /etc/libvirt/hooks/qemu.d. libvirtd only calls the
 * qemu hooks if it saw an executable there at start-up or at its last SIGHUP,
 * so follow with `reloadLibvirtd()` (or `restartLibvirtd()`) unless another
 * hook was already present then.
 */
export async function installQemuHook(name: string, script: string): Promise<string> {
  if (!/^[A-Za-z0-9_.-]+$/.test(name)) throw new Error(`bad hook name ${name}`);
  const path = join(QEMU_HOOK_DIR, name);
  // libvirt may scan the directory at any moment and runs every executable
  // in it: write under a temp name while not executable, move it in place,
  // and only then make it executable, so no half-written script ever runs.
  const tmp = join(QEMU_HOOK_DIR, `.${name}.tmp`);
  await writeFile(tmp, script, { mode: 0o600 });
  await rename(tmp, path);
  await chmod(path, 0o755);
  created.hooks.add(path);
  return path;
}

export async function removeQemuHook(name: string): Promise<void> {
  const path = join(QEMU_HOOK_DIR, name);
  await rm(path, { force: true });
  created.hooks.delete(path);
}

/** Record an extra file (e.g. a hook's log) to delete at teardown. */
export function trackFile(path: string): void {
  created.files.add(path);
}

// ------------------------------------------------------------------ cleanup

/**
 * Remove host objects whose names start with `prefix` that an earlier,
 * crashed run may have left: domains, libvirt networks, OVS bridges, links.
 */
export async function cleanupByPrefix(prefix: string): Promise<void> {
  if (prefix.length < 3) throw new Error("cleanupByPrefix needs a prefix of at least 3 chars");
  await cleanupDomains(prefix);
  const nets = await virsh(["net-list", "--all", "--name"]);
  for (const n of nets.stdout.split("\n").map((s) => s.trim())) {
    if (n.startsWith(prefix)) await destroyNetwork(n);
  }
  const brs = await run("ovs-vsctl", ["--timeout=5", "list-br"]);
  if (brs.code === 0) {
    for (const b of brs.stdout.split("\n").map((s) => s.trim())) {
      if (b.startsWith(prefix)) await runOk("ovs-vsctl", ["--timeout=10", "--if-exists", "del-br", b]);
    }
  }
  const links = await runOk("ip", ["-o", "link", "show"]);
  for (const line of links.split("\n")) {
    // "12: name@peer: <...>" -> name
    const m = /^\d+:\s+([^:@\s]+)/.exec(line);
    if (m?.[1]?.startsWith(prefix)) await run("ip", ["link", "del", "dev", m[1]]);
  }
}

/**
 * Remove everything recorded by this module, in dependency order: domains
 * first (they hold taps on bridges/networks), then networks, OVS bridges,
 * links, hooks and files. Keeps going after a failure and throws one error
 * listing every failure at the end.
 */
export async function teardown(): Promise<void> {
  const errors: string[] = [];
  const attempt = async (what: string, fn: () => Promise<unknown>): Promise<void> => {
    try {
      await fn();
    } catch (e) {
      errors.push(`${what}: ${e instanceof Error ? e.message : String(e)}`);
    }
  };
  for (const d of [...created.domains]) {
    await attempt(`domain ${d}`, async () => {
      await destroy(d);
      await undefine(d);
    });
  }
  for (const u of [...created.domainUuids]) {
    await attempt(`OVS QoS of ${u}`, async () => {
      await removeOvsQosOf(u);
      created.domainUuids.delete(u);
    });
  }
  for (const n of [...created.networks]) await attempt(`network ${n}`, () => destroyNetwork(n));
  for (const b of [...created.ovsBridges]) {
    await attempt(`ovs bridge ${b}`, async () => {
      await runOk("ovs-vsctl", ["--timeout=10", "--if-exists", "del-br", b]);
      created.ovsBridges.delete(b);
    });
  }
  for (const l of [...created.links]) {
    await attempt(`link ${l}`, async () => {
      // The peer of a veth may already have taken this end with it.
      if (await linkExists(l)) await runOk("ip", ["link", "del", "dev", l]);
      created.links.delete(l);
    });
  }
  for (const h of [...created.hooks]) {
    await attempt(`hook ${h}`, async () => {
      await rm(h, { force: true });
      created.hooks.delete(h);
    });
  }
  for (const f of [...created.files]) {
    await attempt(`file ${f}`, async () => {
      if (existsSync(f)) await unlink(f);
      created.files.delete(f);
    });
  }
  if (scratchDir) {
    const dir = scratchDir;
    scratchDir = undefined;
    await attempt(`scratch dir ${dir}`, () => rm(dir, { recursive: true, force: true }));
  }
  if (errors.length > 0) throw new Error(`teardown left things behind:\n  ${errors.join("\n  ")}`);
}

function firstLine(s: string): string {
  return s.trim().split("\n")[0] ?? "";
}

function lastLine(s: string): string {
  const lines = s.trim().split("\n");
  return lines[lines.length - 1] ?? "";
}
