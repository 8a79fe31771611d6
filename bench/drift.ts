// 8. Drift repair (issue 10): how long the agent takes to put back shaping that something else removed, and what
// the agent costs while nothing happens.
//
// Repair time, three causes, each repeated: a `tc qdisc del dev TAP root` in the namespace lab; `ovs-vsctl
// add-port` of another port on the bridge of a policed OVS port (OVS re-creates that port's `ingress` qdisc and
// drops virtqos's redirect); ovs-vswitchd stopped and started again (as `ovs-ctl restart` does; OVS resets every
// port's root qdisc). The agent's pieces run in this process, wired as src/agent/main.ts wires them: a
// LocalService over a MemorySource (no libvirtd) and the Repairer, both reading through a KernelView, fed by
// startDriftWatch (tc/ip monitors, and the OVSDB watch of a PRIVATE ovsdb-server and ovs-vswitchd, never the
// host's). Each repetition gets a fresh set of them (see startRepair).
//
// Timed: from just before the wipe is caused (the command spawned, the signal sent) to the moment the kernel
// matches again for good, and also from the first loss the bench's own `tc monitor` reports. "Matching" is
// judged from tc, not from virtqos: the root HTB 7651:, class 7651:1's rate and ceil, the leaf qdisc, the redirect
// filter (prio and target IFB) on the tap, and the IFB's root and class, as they were after the first apply.
// The moment is the last kernel event on the guest's devices before the tc dump that found them so (see
// followRepair); the Repairer's own onRepair times are in the details. A repetition ends once the kernel has
// matched for `stableMs`: OVS reconfigures ports again a moment later, and a wipe then counts.
//
// Idle cost: 1000 shaped taps (bench/scale.ts's 250 domains x 4), the same pieces with the drift watch's defaults
// (monitors, the 30 s full check), the Metrics registry (with prom-client's process metrics) and the API on a unix socket,
// left alone for 60 s. CPU is this process's (process.cpuUsage), which hosts all of those; the CPU of the child
// processes (the monitors, the full check's ip/tc) is reported beside it. Then GET /metrics over the socket.
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { request } from "node:http";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { processRunner, type Runner } from "../src/adapters/exec.js";
import {
  isVirtqosTcObject,
  type KernelEvent,
  type KernelWatch,
  preciseNow,
  watchKernel,
} from "../src/adapters/kernel-watch.js";
import { createLogger, type Logger } from "../src/adapters/log.js";
import { probeCapabilities } from "../src/adapters/probe.js";
import { listenUnix, socketAuthenticator } from "../src/agent/api/listen.js";
import { buildApi } from "../src/agent/api/server.js";
import { KernelView } from "../src/agent/kernel-view.js";
import { Metrics } from "../src/agent/metrics.js";
import { type DriftWatch, Repairer, type RepairReport, startDriftWatch } from "../src/agent/repair.js";
import { LocalService } from "../src/agent/service.js";
import type { Health } from "../src/agent/types.js";
import { reconcile } from "../src/app/engine.js";
import { collectStatus } from "../src/app/status.js";
import { parseDomainXml } from "../src/core/domain-xml.js";
import { interfaceIfbName } from "../src/core/names.js";
import { emptyPolicy } from "../src/core/policy.js";
import type { Capabilities } from "../src/core/recipe.js";
import { HOOK_PARENT } from "../src/core/tc/handles.js";
import { type BackgroundProcess, run, sleep, spawnBackground } from "../src/lab/exec.js";
import { MemorySource } from "../src/lab/memory-source.js";
import { domainXml, uuidFor } from "../test/helpers/netns.js";
import {
  atMost,
  type BenchOptions,
  type BenchResult,
  createNamespace,
  deleteNamespace,
  errored,
  info,
  median,
  onCleanup,
  round,
  tmpfsRunDir,
} from "./common.js";
import { withLab } from "./lab.js";
import { scaleDomainXml, tapNamespace } from "./scale.js";

const TARGET_P99_MS = 1000;
/** What issue 10 hopes for when the cause is a netlink event the monitors see at once. */
const AIM_NETLINK_MS = 200;
/** libvirt units (kB/s): 10 Mbit/s download, 5 Mbit/s upload; tc prints them as below. */
const INBOUND_KBPS = 1250;
const OUTBOUND_KBPS = 625;
const INBOUND_TC = "10Mbit";
const OUTBOUND_TC = "5Mbit";
const REPETITION_TIMEOUT_MS = 15_000;
/** A dump once the guest's devices have had no kernel event for this long. */
const DUMP_AFTER_QUIET_MS = 30;
/** ... and one every so often whatever the events say. */
const BACKSTOP_DUMP_MS = 500;
const IDLE_DOMAINS = 250;

/** How long ovs-vswitchd takes to finish reconfiguring after ovs-vsctl has returned (two passes seen here). */
const OVS_SETTLE_MS = 1000;
const OVS_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema";
const OVS_BINARIES = ["ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovsdb-client"];

function percentile(xs: number[], p: number): number {
  if (!xs.length) return Number.NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
}

// ------------------------------------------------------------------------------------ the kernel, judged by tc

/** One guest interface whose shaping the bench watches: its tap and IFB, and what tc showed after the apply. */
interface Watched {
  label: string;
  tap: string;
  ifb: string;
  baseline: string;
}

/**
 * What matters of one device's shaping, as tc prints it: virtqos's root HTB, class 7651:1's rate and ceil, the
 * kind of leaf under it, and every redirect on the ingress hook with its priority. Counters and tc's own handles
 * are left out (the kernel picks new ones on a re-create).
 */
function shapeOf(text: string): string {
  let root = false;
  let cls = "none";
  let leaf = "none";
  let pref = "?";
  const redirects: string[] = [];
  for (const line of text.split("\n")) {
    if (/^qdisc htb 7651: root\b/.test(line)) root = true;
    const l = /^qdisc (\S+) \S+ parent 7651:1\b/.exec(line);
    if (l) leaf = l[1];
    if (/^class htb 7651:1 /.test(line)) {
      const r = /\brate (\S+) ceil (\S+)/.exec(line);
      cls = r ? `${r[1]}/${r[2]}` : "?";
    }
    const f = /^filter .*\bpref (\d+)\b/.exec(line);
    if (f) pref = f[1];
    const m = /mirred \(Egress Redirect to device (\S+)\)/.exec(line);
    if (m) redirects.push(`${pref}>${m[1]}`);
  }
  return `root=${root} class=${cls} leaf=${leaf} redirect=${redirects.join(",") || "none"}`;
}

