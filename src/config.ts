// Where virtqos's configuration comes from: the only module that reads VIRTQOS_* environment variables and
// knows the default paths (README "Environment variables" lists them). The libvirt hook imports it, so it
// stays small and imports nothing but what it defines. Everything is read when asked for, never at module
// load: the lab and the tests set these variables inside a running process.

export const DEFAULT_POLICY_PATH = "/etc/virtqos/policy.yaml";
/** State records, locks, caches: tmpfs, gone with a reboot like the kernel state they describe. */
export const DEFAULT_RUN_DIR = "/run/virtqos";
/** The transaction journal: persistent storage. */
export const DEFAULT_STATE_DIR = "/var/lib/virtqos";
export const DEFAULT_HOOKS_DIR = "/etc/libvirt/hooks";
export const DEFAULT_SYSTEMD_DIR = "/etc/systemd/system";
export const LIBVIRTD_PID_FILE = "/run/libvirtd.pid";

export type LogTarget = "syslog" | "stderr" | "silent";

/** The policy file: `explicit` (--config), else $VIRTQOS_CONFIG, else /etc/virtqos/policy.yaml. */
export function policyPath(explicit?: string): string {
  return explicit ?? process.env.VIRTQOS_CONFIG ?? DEFAULT_POLICY_PATH;
}

/** $VIRTQOS_RUN_DIR, else /run/virtqos. */
export function defaultRunDir(): string {
  return process.env.VIRTQOS_RUN_DIR ?? DEFAULT_RUN_DIR;
}

/** $VIRTQOS_STATE_DIR, else /var/lib/virtqos. */
export function defaultStateDir(): string {
  return process.env.VIRTQOS_STATE_DIR ?? DEFAULT_STATE_DIR;
}

/**
 * Where log lines go: $VIRTQOS_LOG (syslog, stderr or silent; any other value means syslog), else `unset`
 * (syslog for the hook; the CLI passes its own).
 */
export function logTargetFromEnv(unset: LogTarget = "syslog"): LogTarget {
  const v = process.env.VIRTQOS_LOG;
  if (!v) return unset;
  return v === "stderr" || v === "silent" ? v : "syslog";
}

/**
 * The environment of a detached child (the confirm timer): this one's, with logs to syslog unless
 * $VIRTQOS_LOG says otherwise (the caller's terminal may be gone long before the child logs).
 */
export function detachedEnv(): NodeJS.ProcessEnv {
  return { ...process.env, VIRTQOS_LOG: process.env.VIRTQOS_LOG ?? "syslog" };
}

/** The network namespace the hook acts in: `explicit`, else $VIRTQOS_NETNS, else the host's own. */
export function hookNetns(explicit?: string): string | undefined {
  return explicit ?? process.env.VIRTQOS_NETNS;
}

/**
 * The OVSDB `ovs-vsctl` talks to for `ovs: native` (its `--db`): $VIRTQOS_OVSDB (e.g. unix:/run/x/db.sock),
 * else undefined: ovs-vsctl's own default (unix:/var/run/openvswitch/db.sock).
 */
export function ovsdbRemote(): string | undefined {
  return process.env.VIRTQOS_OVSDB || undefined;
}

/** $VIRTQOS_BOOT_ID if set (tests simulate a reboot with it), else undefined: the kernel's boot id counts. */
export function bootIdOverride(): string | undefined {
  return process.env.VIRTQOS_BOOT_ID || undefined;
}

export const DEFAULT_TOKENS_PATH = "/etc/virtqos/tokens.yaml";
/** The agent's unix socket: root and group `virtqos`, mode 0660. */
export const DEFAULT_API_SOCKET = "/run/virtqos/api.sock";
export const DEFAULT_LIBVIRT_URI = "qemu:///system";

/** The agent's bearer tokens (hashes only): $VIRTQOS_TOKENS, else /etc/virtqos/tokens.yaml. */
export function tokensPath(explicit?: string): string {
  return explicit ?? process.env.VIRTQOS_TOKENS ?? DEFAULT_TOKENS_PATH;
}

/** The audit log (SQLite): <state dir>/audit.db. */
export function auditDbPath(stateDir = defaultStateDir()): string {
  return `${stateDir}/audit.db`;
}

/** Live limits, one small JSON file per domain UUID, read by the hook at start: <state dir>/live. */
export function liveDir(stateDir = defaultStateDir()): string {
  return `${stateDir}/live`;
}

/** The agent's unix socket: $VIRTQOS_API_SOCKET, else /run/virtqos/api.sock. */
export function apiSocketPath(explicit?: string): string {
  return explicit ?? process.env.VIRTQOS_API_SOCKET ?? DEFAULT_API_SOCKET;
}

/** Which libvirt the CLI and the agent talk to: $VIRTQOS_LIBVIRT_URI, else qemu:///system. */
export function libvirtUri(explicit?: string): string {
  return explicit ?? process.env.VIRTQOS_LIBVIRT_URI ?? DEFAULT_LIBVIRT_URI;
}
