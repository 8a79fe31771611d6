import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { Runner } from "../adapters/exec.js";
import { observe } from "../adapters/kernel.js";
import { loadRecords } from "../adapters/state.js";
import { ERRORS, isErrorCode } from "../core/errors.js";
import { minorHex } from "../core/group-tree.js";
import {
  type AppliedBy,
  type DesiredInterface,
  type Direction,
  type DomainRecord,
  swapsHooks,
} from "../core/model.js";
import { groupIfbName, IFACE_CLASSID, PRIO_REDIRECT, ROOT_MAJOR } from "../core/names.js";
import { hookFor, plan, recordIfb } from "../core/plan.js";
import type { Policy } from "../core/policy.js";
import type { Capabilities } from "../core/recipe.js";
import { formatRate } from "../core/units.js";
import { ovsStatusRows } from "./ovs-native.js";
import { formatTable } from "./table.js";

// `virtqos status`: what virtqos applied, what the kernel has now, counters, and whether they still match.
// The match is a CHECK in the Kubernetes plugin's sense: re-plan from the records and see if anything is left.

export interface StatusRow {
  guest: string;
  domainUuid: string;
  mac: string;
  dev?: string;
  direction: Direction;
  /** Where the limit is enforced: the tap itself, the IFB carrying guest upload, or the group's IFB. */
  enforcedOn?: string;
  /** Who enforces it: virtqos's tc objects, or Open vSwitch (`ovs: native`; enforcedOn "ovs"). Absent: tc. */
  enforcer?: "tc" | "ovs";
  /** Group path ("host/web") for group members. */
  group?: string;
  /** Group members: rate = their ceiling, floorBitsPerSec = their guarantee. */
  configured: {
    rateBitsPerSec: number;
    ceilBitsPerSec: number;
    floorBitsPerSec?: number;
    source: string;
    mode: string;
  };
  kernel?: { rateBitsPerSec?: number; ceilBitsPerSec?: number; floorBitsPerSec?: number; police?: boolean };
  bytes: number;
  packets: number;
  drops: number;
  overlimits: number;
  matches: boolean;
  note?: string;
  /** Why it does not match, where a code says it (the note starts with it), and the catalogue's fix. */
  code?: string;
  fix?: string;
  /** The domain's state record: its generation (bumped on each change) and who made the last change. */
  generation: number;
  appliedBy?: AppliedBy;
  /**
   * Objects on this row's devices (its tap, or the IFB that carries this direction) that the running agent's
   * drift repair finds contested: another tool keeps changing them back. Absent when none.
   */
  contested?: ContestedRef[];
}

/** A contested object as a status row shows it. */
export interface ContestedRef {
  dev: string;
  object: string;
  since: string;
  drifts: number;
}

// ------------------------------------------------------------------------------------ contested objects

/**
 * `<runDir>/contested.json`: the agent's drift repair writes the objects it finds contested here (atomically,
 * whenever the set or their counts change; removed when none is left and when the agent stops), so that
 * `virtqos status`, another process, can show them. Times are ISO 8601.
 */
export const CONTESTED_FILE = "contested.json";
export const CONTESTED_VERSION = 1;

export interface ContestedEntry {
  /** The device it is on: a guest's tap, an interface's IFB or a group's IFB. */
  dev: string;
  /** What on that device: "root qdisc", "ingress redirect", "ifb", "class", "extra class"... */
  object: string;
  /** The guests whose shaping it is (several for a group's IFB). */
  domains: { name: string; uuid: string }[];
  /** When it became contested. */
  since: string;
  /** When a check last found it changed (by something no OVS event explains). */
  lastDriftAt: string;
  /** Times it was found changed again since it became contested. */
  drifts: number;
  /** How long the agent now waits between repairs of it. */
  backoffMs: number;
  /** When the next repair is due, if one waits. */
  nextRepairAt?: string;
  /** When it stops being contested unless it drifts again (5 min after the last drift): readers drop it after that. */
  until: string;
  /** What the checks said, most recent last. */
  reasons: string[];
}

export interface ContestedFile {
  version: typeof CONTESTED_VERSION;
  /** The agent that wrote it: a file whose writer is gone (killed) says nothing any more. */
  pid: number;
  writtenAt: string;
  objects: ContestedEntry[];
}

