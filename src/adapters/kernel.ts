import { VirtqosError } from "../core/errors.js";
import type { DomainRecord } from "../core/model.js";
import { parseIfbAlias } from "../core/names.js";
import {
  type DeviceQuery,
  linksFromJson,
  type ObservedDevice,
  type ObservedLink,
  observeBatchLines,
  policeFromText,
  qdiscsFromJson,
  splitObserveOutput,
} from "../core/normalise.js";
import type { Observed } from "../core/plan.js";
import { HOOK_PARENT, ROOT_HANDLE } from "../core/tc/handles.js";
import type { ExecResult, Runner } from "./exec.js";

export class BatchError extends VirtqosError {
  constructor(
    readonly tool: "tc" | "ip",
    readonly lineNumber: number | undefined,
    readonly line: string | undefined,
    /** What the tool printed (the kernel's reason); also the error's structured detail. */
    override readonly detail: string,
  ) {
    super(
      "TC_BATCH_FAILED",
      `${tool} -batch failed${lineNumber ? ` at line ${lineNumber}: ${line}` : ""}: ${detail.trim().split("\n")[0] || "(no message)"}`,
    );
  }
}

/**
 * Read everything plan() needs in three processes whatever the number of devices: links and all qdiscs as
 * JSON, then one `tc -j -batch` for classes and filters of the devices that matter.
 */
export type BaseDump = Promise<[ExecResult, ExecResult]>;

/** The two device-independent dumps. Started early (the hook starts them while it parses its input). */
export function dumpLinksAndQdiscs(runner: Runner, stats = false): BaseDump {
  return Promise.all([
    runner.run("ip", ["-j", "link", "show"]),
    runner.run("tc", stats ? ["-s", "-j", "qdisc", "show"] : ["-j", "qdisc", "show"]),
  ]);
}

export async function observe(
  runner: Runner,
  opts: {
    devs: Iterable<string>;
    records: DomainRecord[];
    everything?: boolean;
    stats?: boolean;
    /** Dumps already under way (taken under the same lock). */
    base?: BaseDump;
    /**
     * Only these domains' devices need their classes and filters read (a scoped reconcile, one domain's
     * status): their taps and IFBs, the taps their IFBs' aliases name (a reused tap may still redirect to
     * one), and the group trees. Other devices are known by their qdiscs only: on a host of 1000 shaped taps
     * this is the difference between reading one domain and reading the whole host on every guest start.
     */
    scopeUuids?: readonly string[];
  },
): Promise<Observed> {
  const detailArgs = [...(opts.stats ? ["-s"] : []), "-d", "-j", "-batch", "-"];
  // When the records say devices of ours exist, their detail query will be needed: start its tc now, so its
  // start-up overlaps the two dumps, and give it its lines once the dumps say which (none: it exits idle).
  let detailLines: (lines: string[]) => void = () => {};
  const early =
    runner.runStaged && opts.records.some((r) => r.interfaces.some((i) => i.dev))
      ? runner.runStaged(
          "tc",
          detailArgs,
          "",
          new Promise<string>((resolve) => {
            detailLines = (lines) => resolve(batchText(lines));
          }),
        )
      : undefined;
  // Whatever happens below, the early tc gets its input and ends (the first call of detailLines wins).
  early?.catch(() => undefined);
  try {
    return await observeWith(runner, opts, detailArgs, early, detailLines);
  } finally {
    detailLines([]);
  }
}

async function observeWith(
  runner: Runner,
  opts: Parameters<typeof observe>[1],
  detailArgs: string[],
  early: Promise<ExecResult> | undefined,
  detailLines: (lines: string[]) => void,
): Promise<Observed> {
  const [linkRes, qdiscRes] = await (opts.base ?? dumpLinksAndQdiscs(runner, opts.stats));
  if (linkRes.code !== 0) throw new Error(`ip link show failed: ${linkRes.stderr.trim()}`);
  if (qdiscRes.code !== 0) throw new Error(`tc qdisc show failed: ${qdiscRes.stderr.trim()}`);
  const links = new Map<string, ObservedLink>(
    linksFromJson(JSON.parse(linkRes.stdout || "[]")).map((l) => [l.name, l]),
  );
  const qdiscs = qdiscsFromJson(JSON.parse(qdiscRes.stdout || "[]"));

  const wanted = new Set<string>(opts.devs);
  const scope = opts.everything || !opts.scopeUuids ? undefined : new Set(opts.scopeUuids);
  for (const l of links.values()) {
    const alias = parseIfbAlias(l.alias);
    if (!alias) continue;
    if (!scope || alias.role === "group" || (alias.domainUuid !== undefined && scope.has(alias.domainUuid))) {
      wanted.add(l.name);
      if (alias.role === "iface" && alias.dev) wanted.add(alias.dev);
    }
  }
  for (const r of opts.records) {
    if (scope && !scope.has(r.domainUuid)) continue;
    for (const i of r.interfaces) if (i.dev) wanted.add(i.dev);
  }
  if (opts.everything) for (const dev of qdiscs.keys()) wanted.add(dev);

  const queries: DeviceQuery[] = [];
  for (const dev of wanted) {
    const qs = qdiscs.get(dev);
    if (!links.has(dev) || !qs) continue;
    const hook = qs.find((q) => q.parent === HOOK_PARENT);
    const ourRoot = qs.some((q) => q.parent === "root" && q.kind === "htb" && q.handle === ROOT_HANDLE);
    // Without virtqos's root or a hook qdisc there is nothing of ours to read: a fresh tap costs no query,
    // which spares a guest start one process.
    if (!ourRoot && !hook && !opts.stats) continue;
    queries.push({ dev, classes: ourRoot, egress: hook?.kind === "clsact", rootFilters: ourRoot });
  }
  const devices = new Map<string, ObservedDevice>();
  if (!queries.length) {
    detailLines([]);
    await early?.catch(() => undefined);
  } else {
    const lines = queries.flatMap(observeBatchLines);
    detailLines(lines);
    const res = early ? await early : await runner.run("tc", detailArgs, batchText(lines));
    if (res.code !== 0) {
      // A device vanished between the dumps (a guest stopped): ask again device by device, skipping the gone.
      for (const q of queries) {
        const one = await runner.run("tc", ["-d", "-j", "-batch", "-"], batchText(observeBatchLines(q)));
        if (one.code !== 0) continue;
        const part = splitObserveOutput(one.stdout, [q]).get(q.dev);
        if (part) devices.set(q.dev, { ...part, qdiscs: qdiscs.get(q.dev) ?? [] });
      }
    } else {
      for (const [dev, part] of splitObserveOutput(res.stdout, queries)) {
        devices.set(dev, { ...part, qdiscs: qdiscs.get(dev) ?? [] });
      }
    }
  }
  await fillPoliceFromText(runner, devices);
  for (const [dev, qs] of qdiscs)
    if (!devices.has(dev)) devices.set(dev, { dev, qdiscs: qs, classes: [], filters: [] });
  return { links, devices, records: opts.records };
}

