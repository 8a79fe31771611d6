// One catalogue of every error virtqos reports: code, process exit status, and the operator's next step.
// docs/errors.md is checked against this list by a unit test, so neither can drift.

export interface ErrorInfo {
  exitCode: number;
  summary: string;
  fix: string;
}

export const EXIT = {
  OK: 0,
  FAILED: 1,
  INVALID_INPUT: 2,
  PARTIAL: 3,
  MISMATCH: 4,
} as const;

export const ERRORS: Record<string, ErrorInfo> = {
  POLICY_INVALID: {
    exitCode: EXIT.INVALID_INPUT,
    summary:
      "The policy file is not valid YAML or breaks a rule (unit missing, unknown field, floors above a ceiling).",
    fix: "Each message names file:line:column, the field and the fix. Nothing is applied until the file is valid.",
  },
  DOMAIN_XML_INVALID: {
    exitCode: EXIT.INVALID_INPUT,
    summary: "Domain XML is malformed or lacks <name>/<uuid>.",
    fix: "Pass the XML libvirt produces (virsh dumpxml NAME).",
  },
  USAGE: {
    exitCode: EXIT.INVALID_INPUT,
    summary: "A command-line argument is missing or invalid.",
    fix: "See `virtqos help <command>`.",
  },
  TC_BATCH_FAILED: {
    exitCode: EXIT.FAILED,
    summary:
      "tc or ip rejected a line of the batch. The devices touched were restored to their previous state.",
    fix: "The message quotes the failing line and the kernel's reason; `virtqos doctor` shows missing features.",
  },
  ROLLBACK_INCOMPLETE: {
    exitCode: EXIT.FAILED,
    summary: "A batch failed and restoring the previous state failed too.",
    fix: "Run `virtqos status` to see what differs, then `virtqos apply` or `virtqos clear --domain D`.",
  },
  TX_OPEN: {
    exitCode: EXIT.FAILED,
    summary:
      "`virtqos tx begin` (or `apply --confirm`) while another transaction is open; one at a time per host.",
    fix: "`virtqos tx status` shows the open one: commit it (`virtqos tx commit`) or roll it back (`virtqos tx rollback`).",
  },
  TX_NONE: {
    exitCode: EXIT.FAILED,
    summary:
      "`virtqos tx commit` or `rollback` with no transaction open (it may have timed out and been rolled back).",
    fix: "`virtqos tx log` shows how the last transaction ended.",
  },
  TX_ROLLING_BACK: {
    exitCode: EXIT.FAILED,
    summary:
      "A rollback of this transaction started (by a timeout, `tx rollback` or boot recovery) and has not finished.",
    fix: "Run `virtqos tx rollback` to finish it; a commit is no longer possible.",
  },
  ROOT_QDISC_FOREIGN: {
    exitCode: EXIT.PARTIAL,
    summary: "The interface's root qdisc was created by someone else; virtqos does not replace it.",
    fix: "Remove the other tool's root qdisc (tc qdisc del dev DEV root) or leave the interface to it.",
  },
  INGRESS_QDISC_FOREIGN: {
    exitCode: EXIT.PARTIAL,
    summary: "The device has an `ingress` qdisc but virtqos needs `clsact` (both hooks) there.",
    fix: "If nothing else uses it: tc qdisc del dev DEV ingress, then apply again.",
  },
  CLSACT_UNAVAILABLE: {
    exitCode: EXIT.PARTIAL,
    summary: "The kernel has no clsact qdisc, needed to redirect a device's egress.",
    fix: "Use a kernel with CONFIG_NET_SCH_INGRESS (4.5 or newer).",
  },
  POLICE_UNAVAILABLE: {
    exitCode: EXIT.PARTIAL,
    summary: "`outbound.mode: police` was asked for but the kernel lacks the police action.",
    fix: "Remove `mode: police`; the default (shape through an IFB) works without it.",
  },
  INGRESS_FILTER_FOREIGN: {
    exitCode: EXIT.PARTIAL,
    summary:
      "Another tool's filter sits on the hook virtqos redirects from, at a priority the kernel evaluates first (libvirt's own `<bandwidth>` police filter is one): it would take the traffic before virtqos sees it, so virtqos does not shape that interface.",
    fix: "Remove the other filter (the message gives the exact `tc filter del` line) or leave the interface to that tool; for libvirt, move the limit from `<bandwidth>` to virtqos metadata or the policy file.",
  },
  IFB_UNAVAILABLE: {
    exitCode: EXIT.PARTIAL,
    summary: "Guest upload shaping needs IFB devices, which this kernel cannot create.",
    fix: "Enable CONFIG_IFB, or use `mode: police` where the police action exists.",
  },
  IFB_NAME_TAKEN: {
    exitCode: EXIT.PARTIAL,
    summary: "A device with the name virtqos derived for an IFB exists and is not virtqos's.",
    fix: "Delete or rename that device.",
  },
  GROUP_ADMISSION: {
    exitCode: EXIT.PARTIAL,
    summary:
      "Adding this member would make the group's floors exceed its ceiling; it is shaped without a guarantee.",
    fix: "Lower floors or raise the group ceiling; the message gives the numbers.",
  },
  GROUP_CONFLICT: {
    exitCode: EXIT.PARTIAL,
    summary:
      "An interface matches more than one group (policy selectors, members, metadata); it keeps its own limits.",
    fix: "Narrow the selectors so each interface belongs to one group; the message names both groups.",
  },
  GROUP_UNKNOWN: {
    exitCode: EXIT.PARTIAL,
    summary:
      "Metadata or a policy rule names a group the policy does not define, or a parent group (which holds no members).",
    fix: "Define the group under `groups:`, fix the name, or name one of the parent's child groups.",
  },
  NOT_ENFORCEABLE: {
    exitCode: EXIT.PARTIAL,
    summary: "The interface type has no host netdev (vhostuser, hostdev, user...), so tc cannot act on it.",
    fix: "Use the device's own rate limiting (e.g. SR-IOV VF rate) or another interface type.",
  },
  COMMAND_MISSING: {
    exitCode: EXIT.FAILED,
    summary: "tc, ip or logger is not installed.",
    fix: "apt-get install iproute2 bsdutils",
  },
  PROBE_FAILED: {
    exitCode: EXIT.FAILED,
    summary:
      "Probing the kernel's tc features was disturbed (its device taken or gone, a busy kernel) three times; nothing was cached or applied.",
    fix: "Run the command again; `virtqos doctor` shows the probe's raw errors.",
  },
  LOCK_TIMEOUT: {
    exitCode: EXIT.FAILED,
    summary: "Another virtqos held the lock for too long.",
    fix: "Check for a hung virtqos process; the lock is /run/virtqos/lock.",
  },
  HOOK_TIMEOUT: {
    exitCode: EXIT.FAILED,
    summary:
      "The libvirt hook did not finish within `hookTimeout` (default 20s): it killed the tc/ip processes it had started, rolled back a batch it had begun (within 3 s more), released the lock and let the guest start (exit 1 only with `strict: true`).",
    fix: "The message names the command that was still running; check for a hung tc/ip or a host under heavy load. The next `virtqos apply --xml` or guest start converges to the policy.",
  },
  STATUS_MISMATCH: {
    exitCode: EXIT.MISMATCH,
    summary: "`virtqos status`: the kernel does not match what virtqos applied.",
    fix: "Run `virtqos apply` (or restart the guest) to re-apply; the status output shows the difference.",
  },
  NOT_ROOT: {
    exitCode: EXIT.FAILED,
    summary: "The command changes the kernel and must run as root.",
    fix: "Run it with sudo or as root.",
  },
};

export class VirtqosError extends Error {
  constructor(
    readonly code: keyof typeof ERRORS,
    message: string,
  ) {
    super(message);
  }
}