/** One `tc -batch` per device (their text does not say which device a class line belongs to). */
async function shapeNow(ns: string, g: Omit<Watched, "baseline">): Promise<string> {
  const dump = (dev: string, filters: boolean) =>
    run("tc", ["-n", ns, "-batch", "-"], {
      // A hook qdisc that is gone fails the filter line; the lines before it have printed by then.
      allowFail: true,
      timeoutMs: 10_000,
      input: `qdisc show dev ${dev}\nclass show dev ${dev}\n${filters ? `filter show dev ${dev} ingress\n` : ""}`,
    });
  const [tap, ifb] = await Promise.all([dump(g.tap, true), dump(g.ifb, false)]);
  return `${g.tap}: ${shapeOf(tap.stdout)} | ${g.ifb}: ${shapeOf(ifb.stdout)}`;
}

/** The baseline after the first apply, checked against the configured rates before anything is timed. */
async function watched(ns: string, label: string, tap: string, ifb: string): Promise<Watched> {
  const baseline = await shapeNow(ns, { label, tap, ifb });
  const want = [
    `${tap}: root=true class=${INBOUND_TC}/${INBOUND_TC} `,
    `redirect=64000>${ifb} | ${ifb}: root=true class=${OUTBOUND_TC}/${OUTBOUND_TC} `,
  ];
  if (!want.every((w) => baseline.includes(w)) || baseline.includes("leaf=none"))
    throw new Error(`${label}: not shaped as configured after the first apply: ${baseline}`);
  return { label, tap, ifb, baseline };
}

/** The bench's own ears: a kernel watch whose events start dumps (independent of the agent's watch). */
class KernelEars {
  private listener: ((e: KernelEvent) => void) | undefined;
  private constructor(readonly watch: KernelWatch) {}

  static async open(ns: string): Promise<KernelEars> {
    let ears: KernelEars | undefined;
    const watch = watchKernel({ netns: ns, onEvent: (e) => ears?.listener?.(e) });
    ears = new KernelEars(watch);
    await watch.ready;
    return ears;
  }

  listen(fn: ((e: KernelEvent) => void) | undefined): void {
    this.listener = fn;
  }

  close(): Promise<void> {
    this.listener = undefined;
    return this.watch.close();
  }
}

/** A deletion of something shaping depends on (not an echo such as the default qdisc a replace displaces). */
const isLoss = (e: KernelEvent): boolean =>
  e.kind === "link-deleted" ||
  (e.kind.endsWith("-deleted") && (isVirtqosTcObject(e) || e.parent === HOOK_PARENT));

interface Repetition {
  /** When the cause was started (preciseNow clock, like the Repairer's reports). */
  startedAt: number;
  /** From the cause to the kernel matching again (every guest), ms. */
  fromCauseMs: number;
  /** From the first loss the bench's tc monitor saw to the kernel matching again, ms. */
  fromWipeMs: number;
  /** Per guest, from the cause. */
  perGuestMs: Record<string, number>;
  /** Times the kernel went from matching to not matching during the repetition (1 = one wipe). */
  wipes: number;
  dumps: number;
  /** Dumps that did not finish (tc timed out), left out. */
  failedDumps: number;
  /** Returns to matching with no kernel event to date them (timed by the dump instead). */
  eventsMissed: number;
  /** How long after the change the dump that confirmed it started: how late the bench knew. */
  confirmLagMs: number;
}

interface GuestState {
  matching: boolean;
  wipedAt?: number;
  /** The last evidence that it did not match: a loss event, or the start of a dump that found it different. */
  mismatchAt?: number;
  matchedAt?: number;
  /** Read times of the kernel events about the guest's devices since the cause. */
  events: number[];
}

/**
 * Cause a wipe and follow the kernel until every guest matches again and has for `stableMs`.
 *
 * The kernel is dumped (tc) once its events about a guest's devices have paused for DUMP_AFTER_QUIET_MS, plus
 * a backstop now and then: a dump per event would spawn processes in the middle of the repair it measures (a
 * spawn blocks this process's event loop, the agent's too, for several ms). A guest counts as wiped from the
 * first loss its events report (or the first dump that differs from the baseline), and as matching again from
 * the last kernel event before the dump that found it back as it was: nothing changed between that event and
 * the dump, so the kernel has matched since.
 */
