/**
 * A simulated libvirt host built from network namespaces:
 *
 *   vqg-<id>-<n> (guest)  eth0 ==veth== <tap> ─┐
 *                                              ├─ <bridge>   in vqh-<id> (the "host")
 *   vqp-<id> (peer)       eth0 ==veth== up-<id>┘
 *
 * The host-side veth end plays the role of the guest's tap device: like a real tap, what leaves
 * it towards the guest is the guest's download and what enters it from the guest is its upload,
 * so shaping code can be pointed at it unchanged. The peer namespace stands for "the outside
 * world" that guests talk to.
 *
 * Every device is created directly inside its final namespace (`ip -n <ns> link add ... peer
 * ... netns <other>`), never in the root namespace, so parallel labs cannot collide on device
 * names and a crash never leaves devices in the root namespace.
 */
import { run } from "./exec.js";

export interface LabGuest {
  name: string;
  ns: string;
  tap: string;
  mac: string;
  ipv4: string;
  ipv6: string;
}

export interface Lab {
  id: string;
  hostNs: string;
  peerNs: string;
  bridge: string;
  peerIpv4: string;
  peerIpv6: string;
  guests: LabGuest[];
  destroy(): Promise<void>;
}

export interface GuestSpec {
  name: string;
  /** Host-side device name (<= 15 chars); default `t<id>-<n>`. */
  tap?: string;
  /** Guest MAC; default 52:54:00:71:xx:xx derived from the guest index. */
  mac?: string;
}

export interface CreateLabOptions {
  /** Up to 8 characters [a-z0-9]; generated from pid + counter when omitted. */
  id?: string;
  guests: GuestSpec[];
  /** Bridge device name in the host namespace (<= 15 chars); default `br-<id>`. */
  bridge?: string;
}

export const HOST_NS_PREFIX = "vqh-";
export const GUEST_NS_PREFIX = "vqg-";
export const PEER_NS_PREFIX = "vqp-";

/**
 * Every lab is its own L2 segment in its own namespaces, so all labs can use the same subnet.
 * Guest n gets host number 10 + n in both families, e.g. guest 1 = 10.99.0.11 / fd00:99::11.
 */
const IPV4_PREFIX = "10.99.0.";
const IPV6_PREFIX = "fd00:99::";
const PEER_HOST_NUMBER = 1;
const GUEST_HOST_NUMBER_BASE = 10;
const MAX_GUEST_INDEX = 254 - GUEST_HOST_NUMBER_BASE;

/** IFNAMSIZ - 1: the kernel rejects longer interface names. */
const MAX_IFNAME = 15;
const IFNAME_RE = /^[A-Za-z0-9_.-]+$/;
const MAC_RE = /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/;
/**
 * Caller ids are limited to 8 characters so that `vqbr`/`up-`/tap names derived from them stay
 * within IFNAMSIZ. Generated ids contain "_" (`<pid base36>_<counter base36>`), which callers
 * cannot use, so destroyAllLabs can tell which leftover labs belong to a dead process.
 */
const USER_ID_RE = /^[a-z0-9]{1,8}$/;
const GENERATED_ID_RE = /^([a-z0-9]+)_([a-z0-9]+)$/;

interface LabState {
  nextIndex: number;
  destroyed: boolean;
  destroying: Promise<void> | undefined;
}

const labStates = new WeakMap<Lab, LabState>();
let idCounter = 0;

function generateId(): string {
  const id = `${process.pid.toString(36)}_${(idCounter++).toString(36)}`;
  if (id.length > 8) {
    // pid_max is at most 2^22 (5 base36 digits), so only a very long-lived process gets here.
    idCounter = 0;
    return generateId();
  }
  return id;
}

function checkIfName(name: string, what: string): void {
  if (name.length === 0 || name.length > MAX_IFNAME || !IFNAME_RE.test(name)) {
    throw new Error(
      `${what} ${JSON.stringify(name)} is not a valid interface name (1-${MAX_IFNAME} chars [A-Za-z0-9_.-])`,
    );
  }
}

function uplinkName(id: string): string {
  return `up-${id}`;
}

function defaultMac(index: number): string {
  const hex = (n: number): string => n.toString(16).padStart(2, "0");
  return `52:54:00:71:${hex((index >> 8) & 0xff)}:${hex(index & 0xff)}`;
}

function ip(args: string[], netns?: string): Promise<unknown> {
  // `-n` rather than `ip netns exec`: one process instead of two, same effect for `ip` itself.
  return run("ip", netns === undefined ? args : ["-n", netns, ...args]);
}

