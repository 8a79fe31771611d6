import { chmod, chown, lstat, mkdir, readFile, unlink } from "node:fs/promises";
import { type AddressInfo, BlockList, connect, isIP } from "node:net";
import { dirname } from "node:path";
import { Server as TlsServer } from "node:tls";
import type { FastifyInstance } from "fastify";
import { VirtqosError } from "../../core/errors.js";
import type { Authenticator, Principal } from "../types.js";

// The agent's two doors. The unix socket trusts whoever can open it (file permissions are the gate), so it
// must never be more open than 0660 root:virtqos, not even for a moment. TCP trusts tokens only, so tokens
// must not cross a network in clear: anything but loopback needs TLS.

export const SOCKET_MODE = 0o660;
export const DEFAULT_SOCKET_GROUP = "virtqos";
/** How long a connection to an existing socket may take before we call it stale. */
const SOCKET_PROBE_TIMEOUT_MS = 500;

/**
 * The socket's principal: admin, since only root and the socket's group can connect at all. `virtqos set/get`
 * say who they run as (`x-virtqos-cli-user`), for the audit log's door and name: anyone who may connect may
 * claim it, so it names the caller, it does not authorise anything more.
 */
export function socketAuthenticator(name = "socket"): Authenticator {
  return {
    authenticate: (headers): Principal => {
      const user = headers["x-virtqos-cli-user"];
      if (typeof user === "string" && /^[A-Za-z0-9._-]{1,64}$/.test(user)) {
        return { name: `${user}`, role: "admin", via: "cli" };
      }
      return { name, role: "admin", via: "socket" };
    },
  };
}

/** The gid of a group in an /etc/group-format file, or undefined if it has no such group (or no file). */
export async function groupId(name: string, groupFile = "/etc/group"): Promise<number | undefined> {
  let text: string;
  try {
    text = await readFile(groupFile, "utf8");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw e;
  }
  for (const line of text.split("\n")) {
    const [groupName, , gid] = line.split(":");
    if (groupName === name && gid !== undefined && /^[0-9]+$/.test(gid)) return Number(gid);
  }
  return undefined;
}

function someoneListens(socketPath: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ path: socketPath });
    const done = (answer: boolean) => {
      s.destroy();
      resolve(answer);
    };
    s.setTimeout(SOCKET_PROBE_TIMEOUT_MS, () => done(false));
    s.once("connect", () => done(true));
    s.once("error", () => done(false));
  });
}

/** Remove a socket left by an agent that died; never a file of another kind, never a live agent's socket. */
async function removeStaleSocket(socketPath: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = (await lstat(socketPath)).isSocket();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return;
    throw e;
  }
  if (!isSocket) {
    throw new VirtqosError("INTERNAL", `${socketPath} exists and is not a socket; not replacing it`);
  }
  if (await someoneListens(socketPath)) {
    throw new VirtqosError(
      "INTERNAL",
      `another process (an agent already running?) listens on ${socketPath}`,
    );
  }
  await unlink(socketPath);
}

export interface UnixListenOptions {
  /** The group that may use the socket; skipped silently when the system has no such group. */
  group?: string;
  /** Where groups are looked up (tests point it elsewhere). */
  groupFile?: string;
}

/** Listen on a unix socket: mode 0660, owner root (when running as root), group `virtqos` if it exists. */
export async function listenUnix(
  app: FastifyInstance,
  socketPath: string,
  opts: UnixListenOptions = {},
): Promise<string> {
  await removeStaleSocket(socketPath);
  await mkdir(dirname(socketPath), { recursive: true, mode: 0o755 });
  // The socket is created with the umask's mode and only then chmod-ed: without this it could be
  // connectable by anyone for that moment (umask 0). 077 only narrows what other code creates meanwhile.
  const previousUmask = process.umask(0o077);
  try {
    await app.listen({ path: socketPath });
  } finally {
    process.umask(previousUmask);
  }
  await chmod(socketPath, SOCKET_MODE);
  const gid = await groupId(opts.group ?? DEFAULT_SOCKET_GROUP, opts.groupFile);
  if (gid !== undefined) {
    // -1 keeps the owner: only root may give a file to root, and as root the owner is root already.
    await chown(socketPath, process.getuid?.() === 0 ? 0 : -1, gid);
  }
  return socketPath;
}

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet("127.0.0.0", 8, "ipv4");
LOOPBACK.addAddress("::1", "ipv6");

/** 127.0.0.0/8, ::1 (any spelling, IPv4-mapped too) and `localhost`; nothing that needs resolving. */
export function isLoopbackHost(host: string): boolean {
  let h = host.trim().toLowerCase();
  if (h.startsWith("[") && h.endsWith("]")) h = h.slice(1, -1);
  if (h === "localhost") return true;
  const mapped = /^::ffff:([0-9.]+)$/.exec(h);
  if (mapped) h = mapped[1];
  const family = isIP(h);
  if (family === 4) return LOOPBACK.check(h, "ipv4");
  if (family === 6) return LOOPBACK.check(h, "ipv6");
  return false;
}

export interface TcpListenOptions {
  host: string;
  port: number;
  /** PEM files the app's `https` option was read from (readTls); giving them asserts the app serves TLS. */
  tlsCert?: string;
  tlsKey?: string;
  /** The same assertion without the file names: the app was built with `https`. */
  tls?: boolean;
}

export interface TcpAddress {
  host: string;
  port: number;
  tls: boolean;
}

/** Read the PEM files for buildApi's `https` option. */
export async function readTls(certPath: string, keyPath: string): Promise<{ cert: Buffer; key: Buffer }> {
  const [cert, key] = await Promise.all([readFile(certPath), readFile(keyPath)]);
  return { cert, key };
}

/** Listen on TCP; refuses, before binding, a non-loopback host unless the app serves TLS. */
export async function listenTcp(app: FastifyInstance, opts: TcpListenOptions): Promise<TcpAddress> {
  const given = [opts.tlsCert, opts.tlsKey].filter((f) => f !== undefined).length;
  if (given === 1) {
    throw new VirtqosError(
      "TLS_REQUIRED",
      "TLS needs both a certificate and a key (--tls-cert and --tls-key)",
    );
  }
  const tls = app.server instanceof TlsServer;
  if ((given === 2 || opts.tls === true) && !tls) {
    throw new VirtqosError(
      "TLS_REQUIRED",
      "TLS was asked for but the API was built without a certificate: build it with " +
        "buildApi({ https: await readTls(cert, key), ... })",
    );
  }
  if (!tls && !isLoopbackHost(opts.host)) {
    throw new VirtqosError(
      "TLS_REQUIRED",
      `refusing to listen on ${opts.host}:${opts.port} without TLS: tokens would cross the network in clear`,
    );
  }
  await app.listen({ host: opts.host, port: opts.port });
  const a = app.server.address() as AddressInfo;
  return { host: a.address, port: a.port, tls };
}