async function followRepair(
  ns: string,
  ears: KernelEars,
  guests: Watched[],
  cause: () => Promise<unknown>,
  stableMs: number,
): Promise<Repetition> {
  const st = new Map<string, GuestState>(guests.map((g) => [g.label, { matching: true, events: [] }]));
  const devs = new Map<string, string>();
  for (const g of guests) {
    devs.set(g.tap, g.label);
    devs.set(g.ifb, g.label);
  }
  let wipes = 0;
  let lastChange = 0;
  let running: Promise<void> | undefined;
  let dirty = false;
  let dumps = 0;
  let eventsMissed = 0;
  let failedDumps = 0;
  /** The start of the last dump that found every guest matching. */
  let cleanSince = 0;
  let timer: NodeJS.Timeout | undefined;
  const lags: number[] = [];
  const lost = (s: GuestState, at: number) => {
    s.mismatchAt = Math.max(s.mismatchAt ?? at, at);
    if (!s.matching) return;
    s.matching = false;
    s.wipedAt ??= at;
    s.matchedAt = undefined;
    wipes++;
    lastChange = preciseNow();
  };
  const t0 = preciseNow();
  const dumpAll = async (): Promise<void> => {
    const started = preciseNow();
    let shapes: string[];
    try {
      shapes = await Promise.all(guests.map((g) => shapeNow(ns, g)));
    } catch {
      // A dump that did not finish says nothing about the kernel; the next one will.
      failedDumps++;
      return;
    }
    dumps++;
    guests.forEach((g, i) => {
      const s = st.get(g.label)!;
      if (shapes[i] !== g.baseline) lost(s, started);
      else if (!s.matching) {
        // The change back happened after the last sign of a mismatch and before this dump: the last event in
        // between is that change. None there (the monitor lost them): this dump's start, an upper bound.
        const between = s.events.filter((at) => at > (s.mismatchAt ?? t0) && at <= started);
        if (!between.length) eventsMissed++;
        s.matching = true;
        s.matchedAt = between.length ? Math.max(...between) : started;
        lags.push(started - s.matchedAt);
        lastChange = preciseNow();
      }
    });
    if ([...st.values()].every((s) => s.matching)) cleanSince = started;
  };
  const dump = (): void => {
    if (timer) clearTimeout(timer);
    timer = undefined;
    if (running) {
      dirty = true;
      return;
    }
    running = dumpAll().finally(() => {
      running = undefined;
      if (dirty) {
        dirty = false;
        dump();
      }
    });
  };
  ears.listen((e) => {
    const label = devs.get(e.dev);
    if (!label || e.at < t0) return;
    const s = st.get(label)!;
    s.events.push(e.at);
    if (isLoss(e)) lost(s, e.at);
    if (timer) clearTimeout(timer);
    timer = setTimeout(dump, DUMP_AFTER_QUIET_MS);
  });
  try {
    await cause();
    let lastDump = preciseNow();
    for (;;) {
      const now = preciseNow();
      if (now - t0 > REPETITION_TIMEOUT_MS) {
        const states = guests.map((g) => `${g.label} ${JSON.stringify(st.get(g.label))}`).join("; ");
        throw new Error(`not repaired within ${REPETITION_TIMEOUT_MS} ms: ${states}`);
      }
      const all = [...st.values()];
      // A guest the cause did not touch needs nothing; one it did must be back. Something must have been hit.
      const repaired =
        all.some((s) => s.wipedAt !== undefined) &&
        all.every((s) => s.matching && (s.wipedAt === undefined || s.matchedAt !== undefined));
      // Stable: a dump begun stableMs after the last change found everything matching, and no event since
      // waits for its dump. (Not "no dump running": on a loaded host dumps may follow each other without pause;
      // one still running when this holds is waited for, and what it finds counts.)
      if (repaired && !timer && cleanSince - lastChange >= stableMs) {
        await running;
        if (!timer && cleanSince - lastChange >= stableMs && [...st.values()].every((s) => s.matching)) break;
        continue;
      }
      if (!running && now - lastDump >= (repaired ? stableMs / 2 : BACKSTOP_DUMP_MS)) {
        lastDump = now;
        dump();
      }
      await sleep(10);
    }
  } finally {
    ears.listen(undefined);
    if (timer) clearTimeout(timer);
    await running;
  }
  const hit = [...st.values()].filter((s) => s.wipedAt !== undefined);
  const end = Math.max(...hit.map((s) => s.matchedAt!));
  const firstWipe = Math.min(...hit.map((s) => s.wipedAt!));
  return {
    startedAt: t0,
    fromCauseMs: end - t0,
    fromWipeMs: end - firstWipe,
    perGuestMs: Object.fromEntries(
      guests.map((g) => [g.label, (st.get(g.label)!.matchedAt ?? Number.NaN) - t0]),
    ),
    wipes,
    dumps,
    failedDumps,
    eventsMissed,
    confirmLagMs: Math.max(...lags),
  };
}

// ------------------------------------------------------------------------------------ the agent's pieces

interface Captured {
  log: Logger;
  warnings: string[];
  errors: string[];
}

function captureLog(): Captured {
  const warnings: string[] = [];
  const errors: string[] = [];
  return {
    warnings,
    errors,
    log: {
      debug: () => {},
      info: () => {},
      warning: (m) => {
        warnings.push(m);
      },
      error: (m) => {
        errors.push(m);
      },
      setLevel: () => {},
      close: async () => {},
    },
  };
}

interface AgentSetup {
  source: MemorySource;
  runner: Runner;
  runDir: string;
  stateDir: string;
  caps: Capabilities;
  netns: string;
  ovsdb: string | false;
}

/** A service without the agent's kernel view: for setting things up and putting them back, never timed. */
function plainService(a: AgentSetup, log: Logger): LocalService {
  return new LocalService({
    source: a.source,
    runner: a.runner,
    runDir: a.runDir,
    stateDir: a.stateDir,
    log,
    policy: async () => emptyPolicy(),
    caps: a.caps,
  });
}

/**
 * The agent's drift repair wired as src/agent/main.ts wires it: a KernelView that the service's re-applies and
 * the repairer's checks read through, kept honest by the drift watch (its cache on once the monitors listen).
 * Fresh for each repetition: the repetitions are independent drifts, which a long-lived repairer would take for
 * a fight (a relapse within 60 s) and back off from after the second, and a view left without its watch
 * between repetitions would cache what it was not told about.
 */
async function startRepair(a: AgentSetup, cap: Captured, reports: RepairReport[]) {
  const view = new KernelView({ runner: a.runner, netns: a.netns });
  const service = new LocalService({
    source: a.source,
    runner: a.runner,
    runDir: a.runDir,
    stateDir: a.stateDir,
    log: cap.log,
    policy: async () => emptyPolicy(),
    caps: a.caps,
    kernelView: view,
  });
  const repairer = new Repairer({
    service,
    runner: a.runner,
    runDir: a.runDir,
    stateDir: a.stateDir,
    policy: async () => emptyPolicy(),
    caps: a.caps,
    log: cap.log,
    observer: view,
    onRepair: (r) => reports.push(r),
  });
  const drift: DriftWatch = startDriftWatch({
    repairer,
    log: cap.log,
    netns: a.netns,
    ovsdb: a.ovsdb,
    kernelListener: view,
  });
  const close = async () => {
    await drift.close();
    await service.queue.idle();
    view.close();
  };
  try {
    await drift.kernel.ready;
    view.enableCache();
    await drift.ready;
    if (a.ovsdb !== false) {
      if (!drift.ovs) throw new Error(`the drift watch does not follow ${a.ovsdb}`);
      await drift.ovs.ready;
    }
  } catch (e) {
    await close();
    throw e;
  }
  if (repairer.stats.repairs) throw new Error("the drift watch's first check found drift before the wipe");
  return { repairer, close };
}

interface CaseRun {
  reps: Repetition[];
  /** Repairs the Repairer reported, per repetition. */
  repairs: number[];
  /** From the cause to the Repairer's first trigger, and to the end of its last repair (its onRepair reports). */
  reportedFirstMs: number[];
  reportedDoneMs: number[];
  reports: RepairReport[];
  warnings: string[];
  errors: string[];
  /** The host's 1-minute load average before and after: the machine is shared. */
  load: number[];
}