/** Best effort: some keys only exist with optional modules (br_netfilter) or kernel options. */
async function sysctls(netns: string, settings: Record<string, string>): Promise<void> {
  await Promise.all(
    Object.entries(settings).map(([k, v]) =>
      run("sysctl", ["-q", "-w", `${k}=${v}`], { netns, allowFail: true }),
    ),
  );
}

async function createNamespace(name: string): Promise<void> {
  await run("ip", ["netns", "add", name]);
  // DAD would hold IPv6 addresses "tentative" for about a second after they are added; we also
  // pass `nodad` per address, this covers link-local addresses and anything added later.
  await sysctls(name, {
    "net.ipv6.conf.all.accept_dad": "0",
    "net.ipv6.conf.default.accept_dad": "0",
  });
  await ip(["link", "set", "lo", "up"], name);
}

async function killNamespacePids(ns: string): Promise<void> {
  const res = await run("ip", ["netns", "pids", ns], { allowFail: true });
  if (res.code !== 0) return;
  for (const line of res.stdout.split("\n")) {
    const pid = Number.parseInt(line.trim(), 10);
    if (!Number.isInteger(pid) || pid <= 1 || pid === process.pid) continue;
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already exited
    }
  }
}

/**
 * `ip netns del` only drops the name: a process still running inside keeps the namespace (and
 * its veth ends, bridge ports and addresses) alive anonymously, so kill those first.
 */
async function deleteNamespace(ns: string): Promise<void> {
  await killNamespacePids(ns);
  const res = await run("ip", ["netns", "del", ns], { allowFail: true });
  if (res.code !== 0 && !/No such file|does not exist/i.test(res.stderr)) {
    throw new Error(`ip netns del ${ns} failed: ${res.stderr.trim()}`);
  }
}

async function listNamespaces(): Promise<string[]> {
  const res = await run("ip", ["netns", "list"]);
  // Lines look like "name (id: 3)" or just "name".
  return res.stdout
    .split("\n")
    .map((l) => l.trim().split(/\s+/)[0] ?? "")
    .filter((n) => n.length > 0);
}

/** Connect a fresh namespace to the bridge; `hostSide` is the device that stays in the host ns. */
async function plugIntoBridge(
  lab: Lab,
  hostSide: string,
  ns: string,
  mac: string | undefined,
): Promise<void> {
  await ip(["link", "add", hostSide, "type", "veth", "peer", "name", "eth0", "netns", ns], lab.hostNs);
  if (mac !== undefined) await ip(["link", "set", "dev", "eth0", "address", mac], ns);
  await ip(["link", "set", "dev", hostSide, "master", lab.bridge], lab.hostNs);
  await ip(["link", "set", "dev", hostSide, "up"], lab.hostNs);
  await ip(["link", "set", "dev", "eth0", "up"], ns);
}

async function addAddresses(ns: string, ipv4: string, ipv6: string): Promise<void> {
  await ip(["addr", "add", `${ipv4}/24`, "dev", "eth0"], ns);
  await ip(["addr", "add", `${ipv6}/64`, "dev", "eth0", "nodad"], ns);
}

/**
 * With STP off a port goes straight to forwarding when it comes up, but wait for the kernel to
 * say so: the first packets of a measurement must not be eaten by a port still "learning".
 */
