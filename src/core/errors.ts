import type { Direction } from "./model.js";

// One catalogue of every code virtqos reports: errors (which fail a command, or the interface they are about)
// and the warnings and notes that do not. Per code: the process exit status, the HTTP status the REST API
// answers with, what happened, and the operator's next step. The fix lives only here: a diagnostic or error
// carries its code and a message with the specifics (device, priority, numbers), and whatever prints it
// (CLI text, --json, logs, status) takes the fix from ERRORS[code].
// docs/errors.md is checked against this list by a unit test (test/unit/errors-doc.test.ts), so neither can
// drift; the same test checks that every code used in src is listed here.

export const EXIT = {
  OK: 0,
  FAILED: 1,
  INVALID_INPUT: 2,
  PARTIAL: 3,
  MISMATCH: 4,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

/**
 * HTTP statuses the REST API answers with. 200: a warning or note (the request succeeded); 400: invalid input;
 * 401: no valid token; 403: the token's role or scope does not allow it; 404: something named does not exist; 409: a conflict with the host's state (another tool's qdisc or filter,
 * a lock held, a transaction open, a guest not running); 413: a request body too large; 422: well-formed but
 * refused by a rule; 500: a kernel or tool failure; 501: an interface type tc cannot shape (the Nova action's
 * answer); 503: a feature, tool or privilege this host lacks, or a transient failure worth retrying.
 */
export const HTTP = {
  OK: 200,
  BAD_REQUEST: 400,
  UNAUTHORIZED: 401,
  FORBIDDEN: 403,
  NOT_FOUND: 404,
  CONFLICT: 409,
  PAYLOAD_TOO_LARGE: 413,
  UNPROCESSABLE: 422,
  INTERNAL: 500,
  NOT_IMPLEMENTED: 501,
  UNAVAILABLE: 503,
} as const;

export type HttpStatus = (typeof HTTP)[keyof typeof HTTP];

// The catalogue writes exit and HTTP statuses as numbers (ExitCode and HttpStatus admit only the values of EXIT
// and HTTP): an object of literals is one esbuild can drop from a bundle that does not use it (dist/policy.cjs),
// and the hook bundle, which does, is read on every guest start.
export interface ErrorInfo {
  /** Exit status of a command that reports this code as an error; 0 for codes only ever warnings or notes. */
  exitCode: ExitCode;
  /** What the REST API answers with; 200 for codes only ever warnings or notes. */
  httpStatus: HttpStatus;
  summary: string;
  fix: string;
}

export const ERRORS = {
  POLICY_INVALID: {
    exitCode: 2,
    httpStatus: 400,
    summary:
      "The policy file is not valid YAML or breaks a rule (unit missing, unknown field, floors above a ceiling).",
    fix: "Each message names file:line:column, the field and the fix. Nothing is applied until the file is valid.",
  },
  DOMAIN_XML_INVALID: {
    exitCode: 2,
    httpStatus: 400,
    summary: "Domain XML is malformed or lacks <name>/<uuid>.",
    fix: "Pass the XML libvirt produces (virsh dumpxml NAME).",
  },
  USAGE: {
    exitCode: 2,
    httpStatus: 400,
    summary: "A command-line argument is missing or invalid.",
    fix: "See `virtqos help <command>`.",
  },
  TC_BATCH_FAILED: {
    exitCode: 1,
    httpStatus: 500,
    summary:
      "tc or ip rejected a line of the batch. The devices touched were restored to their previous state.",
    fix: "The message quotes the failing line and the kernel's reason; `virtqos doctor` shows missing features.",
  },
  ROLLBACK_INCOMPLETE: {
    exitCode: 1,
    httpStatus: 500,
    summary: "A batch failed and restoring the previous state failed too.",
    fix: "Run `virtqos status` to see what differs, then `virtqos apply` or `virtqos clear --domain D`.",
  },
  TX_OPEN: {
    exitCode: 1,
    httpStatus: 409,
    summary:
      "`virtqos tx begin` (or `apply --confirm`) while another transaction is open; one at a time per host.",
    fix: "`virtqos tx status` shows the open one: commit it (`virtqos tx commit`) or roll it back (`virtqos tx rollback`).",
  },
  TX_NONE: {
    exitCode: 1,
    httpStatus: 404,
    summary:
      "`virtqos tx commit` or `rollback` with no transaction open (it may have timed out and been rolled back).",
    fix: "`virtqos tx log` shows how the last transaction ended.",
  },
  TX_ROLLING_BACK: {
    exitCode: 1,
    httpStatus: 409,
    summary:
      "A rollback of this transaction started (by a timeout, `tx rollback` or boot recovery) and has not finished.",
    fix: "Run `virtqos tx rollback` to finish it; a commit is no longer possible.",
  },
  ROOT_QDISC_FOREIGN: {
    exitCode: 3,
    httpStatus: 409,
    summary: "The interface's root qdisc was created by someone else; virtqos does not replace it.",
    fix: "Remove the other tool's root qdisc if nothing else needs it (the message gives the `tc qdisc del` line) or leave the interface to it.",
  },
  INGRESS_QDISC_FOREIGN: {
    exitCode: 3,
    httpStatus: 409,
    summary: "The device has an `ingress` qdisc but virtqos needs `clsact` (both hooks) there.",
    fix: "If nothing else uses it, remove it (the message gives the `tc qdisc del` line), then apply again.",
  },
  CLSACT_UNAVAILABLE: {
    exitCode: 3,
    httpStatus: 503,
    summary: "The kernel has no clsact qdisc, needed to redirect a device's egress.",
    fix: "Use a kernel with CONFIG_NET_SCH_INGRESS (4.5 or newer).",
  },
  POLICE_UNAVAILABLE: {
    exitCode: 3,
    httpStatus: 503,
    summary: "`outbound.mode: police` was asked for but the kernel lacks the police action.",
    fix: "Remove `mode: police`; the default (shape through an IFB) works without it.",
  },
  INGRESS_FILTER_FOREIGN: {
    exitCode: 3,
    httpStatus: 409,
    summary:
      "Another tool's filter sits on the hook virtqos redirects from, at a priority the kernel evaluates first (libvirt's own `<bandwidth>` police filter is one): it would take the traffic before virtqos sees it, so virtqos does not shape that interface.",
    fix: "Remove the other filter (the message gives the exact `tc filter del` line) and apply again, or leave the interface to that tool; for libvirt, move the limit from `<bandwidth>` to virtqos metadata or the policy file.",
  },
  OVS_QOS_FOREIGN: {
    exitCode: 3,
    httpStatus: 409,
    summary:
      "`ovs: native`: the Open vSwitch port already has a QoS row, or its interface ingress policing, that virtqos did not create (libvirt's own `<bandwidth>` on an OVS port makes both); virtqos changes nothing for that interface (neither OVSDB nor its tc objects).",
    fix: "Remove the other setting if nothing else needs it (the message gives the `ovs-vsctl` command), or leave the port to it; for libvirt, move the limit from `<bandwidth>` to virtqos metadata or the policy file.",
  },
  OVSDB_FAILED: {
    exitCode: 3,
    httpStatus: 503,
    summary:
      "`ovs: native`: reading or changing OVSDB with `ovs-vsctl` failed (not installed, ovsdb-server not reachable, the transaction refused, or no answer within its timeout); the Open vSwitch side of the interfaces concerned was not changed.",
    fix: "The message quotes ovs-vsctl's error: start Open vSwitch (`systemctl start openvswitch-switch`), then `virtqos apply` (or restart the guest).",
  },
  IFB_UNAVAILABLE: {
    exitCode: 3,
    httpStatus: 503,
    summary: "Guest upload shaping needs IFB devices, which this kernel cannot create.",
    fix: "Enable CONFIG_IFB, or use `mode: police` where the police action exists.",
  },
  IFB_NAME_TAKEN: {
    exitCode: 3,
    httpStatus: 409,
    summary: "A device with the name virtqos derived for an IFB exists and is not virtqos's.",
    fix: "Delete or rename that device (the message names it).",
  },
  GROUP_ADMISSION: {
    exitCode: 3,
    httpStatus: 422,
    summary:
      "Adding this member would make the group's floors exceed its ceiling; it is shaped without a guarantee.",
    fix: "Lower floors, raise the group ceiling or move the guest to another group; the message gives the numbers.",
  },
  GROUP_CONFLICT: {
    exitCode: 3,
    httpStatus: 422,
    summary:
      "An interface matches more than one group (policy selectors, members, metadata); it keeps its own limits.",
    fix: "Narrow the selectors or memberships so each interface belongs to one group; the message names both groups.",
  },
  GROUP_UNKNOWN: {
    exitCode: 3,
    httpStatus: 404,
    summary:
      "Metadata or a policy rule names a group the policy does not define, or a parent group (which holds no members).",
    fix: "Define the group under `groups:`, fix the name, or name one of the parent's child groups.",
  },
  NOT_ENFORCEABLE: {
    exitCode: 0,
    httpStatus: 200,
    summary:
      "A warning: the interface type has no host netdev (vhostuser, hostdev, user...), so tc cannot act on it.",
    fix: "Use the device's own rate limiting (e.g. SR-IOV VF rate) or another interface type.",
  },
  NO_LIMITS: {
    exitCode: 0,
    httpStatus: 200,
    summary:
      "A warning: no limit applies to the interface (policy, metadata, `<bandwidth>`, `defaults`); it is not shaped.",
    fix: "Give it limits, or set policy `defaults`; nothing to do if it is meant to be unlimited.",
  },
  DEVICE_ABSENT: {
    exitCode: 0,
    httpStatus: 200,
    summary: "A note: the interface's host device does not exist (yet, or any more); nothing to shape now.",
    fix: "Nothing to do: the hook shapes it when the guest starts.",
  },
  BURST_ADJUSTED: {
    exitCode: 0,
    httpStatus: 200,
    summary:
      "A warning: a burst was lowered to the deepest bucket tc can express, or a police burst raised to hold a 64 KiB GSO packet.",
    fix: "Nothing to do; a burst within the bounds the message names silences it.",
  },
  OVS_NATIVE_FALLBACK: {
    exitCode: 0,
    httpStatus: 200,
    summary:
      "A warning: with `ovs: native`, a direction of an interface on an Open vSwitch port is still enforced by virtqos's tc objects: guest upload where the kernel lacks the police action OVS's ingress policing needs (shaped through an IFB instead), or a group member (a group is one tc tree shared across ports).",
    fix: "Nothing to do; for OVS to police guest upload, use a kernel with the police action (CONFIG_NET_ACT_POLICE; `virtqos doctor` lists the actions).",
  },
  OVS_NATIVE_ADJUSTED: {
    exitCode: 0,
    httpStatus: 200,
    summary:
      "A warning: part of a limit has no equivalent in Open vSwitch's QoS (`ovs: native`): a peak above the average (OVS holds the port to the average), or an upload rate that is not a whole kbit/s (ingress policing is set in kbit/s, rounded).",
    fix: "Nothing to do; the message says what OVS enforces instead. Use `ovs: tc` for peaks.",
  },
  OVS_QOS_TAKEN_OVER: {
    exitCode: 0,
    httpStatus: 200,
    summary:
      "A warning: with `ovs: tc` (the default), an interface virtqos shapes sits on an Open vSwitch port carrying QoS or ingress policing virtqos did not set (libvirt's own `<bandwidth>` makes both: a linux-htb QoS whose queue has only min-rate, a guarantee and not a limit). virtqos cleared the port's QoS (destroying the rows no other port uses) and reset its ingress policing to 0, waited for ovs-vswitchd, and shaped the port with its own tc objects.",
    fix: "Nothing to do; to silence it, give OVS ports their limits in virtqos metadata or the policy file instead of `<bandwidth>`, or use `ovs: native`.",
  },
  OVS_PORT_ABSENT: {
    exitCode: 0,
    httpStatus: 200,
    summary:
      "A note: with `ovs: native`, the interface's port is not in OVSDB (yet, or any more); nothing was set on it now.",
    fix: "Nothing to do: the hook's `started begin` (or the next `virtqos apply`) sets it once libvirt has added the port.",
  },
  GROUP_ORPHANED: {
    exitCode: 0,
    httpStatus: 200,
    summary: "A warning: a group no longer in the policy still shapes guests; its tree is left as it is.",
    fix: "Run `virtqos apply` for those guests (or restart them), or put the group back.",
  },
  INPUT_WARNING: {
    exitCode: 0,
    httpStatus: 200,
    summary:
      "A warning: part of the domain XML or policy was ignored or adjusted (a malformed value, a `<qos>` in another namespace, a peak below the average, a floor outside any group, `<bandwidth>` on an OVS port).",
    fix: "The message names the element or field and what virtqos did instead.",
  },
  COMMAND_MISSING: {
    exitCode: 1,
    httpStatus: 503,
    summary: "tc, ip or logger is not installed.",
    fix: "apt-get install iproute2 bsdutils",
  },
  COMMAND_KILLED: {
    exitCode: 1,
    httpStatus: 500,
    summary:
      "A tc or ip process was killed (a timeout, the hook's deadline) or not started; its output is incomplete.",
    fix: "Run the command again; if it recurs, look for a hung tc/ip or a heavily loaded host.",
  },
  PROBE_FAILED: {
    exitCode: 1,
    httpStatus: 503,
    summary:
      "Probing the kernel's tc features was disturbed (its device taken or gone, a busy kernel) three times; nothing was cached or applied.",
    fix: "Run the command again; `virtqos doctor` shows the probe's raw errors.",
  },
  LOCK_TIMEOUT: {
    exitCode: 1,
    httpStatus: 409,
    summary: "Another virtqos held the lock for too long.",
    fix: "Check for a hung virtqos process; the lock is /run/virtqos/lock.",
  },
  HOOK_TIMEOUT: {
    exitCode: 1,
    httpStatus: 500,
    summary:
      "The libvirt hook did not finish within `hookTimeout` (default 20s): it killed the tc/ip processes it had started, rolled back a batch it had begun (within 3 s more), released the lock and let the guest start (exit 1 only with `strict: true`).",
    fix: "The message names the command that was still running; check for a hung tc/ip or a host under heavy load. The next `virtqos apply --xml` or guest start converges to the policy.",
  },
  RECORD_VERSION: {
    exitCode: 1,
    httpStatus: 409,
    summary:
      "A state record has a format version this virtqos cannot read (a newer one wrote it); nothing changes while it is there.",
    fix: "Run the newer virtqos, or delete the file the message names and run `virtqos apply`.",
  },
  STATUS_MISMATCH: {
    exitCode: 4,
    httpStatus: 409,
    summary: "`virtqos status`: the kernel does not match what virtqos applied.",
    fix: "Run `virtqos apply` (or restart the guest) to re-apply; the status output shows the difference.",
  },
  REQUEST_INVALID: {
    exitCode: 2,
    httpStatus: 400,
    summary:
      "A request to the agent (body, path, query) or a live change's arguments failed validation: a wrong type, an unknown field, a number out of range, a rate without a unit where one is needed.",
    fix: "The message names the field (`/inbound/average`) and what it accepts; the schemas are in the agent's OpenAPI document (`GET /v1/openapi.json`).",
  },
  BODY_TOO_LARGE: {
    exitCode: 1,
    httpStatus: 413,
    summary: "A request body to the agent is larger than it accepts (64 KiB).",
    fix: "Send one interface's change per request; a change is a few hundred bytes.",
  },
  AUTH_REQUIRED: {
    exitCode: 1,
    httpStatus: 401,
    summary: "A request to the agent's TCP listener carried no token, or one that matches no token.",
    fix: "Send `Authorization: Bearer <token>` (or `X-Auth-Token: <token>`); create a token with `virtqos token add NAME --role ...`.",
  },
  FORBIDDEN: {
    exitCode: 1,
    httpStatus: 403,
    summary:
      "The token's role or domain scope does not allow this request (reader: reads; operator: live changes to domains in scope; admin: everything, the audit log).",
    fix: "Use a token with the role and scope the request needs (`virtqos token list`), or ask an admin for one.",
  },
  DOMAIN_NOT_FOUND: {
    exitCode: 1,
    httpStatus: 404,
    summary: "No domain with that name or UUID is known to libvirt (or to the caller's scope).",
    fix: "Check the name or UUID with `virsh list --all`.",
  },
  INTERFACE_NOT_FOUND: {
    exitCode: 1,
    httpStatus: 404,
    summary: "The domain has no interface with that target device, MAC address, alias or 1-based index.",
    fix: "`virtqos get DOMAIN` (or `virsh domiflist DOMAIN`) lists the domain's interfaces.",
  },
  DOMAIN_NOT_RUNNING: {
    exitCode: 1,
    httpStatus: 409,
    summary: "A live change was asked for a domain that is not running.",
    fix: "Start the domain, or change its configuration only (`--config`, `persist: config`).",
  },
  NOT_SHAPEABLE: {
    exitCode: 1,
    httpStatus: 501,
    summary:
      "The interface's type gives the host no network device for tc to shape (vhostuser, hostdev, user, ...).",
    fix: "Limit such an interface where its traffic passes (the switch, the vhost-user backend), not with virtqos.",
  },
  LIBVIRT_UNAVAILABLE: {
    exitCode: 1,
    httpStatus: 503,
    summary: "libvirt could not be reached (virsh missing, libvirtd not running, the connection refused).",
    fix: "Start libvirtd (`systemctl start libvirtd`); the message quotes virsh's error. The agent reconnects by itself.",
  },
  TOKEN_EXISTS: {
    exitCode: 1,
    httpStatus: 409,
    summary: "A token with that name already exists.",
    fix: "Pick another name, or `virtqos token revoke NAME` first.",
  },
  TOKEN_NOT_FOUND: {
    exitCode: 1,
    httpStatus: 404,
    summary: "No token has that name.",
    fix: "`virtqos token list` shows the names.",
  },
  TLS_REQUIRED: {
    exitCode: 2,
    httpStatus: 400,
    summary:
      "The agent was asked to listen on a non-loopback TCP address without TLS: tokens would cross the network in clear.",
    fix: "Give `--tls-cert FILE --tls-key FILE`, or listen on 127.0.0.1 / ::1 (or only on the unix socket).",
  },
  AUDIT_FAILED: {
    exitCode: 1,
    httpStatus: 500,
    summary:
      "The audit log (SQLite, /var/lib/virtqos/audit.db) could not be opened or written; the change was not made.",
    fix: "The message quotes SQLite's error: check the disk and the file's permissions.",
  },
  LIVE_STORE_INVALID: {
    exitCode: 0,
    httpStatus: 200,
    summary:
      "A file of live limits (/var/lib/virtqos/live/<uuid>.json) could not be read; its limits were ignored and the configured ones apply.",
    fix: "The message names the file and the reason; set the limits again with `virtqos set`, or delete the file.",
  },
  ROUTE_NOT_FOUND: {
    exitCode: 1,
    httpStatus: 404,
    summary: "The agent has no such route (or not for that method).",
    fix: "The routes are in `GET /v1/openapi.json`.",
  },
  NOT_ROOT: {
    exitCode: 1,
    httpStatus: 503,
    summary: "The command changes the kernel and must run as root.",
    fix: "Run it with sudo or as root.",
  },
  INTERNAL: {
    exitCode: 1,
    httpStatus: 500,
    summary: "An error without a code of its own: a failed system call (permissions, a full disk) or a bug.",
    fix: "The message says what failed; if it does not point at the host, report it.",
  },
} as const satisfies Record<string, ErrorInfo>;

export type ErrorCode = keyof typeof ERRORS;

export function isErrorCode(code: unknown): code is ErrorCode {
  return typeof code === "string" && Object.hasOwn(ERRORS, code);
}

/**
 * The catalogue code an error carries, if any. By shape rather than `instanceof VirtqosError`: the policy
 * parser runs from its own bundle (dist/policy.cjs) in the hook, with its own copy of the class.
 */
export function errorCodeOf(e: unknown): ErrorCode | undefined {
  const code = (e as { code?: unknown } | null)?.code;
  return isErrorCode(code) ? code : undefined;
}

/** Structured detail an error may carry for machine-readable output (the REST API, --json). */
export type ErrorDetail = string | Readonly<Record<string, unknown>>;

/** Every error virtqos throws on purpose: a catalogue code and a message with the specifics. */
export class VirtqosError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly detail?: ErrorDetail,
  ) {
    super(message);
  }
}

export type DiagnosticLevel = "error" | "warning" | "info";

/**
 * What the planner, group assignment and the engine report about an interface or the host: an error (the
 * interface is not shaped as asked), a warning or a note. The fix is the catalogue's: ERRORS[code].fix.
 */
export interface Diagnostic {
  code: ErrorCode;
  level: DiagnosticLevel;
  /** The interface (domain UUID/MAC) it is about, where it is about one. */
  iface?: string;
  /** The host device it is about, where it is about one. */
  dev?: string;
  /** The direction it is about, where it is about one. */
  direction?: Direction;
  message: string;
}

/** A diagnostic as output shows it (--json, the REST API): with the catalogue's fix. */
export function withFix(d: Diagnostic): Diagnostic & { fix: string } {
  return { ...d, fix: ERRORS[d.code].fix };
}

/** `CODE: message; fix: ...`, how logs and the CLI print an error-level diagnostic. */
export function formatDiagnostic(d: Diagnostic): string {
  return `${d.code}: ${d.message}; fix: ${ERRORS[d.code].fix}`;
}