/** `n` timed repetitions after one warm-up (a running agent has long compiled its code paths). */
async function repeat(
  opts: BenchOptions,
  label: string,
  n: number,
  a: AgentSetup,
  ears: KernelEars,
  guests: Watched[],
  step: {
    cause: () => Promise<unknown>;
    stableMs: number;
    /** After the repetition, with no repairer running: put things back for the next one. */
    after?: () => Promise<void>;
  },
): Promise<CaseRun> {
  const out: CaseRun = {
    reps: [],
    repairs: [],
    reportedFirstMs: [],
    reportedDoneMs: [],
    reports: [],
    warnings: [],
    errors: [],
    load: [round(loadavg()[0], 2)],
  };
  for (let i = -1; i < n; i++) {
    for (const g of guests) {
      const now = await shapeNow(a.netns, g);
      if (now !== g.baseline)
        throw new Error(`${label} ${i}: ${g.label} not as before the repetition: ${now}`);
    }
    const cap = captureLog();
    const reports: RepairReport[] = [];
    const { repairer, close } = await startRepair(a, cap, reports);
    let rep: Repetition;
    try {
      rep = await followRepair(a.netns, ears, guests, step.cause, step.stableMs);
      await repairer.idle();
    } finally {
      await close();
    }
    await step.after?.();
    if (i < 0) continue;
    out.reps.push(rep);
    out.repairs.push(reports.length);
    if (reports.length) {
      out.reportedFirstMs.push(Math.min(...reports.map((r) => r.firstAt)) - rep.startedAt);
      out.reportedDoneMs.push(Math.max(...reports.map((r) => r.doneAt)) - rep.startedAt);
    }
    out.reports.push(...reports);
    out.warnings.push(...cap.warnings);
    out.errors.push(...cap.errors);
    if ((i + 1) % 10 === 0 || i === n - 1)
      opts.log(
        `  ${label}: ${i + 1}/${n}, last ${rep.fromCauseMs.toFixed(0)} ms (from the wipe ${rep.fromWipeMs.toFixed(0)} ms), load ${loadavg()[0].toFixed(1)}`,
      );
  }
  out.load.push(round(loadavg()[0], 2));
  return out;
}

/** p50 (info) and p99 (target) rows of one cause, from the cause; the rest in the details. */
function repairRows(key: string, metric: string, c: CaseRun, extra: Record<string, unknown>): BenchResult[] {
  const from = c.reps.map((r) => r.fromCauseMs);
  const wipe = c.reps.map((r) => r.fromWipeMs);
  const count = <T>(xs: T[]) => {
    const m: Record<string, number> = {};
    for (const x of xs) m[String(x)] = (m[String(x)] ?? 0) + 1;
    return m;
  };
  const details = {
    repetitions: c.reps.length,
    method:
      "from just before the cause (spawn/signal) to the last kernel event on the guest's devices before a tc dump showed root HTB, class rate/ceil, leaf, redirect and IFB tree as after the first apply (and they stayed so for stableMs)",
    p90Ms: round(percentile(from, 90), 1),
    maxMs: round(Math.max(...from), 1),
    fromWipeP50Ms: round(percentile(wipe, 50), 1),
    fromWipeP99Ms: round(percentile(wipe, 99), 1),
    /** Matching-to-not transitions, summed over the repetition's guests: more than one per guest is a re-wipe. */
    wipesPerRepetition: count(c.reps.map((r) => r.wipes)),
    repairsPerRepetition: count(c.repairs),
    repairsReported: c.reports.length,
    onRepairDoneP50Ms: round(percentile(c.reportedDoneMs, 50), 1),
    onRepairDoneP99Ms: round(percentile(c.reportedDoneMs, 99), 1),
    onRepairFirstTriggerP50Ms: round(percentile(c.reportedFirstMs, 50), 1),
    repairCauses: count(c.reports.map((r) => r.cause)),
    repairsFailed: c.reports.filter((r) => !r.ok).length,
    dumpsPerRepetitionMedian: median(c.reps.map((r) => r.dumps)),
    matchesTimedByDumpNotEvent: c.reps.reduce((n, r) => n + r.eventsMissed, 0),
    dumpsFailed: c.reps.reduce((n, r) => n + r.failedDumps, 0),
    loadAverage1m: c.load,
    confirmLagMsMedian: round(median(c.reps.map((r) => r.confirmLagMs)), 1),
    warningsSample: [...new Set(c.warnings.map((w) => w.replace(/dev=\S+/, "dev=?")))].slice(0, 3),
    errors: c.errors.slice(0, 5),
    ...extra,
  };
  return [
    info(`${key}_p50`, metric, round(percentile(from, 50), 1), "ms", {
      ...details,
      p99Ms: round(percentile(from, 99), 1),
    }),
    atMost(`${key}_p99`, metric, round(percentile(from, 99), 1), "ms", TARGET_P99_MS, details),
  ];
}

// ------------------------------------------------------------------------------------ cause 1: tc qdisc del

async function tcQdiscDel(opts: BenchOptions, n: number): Promise<BenchResult[]> {
  return withLab(async (lab, h) => {
    const stateDir = mkdtempSync(join(tmpdir(), "vqbench-drift-state-"));
    let ears: KernelEars | undefined;
    const cleanup = async () => {
      await ears?.close();
      ears = undefined;
      rmSync(stateDir, { recursive: true, force: true });
    };
    const unregister = onCleanup(cleanup);
    try {
      const g = lab.guests[0];
      const uuid = uuidFor("drift-tc");
      const source = new MemorySource();
      source.add(
        "drift-tc",
        uuid,
        domainXml("drift-tc", uuid, [
          {
            guest: g,
            bridge: lab.bridge,
            inbound: { average: INBOUND_KBPS },
            outbound: { average: OUTBOUND_KBPS },
          },
        ]),
      );
      const setup: AgentSetup = {
        source,
        runner: h.runner,
        runDir: h.runDir,
        stateDir,
        caps: h.caps,
        netns: lab.hostNs,
        ovsdb: false,
      };
      await plainService(setup, captureLog().log).reapply(uuid);
      const guest = await watched(lab.hostNs, "tap", g.tap, interfaceIfbName(uuid, g.mac));
      ears = await KernelEars.open(lab.hostNs);
      const c = await repeat(opts, "tc qdisc del", n, setup, ears, [guest], {
        cause: () => run("tc", ["-n", lab.hostNs, "qdisc", "del", "dev", g.tap, "root"]),
        stableMs: 300,
      });
      const rows = repairRows("drift.repair_tc_qdisc_del", "tc qdisc del of the root to kernel matching", c, {
        aimMs: AIM_NETLINK_MS,
        aimMetAtP99:
          percentile(
            c.reps.map((r) => r.fromCauseMs),
            99,
          ) <= AIM_NETLINK_MS,
        where: "namespace lab (bench/lab.ts), the guest's tap on a Linux bridge",
      });
      return rows;
    } finally {
      unregister();
      await cleanup();
    }
  });
}

