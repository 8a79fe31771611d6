import type { Runner } from "../adapters/exec.js";
import type { Logger } from "../adapters/log.js";
import { OvsdbError, readOvsState, runOvsVsctl } from "../adapters/ovs.js";
import { ovsdbRemote } from "../config.js";
import { type Diagnostic, ERRORS, type ErrorCode, formatDiagnostic } from "../core/errors.js";
import type { DesiredInterface, Direction, DirectionLimit, StoredRecord } from "../core/model.js";
import {
  assignOvsNative,
  hasOvsObjects,
  OVS_HTB_HANDLE,
  OVS_OWNER_KEY,
  OVS_POLICING_RATE_UNIT_BITS_PER_SEC,
  OVS_QOS_TYPE,
  type OvsState,
  type OvsTakeOver,
  ovsHandBack,
  ovsPolicingFor,
  ovsQosFor,
  ovsTakenOverView,
  ovsTakeOvers,
  ovsVsctlArgs,
  ovsWants,
  planOvs,
  qosConfig,
  queueConfig,
  refuseBeforePlan,
  refuseOvs,
  takeOverCandidate,
  takeOverNote,
} from "../core/ovs-native.js";
import type { Observed, Plan } from "../core/plan.js";
import type { Policy } from "../core/policy.js";
import type { Capabilities } from "../core/recipe.js";
import { HOOK_PARENT } from "../core/tc/handles.js";
import type { ObservedDevice } from "../core/tc/normalise.js";
import { formatRate } from "../core/units.js";
import type { StatusRow } from "./status.js";

// `ovs: native` (issue 10) in the engine and in `virtqos status`: the pure decisions are in
// src/core/ovs-native.ts, OVSDB access in src/adapters/ovs.ts. The engine calls, each in a delimited block:
//   1. prepareOvsNative(), between the snapshot and plan(): which directions Open vSwitch enforces, OVSDB read
//      where it matters, interfaces refused before anything changes (another tool's QoS on the port), and
//      what plan() is shown of a port OVS hands back to tc, or (`ovs: tc`) of a port virtqos takes over from
//      another tool's QoS or policing (libvirt's `<bandwidth>`);
//   2. finishOvsNative(), after plan(): the OVSDB diff, the plan's records and diagnostics completed;
//   3. step.applyFirst() before the tc batch (a port handed back to tc; usually nothing) and step.apply() after
//      it (one ovs-vsctl transaction), before the records are committed.

export interface OvsNativeStep {
  /** The ovs-vsctl argument arrays this apply runs, in order (`virtqos plan` shows them). */
  argv: string[][];
  /** What must change in OVSDB before the tc batch, waiting for ovs-vswitchd. Throws OvsdbError. */
  applyFirst(): Promise<void>;
  /** The rest, one transaction; a failure becomes the plan's problems. Resolves whether OVSDB was changed. */
  apply(): Promise<boolean>;
}

interface Ctx {
  runner: Runner;
  log: Logger;
}

interface Req {
  policy: Policy;
  scope: string[] | "all";
  sweep?: boolean;
  dryRun?: boolean;
  desired?: DesiredInterface[];
}

export interface OvsPrepared {
  /** What plan() is to be shown (ovsHandBack). */
  view: Observed;
  /** OVSDB as read; undefined where OVS does not matter to this request (or could not be read). */
  state?: OvsState;
  notes: Diagnostic[];
  /** `ovs: tc`: ports whose foreign QoS/policing virtqos removes before the tc batch (plan() sees them without). */
  takeOvers?: OvsTakeOver[];
  /** OVSDB could not be read, but nothing virtqos knows of is there: a removal with nothing to remove. */
  unread?: string;
}

const inScopeOf = (scope: Req["scope"]) => (uuid: string) => scope === "all" || scope.includes(uuid);

/**
 * Step 1. Domains resolved from XML get their OVS directions from the policy; desired state handed in by the
 * caller (from the records) keeps the marks the records carry. OVSDB is read only where OVS matters: an
 * interface OVS enforces, a record saying OVS enforced something, or (`ovs: native`) a domain being removed,
 * whose tagged rows may be left. The agent's drift checks (a dry run from the records) leave OVS out: it keeps
 * its own configuration.
 */