export const contestedPath = (runDir: string): string => join(runDir, CONTESTED_FILE);

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    // EPERM: it exists, as someone else.
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

const isString = (v: unknown): v is string => typeof v === "string";
const isCount = (v: unknown): v is number => typeof v === "number" && Number.isInteger(v) && v >= 0;

function validEntry(v: unknown): v is ContestedEntry {
  const e = v as Partial<ContestedEntry> | null;
  return (
    typeof e === "object" &&
    e !== null &&
    isString(e.dev) &&
    isString(e.object) &&
    Array.isArray(e.domains) &&
    e.domains.every((d) => isString(d?.name) && isString(d?.uuid)) &&
    isString(e.since) &&
    isString(e.lastDriftAt) &&
    isCount(e.drifts) &&
    isCount(e.backoffMs) &&
    (e.nextRepairAt === undefined || isString(e.nextRepairAt)) &&
    isString(e.until) &&
    !Number.isNaN(Date.parse(e.until)) &&
    Array.isArray(e.reasons) &&
    e.reasons.every(isString)
  );
}

/**
 * The contested objects the running agent last wrote, still contested at `now`. Nothing to say (no file, no
 * agent, a file whose writer is gone, past its objects' `until`) and a file that cannot be read or parsed (torn,
 * another version's) are all []: status reports the kernel either way, and a broken file must not stop it.
 */
export function readContested(runDir: string, now = Date.now()): ContestedEntry[] {
  let doc: Partial<ContestedFile>;
  try {
    doc = JSON.parse(readFileSync(contestedPath(runDir), "utf8")) as Partial<ContestedFile>;
  } catch {
    return [];
  }
  if (typeof doc !== "object" || doc === null || doc.version !== CONTESTED_VERSION) return [];
  if (!Number.isInteger(doc.pid) || (doc.pid as number) <= 0 || !pidAlive(doc.pid as number)) return [];
  if (!Array.isArray(doc.objects)) return [];
  return doc.objects.filter((e) => validEntry(e) && Date.parse(e.until) > now);
}

/**
 * Marks the rows whose devices carry a contested object: the row's tap (a tap's objects concern both its
 * directions: the root qdisc, the redirect to the IFB) or the IFB that carries the row's direction (an
 * interface's own, or a group's: every member's row in that direction).
 */
export function markContested(rows: StatusRow[], contested: readonly ContestedEntry[]): StatusRow[] {
  if (!contested.length) return rows;
  for (const row of rows) {
    const devs = new Set([row.dev, row.enforcedOn].filter((d): d is string => d !== undefined));
    const hits = contested.filter((c) => devs.has(c.dev));
    if (hits.length) {
      row.contested = hits.map((c) => ({ dev: c.dev, object: c.object, since: c.since, drifts: c.drifts }));
    }
  }
  return rows;
}

/** Whether a row's shaping is held as asked: the kernel matches and no other tool keeps undoing it. */
export const inForce = (r: StatusRow): boolean => r.matches && !r.contested?.length;

export function desiredFromRecords(records: DomainRecord[]): DesiredInterface[] {
  return records.flatMap((r) =>
    r.interfaces.map((i) => ({
      key: `${r.domainUuid}/${i.mac}`,
      domainName: r.domainName,
      domainUuid: r.domainUuid,
      mac: i.mac,
      type: i.type,
      dev: i.dev,
      swapped: swapsHooks(i.type),
      // `ovs: native` (src/core/ovs-native.ts): the directions OVS enforces come back as such, no tc for them.
      ovs: !!i.ovs,
      inbound: i.inbound ?? i.ovs?.inbound,
      outbound: i.outbound ?? i.ovs?.outbound,
      ...(i.ovs ? { ovsNative: (["inbound", "outbound"] as const).filter((d) => i.ovs?.[d]) } : {}),
      notEnforceable: i.notEnforceable,
      group: i.group,
    })),
  );
}

