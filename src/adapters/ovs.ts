import { VirtqosError } from "../core/errors.js";
import { emptyOvsState, type OvsMap, type OvsState } from "../core/ovs-native.js";
import type { Runner } from "./exec.js";

// `ovs: native`: what OVSDB holds (`ovs-vsctl --format=json --data=json list ...`, one process for the four
// tables) and changing it (one ovs-vsctl transaction, argument arrays from src/core/ovs-native.ts). ovs-vsctl
// talks to ovsdb-server over its unix socket, whatever network namespace the caller acts in.

export class OvsdbError extends VirtqosError {
  constructor(message: string) {
    super("OVSDB_FAILED", message);
  }
}

/** How long one ovs-vsctl may take (its own `--timeout`), in seconds. */
export const OVS_VSCTL_TIMEOUT_SEC = 10;

/** The columns read, per table; the order of the four `list` commands is the order of their output. */
const LISTS: [table: string, columns: string[]][] = [
  ["Port", ["_uuid", "name", "qos"]],
  ["Interface", ["_uuid", "name", "ingress_policing_rate", "ingress_policing_burst", "external_ids"]],
  ["QoS", ["_uuid", "type", "other_config", "queues", "external_ids"]],
  ["Queue", ["_uuid", "other_config", "external_ids"]],
];

/** The arguments of the read, after the global options. */
export function ovsReadArgs(db?: string): string[] {
  const args = [...(db ? [`--db=${db}`] : []), `--timeout=${OVS_VSCTL_TIMEOUT_SEC}`];
  args.push("--format=json", "--data=json");
  for (const [table, columns] of LISTS) args.push("--", `--columns=${columns.join(",")}`, "list", table);
  return args;
}

/** Read the Port, Interface, QoS and Queue rows. Throws OvsdbError. */
export async function readOvsState(runner: Runner, db?: string): Promise<OvsState> {
  const res = await vsctl(runner, ovsReadArgs(db));
  return parseOvsState(res);
}

/** Run one ovs-vsctl transaction (args from ovsVsctlArgs). Throws OvsdbError. */
export async function runOvsVsctl(runner: Runner, args: string[]): Promise<void> {
  await vsctl(runner, args);
}

async function vsctl(runner: Runner, args: string[]): Promise<string> {
  let res: Awaited<ReturnType<Runner["run"]>>;
  try {
    res = await runner.run("ovs-vsctl", args);
  } catch (e) {
    const code = (e as { code?: string }).code;
    if (code === "COMMAND_MISSING") throw new OvsdbError("ovs-vsctl is not installed or not on PATH");
    // ovs-vsctl's --timeout ends it with SIGALRM: a daemon that does not answer.
    if (code === "COMMAND_KILLED")
      throw new OvsdbError(
        `ovs-vsctl did not finish within ${OVS_VSCTL_TIMEOUT_SEC} s (ovsdb-server or ovs-vswitchd not answering): ${(e as Error).message}`,
      );
    throw e;
  }
  if (res.code !== 0) {
    throw new OvsdbError(`ovs-vsctl ${summary(args)} failed (exit ${res.code}): ${res.stderr.trim()}`);
  }
  return res.stdout;
}

/** The commands of an ovs-vsctl argument list, for messages: `set port vnet0 qos=@vq0 -- ...`. */
function summary(args: string[]): string {
  const at = args.indexOf("--");
  const text = (at < 0 ? args : args.slice(at + 1)).join(" ");
  return text.length > 300 ? `${text.slice(0, 300)}...` : text;
}

// ------------------------------------------------------------------------------------ parsing

type Cell = unknown;

/** `--data=json` atoms: ["uuid", "..."], ["set", [...]], ["map", [[k, v], ...]], plain strings and numbers. */
function uuidOf(c: Cell): string | undefined {
  if (Array.isArray(c) && c[0] === "uuid" && typeof c[1] === "string") return c[1];
  if (Array.isArray(c) && c[0] === "set" && Array.isArray(c[1]) && c[1].length === 1) return uuidOf(c[1][0]);
  return undefined;
}

function mapOf(c: Cell): Record<string, string> {
  const out: Record<string, string> = {};
  if (!Array.isArray(c) || c[0] !== "map" || !Array.isArray(c[1])) return out;
  for (const pair of c[1] as unknown[]) {
    if (!Array.isArray(pair) || pair.length !== 2) continue;
    const key = typeof pair[0] === "number" ? String(pair[0]) : pair[0];
    const value = uuidOf(pair[1]) ?? pair[1];
    if (typeof key === "string" && typeof value === "string") out[key] = value;
  }
  return out;
}

function intOf(c: Cell): number {
  return typeof c === "number" && Number.isFinite(c) ? c : 0;
}

/**
 * ovs-vsctl prints one JSON document per `list`, each on its own line: `{"data":[[...row...]],"headings":[...]}`.
 * Exported for the unit tests.
 */
export function parseOvsState(stdout: string): OvsState {
  const docs = stdout
    .split("\n")
    .map((l) => l.trim())
    .filter(Boolean)
    .map((l) => JSON.parse(l) as { data?: Cell[][]; headings?: string[] });
  if (docs.length !== LISTS.length)
    throw new OvsdbError(`ovs-vsctl printed ${docs.length} tables, expected ${LISTS.length}`);
  const rows = (i: number) => {
    const { data = [], headings = [] } = docs[i];
    return data.map((r) => Object.fromEntries(headings.map((h, j) => [h, r[j]])) as Record<string, Cell>);
  };
  const state = emptyOvsState();
  for (const r of rows(0)) {
    const uuid = uuidOf(r._uuid);
    if (uuid && typeof r.name === "string") state.ports.set(r.name, { uuid, qos: uuidOf(r.qos) });
  }
  for (const r of rows(1)) {
    const uuid = uuidOf(r._uuid);
    if (!uuid || typeof r.name !== "string") continue;
    state.interfaces.set(r.name, {
      uuid,
      policingRateKbitPerSec: intOf(r.ingress_policing_rate),
      policingBurstKbit: intOf(r.ingress_policing_burst),
      externalIds: mapOf(r.external_ids) as OvsMap,
    });
  }
  for (const r of rows(2)) {
    const uuid = uuidOf(r._uuid);
    if (!uuid) continue;
    state.qos.set(uuid, {
      type: typeof r.type === "string" ? r.type : "",
      otherConfig: mapOf(r.other_config),
      queues: mapOf(r.queues),
      externalIds: mapOf(r.external_ids),
    });
  }
  for (const r of rows(3)) {
    const uuid = uuidOf(r._uuid);
    if (uuid)
      state.queues.set(uuid, { otherConfig: mapOf(r.other_config), externalIds: mapOf(r.external_ids) });
  }
  return state;
}