// ------------------------------------------------------------------------------------ causes 2 and 3: OVS

async function ovsMissing(): Promise<string | undefined> {
  for (const b of OVS_BINARIES) {
    const r = await run(b, ["--version"], { allowFail: true }).catch(() => undefined);
    if (!r || r.code !== 0) return `${b} not available (openvswitch-switch not installed)`;
  }
  if (!existsSync(OVS_SCHEMA)) return `${OVS_SCHEMA} missing`;
  return undefined;
}

/** A private Open vSwitch: its own database, sockets, pidfiles and logs in `dir`, ovs-vswitchd inside `ns`. */
class PrivateOvs {
  server: BackgroundProcess | undefined;
  vswitchd: BackgroundProcess | undefined;
  readonly db: string;

  constructor(
    readonly dir: string,
    readonly ns: string,
  ) {
    this.db = `unix:${join(dir, "db.sock")}`;
  }

  private env(): string[] {
    const d = this.dir;
    return [`OVS_RUNDIR=${d}`, `OVS_LOGDIR=${d}`, `OVS_DBDIR=${d}`, `OVS_SYSCONFDIR=${d}`];
  }

  /** ovs-vsctl on this OVS only: never without --db, so the host's Open vSwitch is out of reach. */
  vsctl(...args: string[]) {
    return run("ovs-vsctl", [`--db=${this.db}`, "--timeout=10", ...args]);
  }

  async start(): Promise<void> {
    const d = this.dir;
    await run("ovsdb-tool", ["create", join(d, "conf.db"), OVS_SCHEMA]);
    this.server = spawnBackground("env", [
      ...this.env(),
      "ovsdb-server",
      join(d, "conf.db"),
      `--remote=punix:${join(d, "db.sock")}`,
      `--unixctl=${join(d, "ovsdb-server.ctl")}`,
      `--pidfile=${join(d, "ovsdb-server.pid")}`,
      `--log-file=${join(d, "ovsdb-server.log")}`,
      "-vconsole:off",
      "--no-chdir",
    ]);
    const deadline = Date.now() + 10_000;
    while (
      (await run("ovs-vsctl", [`--db=${this.db}`, "--timeout=1", "--no-wait", "show"], { allowFail: true }))
        .code
    ) {
      if (this.server.exited) throw new Error(`ovsdb-server exited: ${(await this.server.done).stderr}`);
      if (Date.now() > deadline) throw new Error("ovsdb-server did not answer within 10 s");
      await sleep(20);
    }
    await this.vsctl("--no-wait", "init");
    this.startVswitchd();
  }

  startVswitchd(): void {
    const d = this.dir;
    this.vswitchd = spawnBackground(
      "env",
      [
        ...this.env(),
        "ovs-vswitchd",
        this.db,
        `--unixctl=${join(d, "ovs-vswitchd.ctl")}`,
        `--pidfile=${join(d, "ovs-vswitchd.pid")}`,
        `--log-file=${join(d, "ovs-vswitchd.log")}`,
        // Its console lines would pile up in this process's memory across 50 restarts; the log file has them.
        "-vconsole:off",
        "--no-chdir",
      ],
      { netns: this.ns },
    );
  }

  /** What `ovs-ctl restart` does to ovs-vswitchd: stop it (SIGTERM), then start it again. */
  async restartVswitchd(): Promise<void> {
    await this.vswitchd?.stop(3000);
    this.startVswitchd();
  }

  async stop(): Promise<void> {
    await this.vswitchd?.stop(3000);
    await this.server?.stop(3000);
  }

  tail(file: string): string {
    try {
      return readFileSync(join(this.dir, file), "utf8").split("\n").slice(-8).join("\n");
    } catch {
      return "";
    }
  }
}

/** An OVS port's domain as libvirt would give it: virtualport openvswitch, limits in <bandwidth>. */
function ovsDomainXml(
  name: string,
  uuid: string,
  tap: string,
  mac: string,
  bridge: string,
  id: number,
): string {
  return (
    `<domain type='kvm' id='${id}'>\n  <name>${name}</name>\n  <uuid>${uuid}</uuid>\n  <devices>\n` +
    `    <interface type='bridge'><mac address='${mac}'/><source bridge='${bridge}'/>` +
    `<virtualport type='openvswitch'/><target dev='${tap}'/>` +
    `<bandwidth><inbound average='${INBOUND_KBPS}'/><outbound average='${OUTBOUND_KBPS}'/></bandwidth>` +
    `<model type='virtio'/></interface>\n  </devices>\n</domain>\n`
  );
}