export async function collectStatus(
  runner: Runner,
  runDir: string,
  caps: Capabilities,
  policy: Policy,
  /** Only these domains (the agent's GET of one domain): their devices alone are read in detail. */
  scope?: readonly string[],
): Promise<StatusRow[]> {
  const all = loadRecords(runDir);
  const records = scope ? all.filter((r) => scope.includes(r.domainUuid)) : all;
  const observed = await observe(runner, { devs: [], records: all, stats: true, scopeUuids: scope });
  const desired = desiredFromRecords(records);
  const p = plan(desired, observed, caps, {
    leaf: policy.leaf,
    scope: records.map((r) => r.domainUuid),
    sweep: false,
    groups: policy.groups,
  });
  // Keyed by interface and direction: a deleted root qdisc leaves the other direction (on the IFB) in force.
  // An op or problem that names no direction (a shared hook qdisc) counts against both.
  const drift = new Set<string>(p.ops.flatMap((o) => (o.iface ? [`${o.iface}|${o.direction ?? "*"}`] : [])));
  // Why an interface no longer matches, where the re-plan knows (a foreign filter now runs before ours...).
  const reasons = new Map<string, { note: string; code: string; fix?: string }>();
  const reason = (code: string, message: string) => ({
    note: `${code}: ${message}`,
    code,
    fix: isErrorCode(code) ? ERRORS[code].fix : undefined,
  });
  for (const x of p.problems)
    if (x.iface) reasons.set(`${x.iface}|${x.direction ?? "*"}`, reason(x.code, x.message));
  const inDrift = (key: string, direction: string) =>
    drift.has(`${key}|${direction}`) || drift.has(`${key}|*`);
  const reasonFor = (key: string, direction: string) =>
    reasons.get(`${key}|${direction}`) ?? reasons.get(`${key}|*`);
  const rows: StatusRow[] = [];
  for (const r of records) {
    for (const f of r.refused ?? []) {
      // f.code is what the record says: a code of the virtqos that wrote it.
      const why = reason(f.code, f.message);
      const given = (["inbound", "outbound"] as const).filter((d) => f[d]);
      for (const direction of given.length ? given : (["inbound"] as const)) {
        const limit = f[direction];
        rows.push({
          guest: r.domainName,
          domainUuid: r.domainUuid,
          mac: f.mac,
          dev: f.dev,
          direction,
          configured: {
            rateBitsPerSec: limit?.rateBitsPerSec ?? 0,
            ceilBitsPerSec: limit?.ceilBitsPerSec ?? 0,
            source: limit?.source ?? "-",
            mode: limit?.mode ?? "shape",
          },
          bytes: 0,
          packets: 0,
          drops: 0,
          overlimits: 0,
          matches: false,
          ...why,
          note: `not shaped: ${why.note}`,
          generation: r.generation,
          appliedBy: r.appliedBy,
        });
      }
    }
    for (const i of r.interfaces) {
      const key = `${r.domainUuid}/${i.mac}`;
      const exists = !!(i.dev && observed.links.has(i.dev));
      for (const direction of ["inbound", "outbound"] as const) {
        const member = i.group?.[direction];
        let shown: Pick<StatusRow, "enforcedOn" | "group" | "configured" | "kernel">;
        let counters: { bytes?: number; packets?: number; drops?: number; overlimits?: number } | undefined;
        let present = true;
        if (i.group && member?.minor !== undefined) {
          // A group member: its class in the group's tree, rate = floor, ceil = its ceiling.
          const ifb = groupIfbName(i.group.tree, direction);
          const classid = `${ROOT_MAJOR}:${minorHex(member.minor)}`;
          const cls = observed.devices.get(ifb)?.classes.find((c) => c.classid === classid);
          const path = i.group.path.join("/");
          shown = {
            enforcedOn: ifb,
            group: path,
            configured: {
              rateBitsPerSec: member.ceilBitsPerSec,
              ceilBitsPerSec: member.ceilBitsPerSec,
              floorBitsPerSec: member.floorBitsPerSec,
              source: `group ${path} (${i.group.via})`,
              mode: "shape",
            },
            kernel: cls && {
              rateBitsPerSec: cls.ceilBitsPerSec,
              ceilBitsPerSec: cls.ceilBitsPerSec,
              floorBitsPerSec: cls.rateBitsPerSec,
            },
          };
          counters = cls?.stats;
          present = !!cls;
        } else {
          const limit = i[direction];
          if (!limit) continue;
          const onRoot = hookFor(direction, swapsHooks(i.type)) === "root";
          const police = !onRoot && limit.mode === "police" && direction === "outbound";
          const enforcedOn = onRoot || police ? i.dev : recordIfb(r.domainUuid, i);
          const cls = enforcedOn
            ? observed.devices.get(enforcedOn)?.classes.find((c) => c.classid === IFACE_CLASSID)
            : undefined;
          const filter = police
            ? observed.devices
                .get(i.dev ?? "")
                ?.filters.find((f) => f.prio === PRIO_REDIRECT && f.hook === "ingress")
            : undefined;
          shown = {
            enforcedOn,
            configured: {
              rateBitsPerSec: limit.rateBitsPerSec,
              ceilBitsPerSec: limit.ceilBitsPerSec,
              source: limit.source,
              mode: police ? "police" : "shape",
            },
            kernel: cls
              ? { rateBitsPerSec: cls.rateBitsPerSec, ceilBitsPerSec: cls.ceilBitsPerSec }
              : filter?.police && { rateBitsPerSec: filter.police.rateBitsPerSec, police: true },
          };
          counters = cls?.stats ?? filter?.stats;
        }
        rows.push({
          guest: r.domainName,
          domainUuid: r.domainUuid,
          mac: i.mac,
          dev: i.dev,
          direction,
          ...shown,
          bytes: counters?.bytes ?? 0,
          packets: counters?.packets ?? 0,
          drops: counters?.drops ?? 0,
          overlimits: counters?.overlimits ?? 0,
          matches: exists && present && !inDrift(key, direction) && !reasonFor(key, direction),
          ...(exists ? reasonFor(key, direction) : { note: `host device ${i.dev} is gone` }),
          generation: r.generation,
          appliedBy: r.appliedBy,
        });
      }
    }
  }
  rows.push(...(await ovsStatusRows(runner, records, observed))); // `ovs: native`: checked against OVSDB
  return markContested(rows, readContested(runDir));
}