export async function prepareOvsNative(
  ctx: Ctx,
  req: Req,
  desired: DesiredInterface[],
  before: Observed,
  caps: Capabilities,
): Promise<OvsPrepared> {
  const notes = req.desired ? [] : assignOvsNative(desired, req.policy.ovs ?? "tc", caps);
  const view = ovsHandBack(before, desired).observed;
  const inScope = inScopeOf(req.scope);
  const enforced = desired.some((d) => d.ovsNative?.length);
  const recorded = before.records.some((r) => inScope(r.domainUuid) && r.interfaces.some((i) => i.ovs));
  const removing =
    req.policy.ovs === "native" &&
    !req.desired &&
    (req.scope === "all" || req.scope.some((u) => !desired.some((d) => d.domainUuid === u)));
  // `ovs: tc`: an OVS port showing ovs-vswitchd's htb 1: or ingress qdisc may carry another tool's QoS or
  // policing (libvirt's <bandwidth>), which virtqos takes over (ovsTakeOvers).
  const mode = req.policy.ovs ?? "tc";
  const candidates = desired.filter(
    (d) => takeOverCandidate(d, mode) && hasOvsObjects(d.dev ? view.devices.get(d.dev) : undefined),
  );
  const taking = candidates.length > 0;
  if ((!enforced && !recorded && !removing && !taking) || (req.dryRun && req.desired)) return { view, notes };
  try {
    const state = await readOvsState(ctx.runner, ovsdbRemote());
    refuseBeforePlan(desired, state);
    const takeOvers = taking ? ovsTakeOvers(candidates, state) : [];
    return { view: ovsTakenOverView(view, takeOvers), notes, state, takeOvers };
  } catch (e) {
    if (!(e instanceof OvsdbError)) throw e;
    if (enforced || recorded) refuseBeforePlan(desired, undefined, e.message);
    // ovs: tc, nothing of virtqos's in OVS: the port is left as it is (the plan reports OVS's root as foreign).
    else if (taking) ctx.log.warning(`ovs: OVSDB not read (${e.message}); no Open vSwitch port taken over`);
    // A guest without OVS ports stopping on a host without Open vSwitch: nothing of virtqos's can be there.
    else ctx.log.debug(`ovs native: OVSDB not read (${e.message}); nothing recorded there`);
    return { view, notes, unread: e.message };
  }
}

/** Step 2: the OVSDB diff against the tc plan just made; undefined when OVSDB is not involved. */
export function finishOvsNative(
  ctx: Ctx,
  req: Req,
  desired: DesiredInterface[],
  p: Plan,
  prep: OvsPrepared,
): OvsNativeStep | undefined {
  p.notes.push(...prep.notes);
  const state = prep.state;
  if (!state) return undefined;
  // Interfaces that are changed whole or not at all, and taps that are not there: nothing for OVS either.
  const failed = new Set(
    p.problems.flatMap((x) => (x.iface && x.code !== "GROUP_ADMISSION" ? [x.iface] : [])),
  );
  const absent = new Set(p.notes.flatMap((n) => (n.code === "DEVICE_ABSENT" && n.iface ? [n.iface] : [])));
  const { wants, notes } = ovsWants(desired, new Set([...failed, ...absent]));
  p.notes.push(...notes);
  const plan = planOvs(wants, state, {
    inScope: inScopeOf(req.scope),
    sweep: req.sweep ?? true,
    tcDevs: new Set(p.ops.map((o) => o.dev)),
    hold: failed,
  });
  // (Refusals were found before planning; planOvs finds the same ones, already reported and held.)
  p.notes.push(...plan.notes);
  // `ovs: tc`: another tool's QoS/policing off the ports the tc batch shapes, in the same waiting transaction as
  // a hand-back, before the tc batch; an interface the plan failed or whose tap is absent keeps its port as is.
  const tcDevs = new Set(p.ops.map((o) => o.dev));
  const takeOvers = (prep.takeOvers ?? []).filter(
    (t) => !failed.has(t.owner) && !absent.has(t.owner) && tcDevs.has(t.port),
  );
  for (const t of takeOvers) p.notes.push(takeOverNote(t));
  const beforeTc = [...takeOvers.flatMap((t) => t.commands), ...plan.beforeTc];

  const db = ovsdbRemote();
  const first = beforeTc.length ? ovsVsctlArgs(beforeTc, { db, wait: true }) : undefined;
  const then = plan.afterTc.length ? ovsVsctlArgs(plan.afterTc, { db }) : undefined;
  return {
    argv: [first, then].filter((a): a is string[] => a !== undefined),
    async applyFirst() {
      if (!first) return;
      ctx.log.debug(`ovs-vsctl ${first.join(" ")}`);
      await runOvsVsctl(ctx.runner, first);
    },
    async apply() {
      if (!then) return first !== undefined;
      ctx.log.debug(`ovs-vsctl ${then.join(" ")}`);
      try {
        await runOvsVsctl(ctx.runner, then);
      } catch (e) {
        if (!(e instanceof OvsdbError)) throw e;
        const failedNow = failAll(
          p,
          plan.wants.filter((w) => plan.changed.has(w.owner)),
          e.message,
        );
        // After the engine logged the plan's problems: these are logged here.
        for (const x of failedNow) ctx.log.error(formatDiagnostic(x));
        return false;
      }
      for (const w of plan.wants) {
        if (!plan.changed.has(w.owner)) continue;
        for (const direction of ["inbound", "outbound"] as const) {
          const limit = w.limits[direction];
          if (!limit) continue;
          const what =
            direction === "inbound"
              ? `QoS ${OVS_QOS_TYPE} max-rate=${w.qos?.maxRateBitsPerSec} bit/s`
              : `ingress_policing_rate=${w.policing?.rateKbitPerSec} kbit/s ingress_policing_burst=${w.policing?.burstKbit}`;
          ctx.log.info(
            `ovs ${direction} limit applied: port=${w.port} guest=${w.label} ${what} rate=${formatRate(limit.rateBitsPerSec)} source=${limit.source}`,
          );
        }
      }
      const removed = [...plan.changed].filter((o) => !plan.wants.some((w) => w.owner === o));
      if (removed.length) ctx.log.info(`ovs: virtqos's QoS/policing removed for ${removed.join(", ")}`);
      return true;
    },
  };
}