async function ovsCases(opts: BenchOptions, n: number): Promise<BenchResult[]> {
  const names = ["drift.repair_ovs_add_port", "drift.repair_ovs_restart"];
  const missing = await ovsMissing();
  if (missing) {
    opts.log(`  OVS cases skipped: ${missing}`);
    return names.map((k) => errored(`${k}_p99`, new Error(`skipped: ${missing}`)));
  }
  const dir = mkdtempSync(join(tmpdir(), "vqbench-ovs-"));
  const stateDir = tmpfsRunDir("vqbench-drift-ovs-state-");
  const runDir = tmpfsRunDir("vqbench-drift-ovs-run-");
  let ns: string | undefined;
  let ovs: PrivateOvs | undefined;
  let ears: KernelEars | undefined;
  const cleanup = async () => {
    await ears?.close();
    ears = undefined;
    await ovs?.stop().catch(() => {});
    if (ns) await deleteNamespace(ns).catch(() => {});
    ns = undefined;
    for (const d of [dir, stateDir.dir, runDir.dir]) rmSync(d, { recursive: true, force: true });
  };
  const unregister = onCleanup(cleanup);
  try {
    ns = await createNamespace("ovs");
    const netns = ns;
    ovs = new PrivateOvs(dir, netns);
    const o = ovs;
    await o.start();
    const bridge = "vqdbr0";
    await o.vsctl("add-br", bridge, "--", "set", "bridge", bridge, "datapath_type=netdev");
    const ip = (...args: string[]) => run("ip", ["-n", netns, ...args]);
    for (const t of ["vqoa", "vqob", "vqox"]) {
      await ip("link", "add", t, "type", "veth", "peer", "name", `${t}-p`);
      await ip("link", "set", t, "up");
      await ip("link", "set", `${t}-p`, "up");
    }
    // Guest A: libvirt gives an OVS port's <outbound> to OVS too, as ingress policing; OVS then owns the
    // tap's `ingress` qdisc (created before the hook runs, shared by virtqos) and re-creates it whenever it
    // reconfigures the port. Guest B: limits from virtqos alone.
    await o.vsctl(
      "add-port",
      bridge,
      "vqoa",
      "--",
      "set",
      "interface",
      "vqoa",
      `ingress_policing_rate=${OUTBOUND_KBPS * 8}`,
    );
    await o.vsctl("add-port", bridge, "vqob");
    // ovs-vsctl returns after ovs-vswitchd's first reconfiguration; another follows a few hundred ms later
    // (it re-creates A's ingress qdisc again), which would take the redirect of an apply made before it.
    await sleep(OVS_SETTLE_MS);
    const runner = processRunner({ netns });
    const caps = await probeCapabilities(runner);
    const doms = [
      { name: "drift-ovs-a", tap: "vqoa", mac: "52:54:00:d1:00:0a" },
      { name: "drift-ovs-b", tap: "vqob", mac: "52:54:00:d1:00:0b" },
    ].map((d, i) => ({ ...d, uuid: uuidFor(d.name), id: i + 1 }));
    const source = new MemorySource();
    for (const d of doms)
      source.add(d.name, d.uuid, ovsDomainXml(d.name, d.uuid, d.tap, d.mac, bridge, d.id));
    const setup: AgentSetup = {
      source,
      runner,
      runDir: runDir.dir,
      stateDir: stateDir.dir,
      caps,
      netns,
      ovsdb: o.db,
    };
    const service = plainService(setup, captureLog().log);
    // On this kernel OVS's policing of A fails (no police action) and ovs-vswitchd retries it, re-creating A's
    // ingress qdisc, at each of its reconfigurations, including the one that virtqos's own first apply to the
    // port (a new root qdisc, a new IFB) sets off ~100 ms later. Applied again until OVS leaves it alone.
    const settle = async (what: string, expected?: Watched[]): Promise<Watched[]> => {
      for (let attempt = 0; attempt < 5; attempt++) {
        for (const d of doms) await service.reapply(d.uuid);
        await sleep(OVS_SETTLE_MS);
        const now = await Promise.all(
          doms.map((d, i) =>
            expected
              ? shapeNow(netns, expected[i]).then((x) =>
                  x === expected[i].baseline ? expected[i] : undefined,
                )
              : watched(netns, d.name, d.tap, interfaceIfbName(d.uuid, d.mac)).catch(() => undefined),
          ),
        );
        if (now.every((w) => w !== undefined)) return now as Watched[];
      }
      throw new Error(`${what}: OVS keeps changing the ports' tc state; not settled after 5 applies`);
    };
    const [a, b] = await settle("the first apply");
    const rows = await collectStatus(runner, runDir.dir, caps, emptyPolicy());
    if (!rows.length || !rows.every((r) => r.matches))
      throw new Error(`virtqos status does not match after the first apply: ${JSON.stringify(rows)}`);
    ears = await KernelEars.open(netns);
    const out: BenchResult[] = [];
    const where = `private OVS ${await ovsVersion()} (userspace datapath), ovs-vswitchd in its own namespace`;

    try {
      const c = await repeat(opts, "ovs add-port", n, setup, ears, [a], {
        cause: () => o.vsctl("add-port", bridge, "vqox"),
        // OVS reconfigures every port more than once after an add-port; a wipe later than this would show.
        stableMs: 1500,
        after: async () => {
          await o.vsctl("del-port", "vqox");
          // Removing the port reconfigures A too (its redirect goes again): put it back outside the timing.
          await sleep(OVS_SETTLE_MS);
          await settle("after del-port", [a, b]);
        },
      });
      out.push(
        ...repairRows(
          "drift.repair_ovs_add_port",
          "ovs-vsctl add-port of another port to kernel matching",
          c,
          {
            where,
            guest:
              "OVS port with ingress_policing_rate (as libvirt sets for <bandwidth><outbound>); the other port added is a veth",
          },
        ),
      );
    } catch (e) {
      opts.log(`  ovs add-port failed: ${(e as Error).message}\n${o.tail("ovs-vswitchd.log")}`);
      out.push(errored("drift.repair_ovs_add_port_p99", e));
    }

    try {
      const c = await repeat(opts, "ovs restart", n, setup, ears, [a, b], {
        cause: () => o.restartVswitchd(),
        stableMs: 1500,
      });
      const wipe = c.reps.map((r) => r.fromWipeMs);
      out.push(
        ...repairRows(
          "drift.repair_ovs_restart",
          "ovs-vswitchd SIGTERM + start to kernel matching (both guests)",
          c,
          {
            where,
            guests:
              "A (policed: OVS resets its root qdisc and re-creates its ingress qdisc) and B (root qdisc reset)",
            perGuestP50Ms: Object.fromEntries(
              [a, b].map((g) => [
                g.label,
                round(percentile(c.reps.map((r) => r.perGuestMs[g.label]).filter(Number.isFinite), 50), 1),
              ]),
            ),
          },
        ),
        info(
          "drift.repair_ovs_restart_from_wipe_p50",
          "OVS's first deletion (tc monitor) to kernel matching (both guests)",
          round(percentile(wipe, 50), 1),
          "ms",
          { repetitions: wipe.length },
        ),
        info(
          "drift.repair_ovs_restart_from_wipe_p99",
          "OVS's first deletion (tc monitor) to kernel matching (both guests)",
          round(percentile(wipe, 99), 1),
          "ms",
          { repetitions: wipe.length, maxMs: round(Math.max(...wipe), 1) },
        ),
      );
    } catch (e) {
      opts.log(`  ovs restart failed: ${(e as Error).message}\n${o.tail("ovs-vswitchd.log")}`);
      out.push(errored("drift.repair_ovs_restart_p99", e));
    }
    return out;
  } finally {
    unregister();
    await cleanup();
  }
}

async function ovsVersion(): Promise<string> {
  const r = await run("ovs-vswitchd", ["--version"], { allowFail: true });
  return /\d+\.\d+\.\d+/.exec(r.stdout)?.[0] ?? "?";
}

// ------------------------------------------------------------------------------------ idle cost, /metrics

/** The fields of /proc/<pid>/stat after the command name (which may hold spaces and parentheses). */
function statFields(pid: number | "self"): string[] | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  } catch {
    return undefined;
  }
}