export function statusTable(rows: StatusRow[]): string {
  if (!rows.length) return "nothing is shaped by virtqos";
  // The CONTESTED column only when the agent reports something contested: the usual table stays as it was.
  const anyContested = rows.some((r) => r.contested?.length);
  const header = [
    "GUEST",
    "MAC",
    "DEV",
    "DIRECTION",
    "CONFIGURED",
    "KERNEL",
    "BYTES",
    "DROPS",
    "OVERLIMITS",
    "MATCH",
    ...(anyContested ? ["CONTESTED"] : []),
  ];
  const contested = (r: StatusRow) =>
    r.contested?.length
      ? `YES: ${r.contested
          .map(
            (c) =>
              `${c.object}${c.dev !== r.dev ? ` on ${c.dev}` : ""} since ${timeOfDay(c.since)}, ${c.drifts} drift${c.drifts === 1 ? "" : "s"}`,
          )
          .join("; ")}`
      : "no";
  const rate = (x: { rateBitsPerSec?: number; floorBitsPerSec?: number } | undefined) =>
    x?.rateBitsPerSec
      ? `${formatRate(x.rateBitsPerSec)}${x.floorBitsPerSec !== undefined ? ` (floor ${formatRate(x.floorBitsPerSec)})` : ""}`
      : "-";
  const table = rows.map((r) => [
    r.guest,
    r.mac,
    r.enforcedOn && r.enforcedOn !== r.dev ? `${r.dev}->${r.enforcedOn}` : (r.dev ?? "-"),
    r.direction,
    `${rate(r.configured)}${r.configured.mode === "police" ? " (police)" : ""}${r.group ? ` group ${r.group}` : ""}`,
    rate(r.kernel),
    String(r.bytes),
    String(r.drops),
    String(r.overlimits),
    r.matches ? "yes" : `NO${r.note ? ` (${r.note})` : ""}`,
    ...(anyContested ? [contested(r)] : []),
  ]);
  return formatTable([header, ...table]);
}

/** "14:03:27" (local time) of an ISO time; the text itself if it is not one. */
function timeOfDay(iso: string): string {
  const t = new Date(iso);
  return Number.isNaN(t.getTime()) ? iso : t.toTimeString().slice(0, 8);
}