/** OVSDB could not be read or changed: every interface concerned is reported, its OVS directions refused. */
function failAll(
  p: Plan,
  wants: { owner: string; port: string; label: string }[],
  message: string,
): Diagnostic[] {
  const failures = new Map<string, { code: string; message: string }>();
  const problems: Diagnostic[] = wants.map((w) => ({
    code: "OVSDB_FAILED",
    level: "error",
    iface: w.owner,
    dev: w.port,
    message: `${w.label}: Open vSwitch not changed: ${message}`,
  }));
  for (const x of problems) failures.set(x.iface ?? "", { code: x.code, message: x.message });
  p.problems.push(...problems);
  refuseOvs(p.records, p.forget, failures);
  return problems;
}

// ------------------------------------------------------------------------------------ status

/**
 * `virtqos status` rows for the directions Open vSwitch enforces: configured (the record) against OVSDB (the
 * tagged QoS row and queue 0, or the Interface's ingress policing), and whether ovs-vswitchd has put it on the
 * device (`htb 1:` root, `ingress` qdisc). Counters: those qdiscs'. Reads OVSDB only if some record needs it.
 */
export async function ovsStatusRows(
  runner: Runner,
  records: readonly StoredRecord[],
  observed: Observed,
): Promise<StatusRow[]> {
  const native = records.flatMap((r) => r.interfaces.filter((i) => i.ovs).map((i) => ({ r, i })));
  if (!native.length) return [];
  let state: OvsState | undefined;
  let failure: string | undefined;
  try {
    state = await readOvsState(runner, ovsdbRemote());
  } catch (e) {
    if (!(e instanceof OvsdbError)) throw e;
    failure = e.message;
  }
  const rows: StatusRow[] = [];
  for (const { r, i } of native) {
    const owner = `${r.domainUuid}/${i.mac}`;
    for (const direction of ["inbound", "outbound"] as const) {
      const limit = i.ovs?.[direction];
      if (!limit) continue;
      const dev = i.dev ?? "";
      const obs = observed.devices.get(dev);
      const check: Check = failure
        ? { code: "OVSDB_FAILED", note: failure }
        : !observed.links.has(dev) || !state
          ? { note: `host device ${i.dev} is gone` }
          : checkOvs(state, owner, dev, direction, limit, obs);
      const qdisc =
        direction === "inbound"
          ? obs?.qdiscs.find((q) => q.parent === "root" && q.handle === OVS_HTB_HANDLE)
          : obs?.qdiscs.find((q) => q.parent === HOOK_PARENT);
      rows.push({
        guest: r.domainName,
        domainUuid: r.domainUuid,
        mac: i.mac,
        dev: i.dev,
        direction,
        enforcedOn: "ovs",
        enforcer: "ovs",
        configured: {
          rateBitsPerSec: limit.rateBitsPerSec,
          ceilBitsPerSec: limit.rateBitsPerSec,
          ...(direction === "inbound" && limit.floorBitsPerSec !== undefined
            ? { floorBitsPerSec: limit.floorBitsPerSec }
            : {}),
          source: limit.source,
          mode: direction === "outbound" ? "police" : "shape",
        },
        kernel: check.kernel,
        bytes: qdisc?.stats?.bytes ?? 0,
        packets: qdisc?.stats?.packets ?? 0,
        drops: qdisc?.stats?.drops ?? 0,
        overlimits: qdisc?.stats?.overlimits ?? 0,
        matches: check.note === undefined,
        ...(check.note !== undefined
          ? { note: check.code ? `${check.code}: ${check.note}` : check.note }
          : {}),
        ...(check.code ? { code: check.code, fix: ERRORS[check.code].fix } : {}),
        generation: r.generation,
        appliedBy: r.appliedBy,
      });
    }
  }
  return rows;
}