async function waitForwarding(lab: Lab, ports: string[], timeoutMs = 3000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const res = await run("bridge", ["-j", "link", "show"], { netns: lab.hostNs });
    const parsed: unknown = JSON.parse(res.stdout || "[]");
    const states = new Map<string, string>();
    if (Array.isArray(parsed)) {
      for (const entry of parsed) {
        if (typeof entry === "object" && entry !== null) {
          const { ifname, state } = entry as { ifname?: unknown; state?: unknown };
          if (typeof ifname === "string" && typeof state === "string") states.set(ifname, state);
        }
      }
    }
    const pending = ports.filter((p) => states.get(p) !== "forwarding");
    if (pending.length === 0) return;
    if (Date.now() > deadline) {
      throw new Error(
        `bridge ports not forwarding after ${timeoutMs} ms: ${pending.map((p) => `${p}=${states.get(p) ?? "missing"}`).join(", ")}`,
      );
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

function stateOf(lab: Lab): LabState {
  const st = labStates.get(lab);
  if (st === undefined) throw new Error("not a lab created by createLab()");
  return st;
}

/** `others`: guests already in the lab or planned alongside this one. */
function planGuest(lab: Lab, index: number, spec: GuestSpec, others: readonly LabGuest[]): LabGuest {
  if (index > MAX_GUEST_INDEX) throw new Error(`too many guests (max ${MAX_GUEST_INDEX})`);
  if (spec.name.length === 0) throw new Error("guest name must not be empty");
  if (others.some((g) => g.name === spec.name)) throw new Error(`guest ${spec.name} already exists`);
  const tap = spec.tap ?? `t${lab.id}-${index}`;
  checkIfName(tap, "tap");
  if (tap === lab.bridge || tap === uplinkName(lab.id) || tap === "lo" || others.some((g) => g.tap === tap)) {
    throw new Error(`tap name ${tap} is already used in ${lab.hostNs}`);
  }
  const mac = (spec.mac ?? defaultMac(index)).toLowerCase();
  if (!MAC_RE.test(mac)) throw new Error(`invalid MAC ${mac}`);
  const host = GUEST_HOST_NUMBER_BASE + index;
  return {
    name: spec.name,
    ns: `${GUEST_NS_PREFIX}${lab.id}-${index}`,
    tap,
    mac,
    ipv4: `${IPV4_PREFIX}${host}`,
    // Decimal digits are valid hex, so the v6 host part reads the same as the v4 one.
    ipv6: `${IPV6_PREFIX}${host}`,
  };
}

async function buildGuest(lab: Lab, guest: LabGuest): Promise<void> {
  await createNamespace(guest.ns);
  try {
    await plugIntoBridge(lab, guest.tap, guest.ns, guest.mac);
    await addAddresses(guest.ns, guest.ipv4, guest.ipv6);
  } catch (e) {
    await unplugGuest(lab, guest).catch(() => {});
    throw e;
  }
}

export async function addGuest(lab: Lab, spec: GuestSpec): Promise<LabGuest> {
  const st = stateOf(lab);
  if (st.destroyed) throw new Error(`lab ${lab.id} is destroyed`);
  const guest = planGuest(lab, st.nextIndex++, spec, lab.guests);
  await buildGuest(lab, guest);
  lab.guests.push(guest);
  await waitForwarding(lab, [guest.tap]);
  return guest;
}

export async function removeGuest(lab: Lab, name: string): Promise<void> {
  stateOf(lab);
  const i = lab.guests.findIndex((g) => g.name === name);
  if (i < 0) throw new Error(`no guest named ${name} in lab ${lab.id}`);
  const [guest] = lab.guests.splice(i, 1);
  if (guest) await unplugGuest(lab, guest);
}

/**
 * The kernel tears a deleted namespace down asynchronously, so its veth end (and therefore the
 * tap in the host ns) can linger for a while after `ip netns del`. Deleting the tap first is
 * synchronous and takes the guest's eth0 with it, so a guest can rejoin with the same tap name
 * right away and shaping code never sees a half-gone port.
 */
async function unplugGuest(lab: Lab, guest: LabGuest): Promise<void> {
  await run("ip", ["-n", lab.hostNs, "link", "del", "dev", guest.tap], { allowFail: true });
  await deleteNamespace(guest.ns);
}

async function createHostNamespace(requestedId: string | undefined): Promise<string> {
  if (requestedId !== undefined) {
    if (!USER_ID_RE.test(requestedId)) throw new Error(`lab id must match ${USER_ID_RE}: ${requestedId}`);
    await createNamespace(`${HOST_NS_PREFIX}${requestedId}`);
    return requestedId;
  }
  // `ip netns add` fails if the name exists, which makes it an atomic claim on the id: a stale
  // lab from a crashed process with a recycled pid just makes us move on to the next counter.
  for (let attempt = 0; ; attempt++) {
    const id = generateId();
    try {
      await createNamespace(`${HOST_NS_PREFIX}${id}`);
      return id;
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      if (!/File exists/i.test(msg) || attempt >= 20) throw e;
    }
  }
}

export async function createLab(opts: CreateLabOptions): Promise<Lab> {
  if (opts.bridge !== undefined) checkIfName(opts.bridge, "bridge");
  const id = await createHostNamespace(opts.id);
  const hostNs = `${HOST_NS_PREFIX}${id}`;
  const peerNs = `${PEER_NS_PREFIX}${id}`;
  const state: LabState = { nextIndex: 1, destroyed: false, destroying: undefined };

  const lab: Lab = {
    id,
    hostNs,
    peerNs,
    bridge: opts.bridge ?? `br-${id}`,
    peerIpv4: `${IPV4_PREFIX}${PEER_HOST_NUMBER}`,
    peerIpv6: `${IPV6_PREFIX}${PEER_HOST_NUMBER}`,
    guests: [],
    destroy(): Promise<void> {
      if (state.destroyed) return Promise.resolve();
      if (state.destroying === undefined) {
        state.destroying = (async () => {
          // Guests first so no veth end in the host ns outlives its partner even momentarily.
          const guests = lab.guests.splice(0, lab.guests.length);
          await Promise.all(guests.map((g) => unplugGuest(lab, g)));
          await deleteNamespace(peerNs);
          await deleteNamespace(hostNs);
          state.destroyed = true;
        })().finally(() => {
          state.destroying = undefined;
        });
      }
      return state.destroying;
    },
  };
  labStates.set(lab, state);

  try {
    const uplink = uplinkName(id);
    checkIfName(uplink, "uplink");
    // bridge-nf-call-* only exists once br_netfilter is loaded (it is per netns since 5.3);
    // when it does, host iptables rules would otherwise see (and possibly drop) bridged frames.
    await sysctls(hostNs, {
      "net.bridge.bridge-nf-call-iptables": "0",
      "net.bridge.bridge-nf-call-ip6tables": "0",
      "net.bridge.bridge-nf-call-arptables": "0",
    });
    // forward_delay 0 + STP off: ports forward as soon as they are up. Multicast snooping off
    // so IPv6 neighbour discovery is plainly flooded, independent of MLD state.
    const bridgeOpts = ["stp_state", "0", "forward_delay", "0", "mcast_snooping", "0"];
    await ip(["link", "add", lab.bridge, "type", "bridge", ...bridgeOpts], hostNs);
    await ip(["link", "set", "dev", lab.bridge, "up"], hostNs);

    await createNamespace(peerNs);
    await plugIntoBridge(lab, uplink, peerNs, undefined);
    await addAddresses(peerNs, lab.peerIpv4, lab.peerIpv6);

    // Validate all names against each other before anything is created.
    const planned: LabGuest[] = [];
    for (const spec of opts.guests) planned.push(planGuest(lab, state.nextIndex++, spec, planned));
    // allSettled, not all: on a failure no build may still be running when we clean up.
    const results = await Promise.allSettled(planned.map((g) => buildGuest(lab, g)));
    const failed = results.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) throw failed.reason;
    lab.guests.push(...planned);
    await waitForwarding(lab, [uplink, ...planned.map((g) => g.tap)]);
  } catch (e) {
    await lab.destroy().catch(() => {});
    await destroyMatching((labId) => labId === id).catch(() => {});
    throw e;
  }
  return lab;
}

function labIdOf(ns: string): string | undefined {
  if (ns.startsWith(HOST_NS_PREFIX)) return ns.slice(HOST_NS_PREFIX.length);
  if (ns.startsWith(PEER_NS_PREFIX)) return ns.slice(PEER_NS_PREFIX.length);
  if (ns.startsWith(GUEST_NS_PREFIX)) {
    const rest = ns.slice(GUEST_NS_PREFIX.length);
    const dash = rest.lastIndexOf("-");
    return dash > 0 ? rest.slice(0, dash) : undefined;
  }
  return undefined;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    // EPERM: it exists, we just may not signal it.
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

export interface DestroyAllOptions {
  /**
   * Only remove labs with generated ids whose creating process is dead, so a test run can clean
   * up after crashed runs without tearing down labs of tests running in parallel. Labs with
   * caller-chosen ids carry no pid, cannot be judged, and are kept.
   */
  onlyStale?: boolean;
}

/**
 * Remove lab namespaces (vqh-/vqg-/vqp-) whose lab id starts with `prefix` ("" = all labs),
 * e.g. leftovers from crashed runs. Returns the namespaces removed.
 */
export function destroyAllLabs(prefix = "", opts: DestroyAllOptions = {}): Promise<string[]> {
  return destroyMatching((id) => {
    if (!id.startsWith(prefix)) return false;
    if (opts.onlyStale) {
      const m = GENERATED_ID_RE.exec(id);
      if (m?.[1] === undefined || pidAlive(Number.parseInt(m[1], 36))) return false;
    }
    return true;
  });
}

async function destroyMatching(matches: (labId: string) => boolean): Promise<string[]> {
  const victims = (await listNamespaces()).filter((ns) => {
    const id = labIdOf(ns);
    return id !== undefined && matches(id);
  });
  // Guests first: their veth ends hang off the host namespace's bridge.
  const rank = (ns: string): number =>
    ns.startsWith(GUEST_NS_PREFIX) ? 0 : ns.startsWith(PEER_NS_PREFIX) ? 1 : 2;
  victims.sort((a, b) => rank(a) - rank(b));
  for (const ns of victims) await deleteNamespace(ns);
  return victims;
}