/**
 * CPU ticks of this process's children: utime + stime of those running now (the monitors, the kernel view's
 * long-lived tc/ip sessions), by pid, plus cutime + cstime for those that exited and were waited for (the
 * ip/tc processes of a check).
 */
function childTicks(): { live: Map<number, number>; reaped: number } {
  const live = new Map<number, number>();
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    const f = statFields(Number(name));
    if (f && Number(f[1]) === process.pid) live.set(Number(name), Number(f[11]) + Number(f[12]));
  }
  const self = statFields("self");
  return { live, reaped: self ? Number(self[13]) + Number(self[14]) : 0 };
}

/** Child CPU between two childTicks() readings, in ms. */
function childMs(a: ReturnType<typeof childTicks>, b: ReturnType<typeof childTicks>, clkTck: number): number {
  let ticks = b.reaped - a.reaped;
  for (const [pid, t] of b.live) ticks += t - (a.live.get(pid) ?? 0);
  return (ticks * 1000) / clkTck;
}

function getMetrics(socketPath: string): Promise<{ status: number; bytes: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, method: "GET", path: "/metrics" }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => {
        const body = Buffer.concat(chunks);
        resolve({ status: res.statusCode ?? 0, bytes: body.length, body: body.toString("utf8") });
      });
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end();
  });
}