/** One OVS row's verdict: what OVSDB says (the KERNEL column), and why it does not match, if it does not. */
interface Check {
  kernel?: { rateBitsPerSec?: number; floorBitsPerSec?: number; police?: boolean };
  note?: string;
  code?: ErrorCode;
}

function checkOvs(
  state: OvsState,
  owner: string,
  dev: string,
  direction: Direction,
  limit: DirectionLimit,
  obs: ObservedDevice | undefined,
): Check {
  const port = state.ports.get(dev);
  const iface = state.interfaces.get(dev);
  if (!port || !iface) return { note: `port ${dev} is not in OVSDB` };
  if (direction === "inbound") {
    const qos = port.qos ? state.qos.get(port.qos) : undefined;
    const queueUuid = qos?.queues["0"];
    const queue = queueUuid ? state.queues.get(queueUuid) : undefined;
    const kernel = queue?.otherConfig["max-rate"]
      ? {
          rateBitsPerSec: Math.min(
            Number(queue.otherConfig["max-rate"]),
            Number(qos?.otherConfig["max-rate"] ?? Number.POSITIVE_INFINITY),
          ),
          ...(queue.otherConfig["min-rate"]
            ? { floorBitsPerSec: Number(queue.otherConfig["min-rate"]) }
            : {}),
        }
      : undefined;
    const want = ovsQosFor(limit);
    if (!qos) return { note: `port ${dev} has no QoS in OVSDB` };
    if (qos.externalIds[OVS_OWNER_KEY] !== owner)
      return { kernel, note: `the QoS of port ${dev} is not virtqos's for this interface` };
    const sameMap = (a: Record<string, string>, b: Record<string, string>) =>
      JSON.stringify(Object.entries(a).sort()) === JSON.stringify(Object.entries(b).sort());
    if (qos.type !== OVS_QOS_TYPE || !sameMap(qos.otherConfig, qosConfig(want)))
      return {
        kernel,
        note: `QoS ${port.qos}: type ${qos.type} other_config ${JSON.stringify(qos.otherConfig)} differs`,
      };
    if (!queue || !sameMap(queue.otherConfig, queueConfig(want.queue)))
      return { kernel, note: `queue 0 of QoS ${port.qos} is missing or differs` };
    const root = obs?.qdiscs.find((q) => q.parent === "root");
    if (root?.kind !== "htb" || root.handle !== OVS_HTB_HANDLE)
      return {
        kernel,
        note: `OVSDB matches, but ${dev}'s root qdisc is ${root ? `${root.kind} ${root.handle}` : "none"}, not ovs-vswitchd's htb ${OVS_HTB_HANDLE} (is ovs-vswitchd running?)`,
      };
    return { kernel };
  }
  const want = ovsPolicingFor(limit);
  const kernel = {
    rateBitsPerSec: iface.policingRateKbitPerSec * OVS_POLICING_RATE_UNIT_BITS_PER_SEC,
    police: true,
  };
  if (iface.externalIds[OVS_OWNER_KEY] !== owner)
    return { kernel, note: `the ingress policing of interface ${dev} is not virtqos's for this interface` };
  if (iface.policingRateKbitPerSec !== want.rateKbitPerSec || iface.policingBurstKbit !== want.burstKbit)
    return {
      kernel,
      note: `ingress_policing_rate=${iface.policingRateKbitPerSec} ingress_policing_burst=${iface.policingBurstKbit}, expected ${want.rateKbitPerSec} and ${want.burstKbit}`,
    };
  if (obs?.qdiscs.find((q) => q.parent === HOOK_PARENT)?.kind !== "ingress")
    return {
      kernel,
      note: `OVSDB matches, but ${dev} has no ingress qdisc from ovs-vswitchd (is it running? does the kernel have the police action?)`,
    };
  return { kernel };
}