/** A batch's stdin: one command per line, newline-terminated; nothing for no lines. */
function batchText(lines: string[]): string {
  return lines.length ? `${lines.join("\n")}\n` : "";
}

/** Feed lines to `tc -batch -` or `ip -batch -`. iproute2 stops at the first failing line and says which. */
export async function runBatch(
  runner: Runner,
  tool: "tc" | "ip",
  lines: string[],
  force = false,
): Promise<void> {
  if (!lines.length) return;
  const args = force ? ["-force", "-batch", "-"] : ["-batch", "-"];
  checkBatch(tool, lines, force, await runner.run(tool, args, batchText(lines)));
}

/**
 * `head` now, then `tail` once it resolves, in one process started at once (Runner.runStaged); a rejected
 * `tail` ends the batch after `head`. Without runStaged: one run() after `tail`.
 */
export async function runBatchStaged(
  runner: Runner,
  tool: "tc" | "ip",
  head: string[],
  tail: Promise<string[]>,
): Promise<void> {
  if (!runner.runStaged) {
    const rest = await tail.catch(() => []);
    return runBatch(runner, tool, [...head, ...rest]);
  }
  let lines = head;
  const tailText = tail.then((rest) => {
    lines = [...head, ...rest];
    return batchText(rest);
  });
  const res = await runner.runStaged(tool, ["-batch", "-"], batchText(head), tailText);
  checkBatch(tool, lines, false, res);
}

function checkBatch(tool: "tc" | "ip", lines: string[], force: boolean, res: ExecResult): void {
  if (res.code === 0) return;
  if (force && onlyAlreadyGone(res.stderr, lines)) return;
  const m = /Command failed -:(\d+)/.exec(res.stderr);
  const n = m ? Number(m[1]) : undefined;
  const detail = res.stderr
    .split("\n")
    .filter((l) => l.trim() && !l.startsWith("Command failed"))
    .join("; ");
  throw new BatchError(tool, n, n ? lines[n - 1] : undefined, detail || res.stderr);
}

/**
 * With -force every failing line is reported. Deleting a device that is already gone is success (teardown
 * after a crash, a guest stopped meanwhile): true when every failure is such a delete.
 */
function onlyAlreadyGone(stderr: string, lines: string[]): boolean {
  const failed = [...stderr.matchAll(/Command failed -:(\d+)/g)].map((m) => lines[Number(m[1]) - 1] ?? "");
  return (
    failed.length > 0 &&
    failed.every((l) => /^link del /.test(l)) &&
    stderr
      .split("\n")
      .filter((l) => l.trim() && !l.startsWith("Command failed"))
      .every((l) => /Cannot find device/.test(l))
  );
}

/** Police filters whose JSON lacked rate and burst (iproute2 6.1): read them from the text output instead. */
async function fillPoliceFromText(runner: Runner, devices: Map<string, ObservedDevice>): Promise<void> {
  for (const [dev, d] of devices) {
    for (const hook of ["ingress", "egress"] as const) {
      const blind = d.filters.filter(
        (f) => f.hook === hook && f.police && !Number.isFinite(f.police.rateBitsPerSec),
      );
      if (!blind.length) continue;
      const res = await runner.run("tc", ["filter", "show", "dev", dev, hook]);
      if (res.code !== 0) continue;
      const byPrio = policeFromText(res.stdout);
      for (const f of blind) f.police = byPrio.get(f.prio) ?? f.police;
    }
  }
}