async function idleCost(opts: BenchOptions): Promise<BenchResult[]> {
  const windowMs = opts.quick ? 30_000 : 60_000;
  const scrapes = opts.quick ? 10 : 20;
  const namespaces: string[] = [];
  const dirs: string[] = [];
  let drift: DriftWatch | undefined;
  let closeApp: (() => Promise<void>) | undefined;
  let closeView: (() => void) | undefined;
  const cleanup = async () => {
    await closeApp?.().catch(() => {});
    closeApp = undefined;
    await drift?.close().catch(() => {});
    drift = undefined;
    closeView?.();
    closeView = undefined;
    for (const ns of namespaces.splice(0)) await deleteNamespace(ns).catch(() => {});
    for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
  };
  const unregister = onCleanup(cleanup);
  try {
    const clkTck = Number((await run("getconf", ["CLK_TCK"])).stdout.trim()) || 100;
    const { ns } = await tapNamespace("driftidle", (x) => namespaces.push(x));
    const runDir = tmpfsRunDir("vqbench-drift-idle-");
    const stateDir = tmpfsRunDir("vqbench-drift-idle-state-");
    dirs.push(runDir.dir, stateDir.dir);
    const runner = processRunner({ netns: ns });
    const caps = await probeCapabilities(runner);
    const cap = captureLog();
    const quiet = createLogger({ level: "error", target: "silent" });
    const xmls = Array.from({ length: IDLE_DOMAINS }, (_, d) => scaleDomainXml(d));
    const domains = xmls.map(parseDomainXml);
    const policy = emptyPolicy();
    // Setup, not measured: on a host busy with other namespaces' teardown one batch of 8000 lines can take
    // longer than the runner's default minute.
    const setupRunner = processRunner({ netns: ns, timeoutMs: 300_000 });
    const cold = await reconcile(
      { runner: setupRunner, runDir: runDir.dir, log: quiet, caps, stateDir: stateDir.dir },
      { domains, policy, scope: domains.map((d) => d.uuid), sweep: true },
    );
    if (cold.failure) throw new Error(`cold apply: ${cold.failure.message}`);
    const taps = domains.length * 4;
    opts.log(`  shaped ${taps} taps`);

    const source = new MemorySource();
    for (const [d, x] of xmls.entries()) source.add(domains[d].name, domains[d].uuid, x);
    let health: () => Health = () => ({
      libvirt: { connected: true, uri: "" },
      queueDepth: 0,
      uptimeSeconds: 0,
    });
    // cacheMs 0: every scrape reads the kernel, as Prometheus's scrapes (15 s or more apart) do with the 1 s cache.
    const metrics = new Metrics({
      rows: () => collectStatus(runner, runDir.dir, caps, policy),
      health: () => health(),
      cacheMs: 0,
      log: cap.log,
    });
    // As src/agent/main.ts runs it: the kernel view for re-applies and drift checks, kept honest by the watch.
    const view = new KernelView({ runner, netns: ns });
    closeView = () => view.close();
    const service = new LocalService({
      source,
      runner,
      runDir: runDir.dir,
      stateDir: stateDir.dir,
      log: cap.log,
      policy: async () => policy,
      caps,
      metrics,
      kernelView: view,
    });
    health = () => service.health();
    const repairer = new Repairer({
      service,
      runner,
      runDir: runDir.dir,
      stateDir: stateDir.dir,
      policy: async () => policy,
      caps,
      log: cap.log,
      metrics,
      observer: view,
    });
    drift = startDriftWatch({ repairer, log: cap.log, netns: ns, ovsdb: false, kernelListener: view });
    await drift.kernel.ready;
    view.enableCache();
    await drift.ready;
    const app = buildApi({ service, auth: socketAuthenticator() });
    const socketPath = join(runDir.dir, "api.sock");
    await listenUnix(app, socketPath);
    closeApp = () => app.close();
    if (repairer.stats.repairs) throw new Error("the first full check repaired something: not an idle host");

    // (a) Nothing changes for windowMs: what the monitors, the 30 s full check and the metrics' own
    // collectors cost.
    const children0 = childTicks();
    const stats0 = { ...repairer.stats };
    const load0 = loadavg()[0];
    const cpu0 = process.cpuUsage();
    const wall0 = preciseNow();
    let rssMax = process.memoryUsage.rss();
    const rssStart = rssMax;
    // Half-second samples: their median is the cost between the periodic full checks.
    const samplesMsPerS: number[] = [];
    let prev = { cpu: process.cpuUsage(), at: wall0 };
    while (preciseNow() - wall0 < windowMs) {
      await sleep(500);
      rssMax = Math.max(rssMax, process.memoryUsage.rss());
      const now = { cpu: process.cpuUsage(), at: preciseNow() };
      const d = now.cpu.user + now.cpu.system - prev.cpu.user - prev.cpu.system;
      samplesMsPerS.push(d / (now.at - prev.at));
      prev = now;
    }
    const wallMs = preciseNow() - wall0;
    const cpu = process.cpuUsage(cpu0);
    const cpuMs = (cpu.user + cpu.system) / 1000;
    const childrenMs = childMs(children0, childTicks(), clkTck);
    const checks = repairer.stats.checks - stats0.checks;
    const cpuPercent = (100 * cpuMs) / wallMs;
    const childPercent = (100 * childrenMs) / wallMs;
    const betweenChecksPercent = median(samplesMsPerS) / 10;
    opts.log(
      `  idle ${(wallMs / 1000).toFixed(0)} s: ${cpuPercent.toFixed(2)} % CPU in this process (${betweenChecksPercent.toFixed(2)} % between full checks), ${childPercent.toFixed(2)} % in children; ${checks} full check(s)`,
    );
    if (repairer.stats.repairs)
      throw new Error("a repair during the idle window: something changed the kernel");
    // What one periodic full check costs, measured on its own (the window holds one or two of them).
    const fc0 = process.cpuUsage();
    const fcChildren0 = childTicks();
    const fcT0 = preciseNow();
    await repairer.fullCheck();
    const fullCheckWallMs = preciseNow() - fcT0;
    const fc = process.cpuUsage(fc0);
    const fullCheckCpuMs = (fc.user + fc.system) / 1000;
    const fullCheckChildMs = childMs(fcChildren0, childTicks(), clkTck);

    // (b) GET /metrics through the API's unix socket, one after the other.
    const times: number[] = [];
    const cpuPer: number[] = [];
    const childPer: number[] = [];
    const readSeconds: number[] = [];
    let bytes = 0;
    let series = 0;
    for (let i = -1; i < scrapes; i++) {
      const c0 = process.cpuUsage();
      const k0 = childTicks();
      const t0 = preciseNow();
      const r = await getMetrics(socketPath);
      const ms = preciseNow() - t0;
      if (r.status !== 200) throw new Error(`GET /metrics: ${r.status} ${r.body.slice(0, 300)}`);
      if (i < 0) continue;
      const c = process.cpuUsage(c0);
      times.push(ms);
      cpuPer.push((c.user + c.system) / 1000);
      childPer.push(childMs(k0, childTicks(), clkTck));
      bytes = r.bytes;
      series = r.body.split("\n").filter((l) => l && !l.startsWith("#")).length;
      const read = /^virtqos_status_read_duration_seconds (\S+)$/m.exec(r.body);
      if (read) readSeconds.push(Number(read[1]));
    }
    const inForce = /^virtqos_in_force\{.*\} 1$/gm;
    const last = await getMetrics(socketPath);
    const matching = last.body.match(inForce)?.length ?? 0;
    opts.log(
      `  /metrics: median ${median(times).toFixed(0)} ms, ${bytes} bytes, ${series} series; ${matching} rows in force`,
    );

    const idleDetails = {
      taps,
      windowSeconds: round(wallMs / 1000, 1),
      measuredProcess:
        "the bench process, which hosts the LocalService, Repairer, drift watch, Metrics (with prom-client's process metrics) and the API on a unix socket; no libvirt event watch (no libvirtd)",
      loadAverage1m: [round(load0, 2), round(loadavg()[0], 2)],
      fullChecksInWindow: checks,
      fullCheckIntervalSeconds: 30,
      oneFullCheck: {
        wallMs: round(fullCheckWallMs, 0),
        cpuMs: round(fullCheckCpuMs, 0),
        childProcessesCpuMs: round(fullCheckChildMs, 0),
      },
      cpuPercentBetweenFullChecks: round(betweenChecksPercent, 2),
      kernelEventsInWindow: repairer.stats.events - stats0.events,
      repairsInWindow: repairer.stats.repairs - stats0.repairs,
      cpuMs: round(cpuMs, 0),
      childProcessesCpuPercent: round(childPercent, 2),
      childProcessesCpuMs: round(childrenMs, 0),
      scrapesInWindow: 0,
      warnings: cap.warnings.slice(0, 5),
      errors: cap.errors.slice(0, 5),
    };
    return [
      atMost(
        "drift.idle_cpu_percent",
        "CPU of one core, 1000 shaped taps, no changes",
        round(cpuPercent, 2),
        "%",
        1,
        idleDetails,
        true,
      ),
      info(
        "drift.idle_cpu_percent_with_children",
        "the same plus the monitors and the full checks' ip/tc processes",
        round(cpuPercent + childPercent, 2),
        "%",
        { ...idleDetails },
      ),
      info(
        "drift.idle_rss_mb",
        "RSS of the bench process, max over the idle window",
        round(rssMax / 2 ** 20, 1),
        "MB",
        {
          rssAtStartMb: round(rssStart / 2 ** 20, 1),
          heapUsedMb: round(process.memoryUsage().heapUsed / 2 ** 20, 1),
          note: "the whole bench process: the agent's pieces plus tsx and what earlier benchmarks left on the heap",
        },
      ),
      info(
        "drift.metrics_scrape_ms",
        "GET /metrics over the API's unix socket, 1000 taps, median",
        round(median(times), 1),
        "ms",
        {
          scrapes,
          p90Ms: round(percentile(times, 90), 1),
          maxMs: round(Math.max(...times), 1),
          statusReadMsMedian: round(median(readSeconds) * 1000, 1),
          cpuMsMedian: round(median(cpuPer), 1),
          childProcessesCpuMsMedian: round(median(childPer), 1),
          cacheMs: 0,
          inForceRows: matching,
        },
      ),
      info("drift.metrics_scrape_bytes", "size of one /metrics answer, 1000 taps", bytes, "bytes", {
        series,
      }),
    ];
  } finally {
    unregister();
    await cleanup();
  }
}

// ------------------------------------------------------------------------------------ the benchmark

export async function drift(opts: BenchOptions): Promise<BenchResult[]> {
  const n = opts.quick ? 10 : 50;
  const out: BenchResult[] = [];
  // Each part on its own: one that cannot run says why, as a failed row of each target it could not measure
  // (a private OVS that does not start fails both OVS rows), and the others still report.
  const part = async (names: string[], fn: () => Promise<BenchResult[]>) => {
    try {
      out.push(...(await fn()));
    } catch (e) {
      opts.log(`  ${names.join(", ")} failed: ${(e as Error).stack ?? e}`);
      for (const name of names) out.push(errored(name, e));
    }
  };
  await part(["drift.repair_tc_qdisc_del_p99"], () => tcQdiscDel(opts, n));
  await part(["drift.repair_ovs_add_port_p99", "drift.repair_ovs_restart_p99"], () => ovsCases(opts, n));
  await part(["drift.idle_cpu_percent"], () => idleCost(opts));
  return out;
}
