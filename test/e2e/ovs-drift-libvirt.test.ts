/**
 * Issue 10, end to end: drift on Open vSwitch ports repaired by the real `virtqos agent` (the built bundle, its
 * own process), with a real libvirtd + QEMU (TCG), the installed hook and the host's Open vSwitch (userspace
 * datapath, started by scripts/setup-libvirt.sh --ovs, which scripts/setup.sh runs):
 *
 * 0. libvirt's `<bandwidth>` in both directions on an OVS port: libvirt hands the inbound limit to OVS as a
 *    linux-htb QoS (a guarantee: min-rate only) and the outbound as ingress policing; `ovs: tc` takes the port
 *    over (clears both, OVS_QOS_TAKEN_OVER) and shapes it with its own tree: status in force and matching;
 * 1. guest A on an OVS bridge port with `<bandwidth><outbound>` (libvirt hands it to OVS as ingress policing,
 *    so OVS owns the port's `ingress` qdisc) and its inbound limit in `<metadata>`, shaped by the hook, the
 *    agent running;
 * 2. guest B started on the same bridge: OVS reconfigures its ports and re-creates A's `ingress` qdisc,
 *    dropping virtqos's redirect; the agent repairs it;
 * 3. Open vSwitch restarted (ovsdb-server and ovs-vswitchd: `systemctl restart openvswitch-switch` where systemd
 *    is PID 1, else ovs-ctl as setup-libvirt.sh starts it): both guests' ports repaired;
 * 4. the repairs counted in the agent's `/metrics` (over its unix socket): `virtqos_drift_repairs_total` under
 *    the causes `ovs add-port` (step 2) and `ovs-vswitchd restart` (step 3);
 * 5. `virtqos status --json` (the CLI) shows both guests' interfaces in force (matching, not contested) after
 *    each repair, and the agent's log (its stderr, VIRTQOS_LOG=stderr) has `WARNING: drift repaired: dev=...
 *    cause=...` for A after step 2 and for A and B after step 3;
 * 6. everything removed at the end, also on failure: the agent stopped first, then HookTestHost's cleanup
 *    (guests destroyed and undefined, their OVS QoS rows, the bridge, the hook and the policy put back).
 *
 * The repair time (steps 2 and 3), per port: from OVS's last change to it, when OVS has settled (the last
 * `tc monitor` line about the tap or its IFB that deletes a qdisc other than the kernel's default root or
 * creates an `ingress` qdisc: virtqos does neither), to the end of the agent's repair in the kernel (the last
 * `tc monitor` line about them after that), provided the poll then finds the port matching. A sample of the
 * poll is one `tc -batch` reading the tap's root qdisc, class and ingress filters and the IFB's root qdisc and
 * class; samples are taken POLL_PAUSE_MS apart from just before the trigger until every port has matched for
 * 3 s. Target: 1 s. Also printed: the poll's own times (the last broken and the first matching sample), the
 * time from the trigger, and a timeline of the step (samples, `tc monitor` lines, OVSDB changes to ports and
 * interfaces, the agent's log lines as they arrived, ovs-vswitchd's log), relative to the trigger.
 *
 * Uses the real default paths (/etc/virtqos/policy.yaml, /run/virtqos), like the other libvirt e2e files,
 * because libvirtd runs the hook with its own environment. Restarts the host's Open vSwitch. Skips with the
 * reason when libvirt or Open vSwitch is not available (scripts/setup.sh starts both).
 *   npm run build && node --import tsx --test test/e2e/ovs-drift-libvirt.test.ts
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { mkdtemp, open, rm, stat } from "node:fs/promises";
import { loadavg, tmpdir } from "node:os";
import { join } from "node:path";
import { type TestContext, test } from "node:test";
import type { StatusRow } from "../../src/app/status.js";
import { recordIfb } from "../../src/core/plan.js";
import { http, until } from "./agent-client.js";
import {
  checkIfName,
  createOvsBridge,
  defineDomain,
  destroy,
  ensureLibvirt,
  makeDomainXml,
  ovsAvailable,
  removeOvsQosOf,
  restartOvs,
  run,
  SETUP_SCRIPT,
  startDomain,
  tapsOf,
  undefine,
} from "./libvirt-env.js";
import {
  HookTestHost,
  htbClasses,
  installHook,
  PRIO_MAX,
  PRIO_MIN,
  type QdiscJson,
  qdiscs,
  REPO,
  readRecord,
  virtqosStatus,
} from "./virtqos-e2e.js";

const P = "vqo";
const NEUTRAL =
  "# Written by test/e2e/ovs-drift-libvirt.test.ts; the original is put back when the test ends.\n";
const QOS_NS = "https://virtqos.dev/xmlns/qos/1";
const CLI = join(REPO, "bin", "virtqos");
const OVS_LOG = "/var/log/openvswitch/ovs-vswitchd.log";
/**
 * The bound this test holds each repair to, after OVS's last change to the port. Issue 10's target (p99 <= 1 s)
 * is a benchmark's (bench/drift.ts: 50 repetitions per cause, `drift.repair_ovs_*_p99`): here one sample per
 * guest, with TCG guests loading the machine and the agent repairing the guests one after the other (a
 * `virsh dumpxml` each), is held to the agent's own bound: the OVS settle cap (2 s) plus one re-apply.
 * The measured time is printed (MEASURED) either way.
 */
const TARGET_MS = 3000;
/** A step is over when every port has matched for this long since any was last seen broken. */
const QUIET_MS = 3000;
/** Between two samples of the ports. */
const POLL_PAUSE_MS = 40;

const env = await ensureLibvirt({ ovs: true });
const skip = !env.ok
  ? env.reason
  : !env.ovs.ok
    ? `Open vSwitch not available (${env.ovs.reason}): run scripts/setup.sh`
    : false;
const host = new HookTestHost(P, NEUTRAL);

// ------------------------------------------------------------------ guests

type Direction = "inbound" | "outbound";

interface Guest {
  name: string;
  uuid: string;
  mac: string;
  /** libvirt units, kB/s (1 = 8000 bit/s). */
  inbound: number;
  outbound: number;
  /**
   * The directions given in libvirt's own <bandwidth> (which libvirt also hands to OVS: inbound as a linux-htb
   * QoS row, outbound as ingress_policing_rate); the others in virtqos's <metadata>.
   */
  bandwidth: readonly Direction[];
}

const sourceOf = (g: Guest, d: Direction) => (g.bandwidth.includes(d) ? "bandwidth" : "metadata");

/** The host side of a shaped OVS port: the tap (download on its root) and its IFB (upload). */
interface Shaped {
  dev: string;
  ifb: string;
}

/**
 * Guest A: issue 10's guest with `<bandwidth>` on its OVS port. Only its outbound limit is in <bandwidth>:
 * libvirt hands that to OVS as ingress policing, so OVS owns the port's `ingress` qdisc and re-creates it at
 * every reconfiguration (dropping virtqos's redirect: the drift this test is about). Its inbound limit is in
 * <metadata> because libvirt hands a <bandwidth><inbound> to OVS as a linux-htb QoS, whose root HTB `1:`
 * makes virtqos refuse the whole port (ROOT_QDISC_FOREIGN): step 0 shows that case on guest BW.
 */
const A: Guest = {
  name: `${P}-a`,
  uuid: host.newUuid(),
  mac: "52:54:00:7f:00:01",
  inbound: 2500,
  outbound: 1250,
  bandwidth: ["outbound"],
};
/** Guest B: the port added next to A's, limits in <metadata> only (OVS leaves its ingress alone). */
const B: Guest = {
  name: `${P}-b`,
  uuid: host.newUuid(),
  mac: "52:54:00:7f:00:02",
  inbound: 2000,
  outbound: 1000,
  bandwidth: [],
};
/** Guest BW: libvirt's <bandwidth> in both directions on an OVS port (step 0). */
const BW: Guest = {
  name: `${P}-bw`,
  uuid: host.newUuid(),
  mac: "52:54:00:7f:00:03",
  inbound: 2500,
  outbound: 1250,
  bandwidth: ["inbound", "outbound"],
};

function guestXml(g: Guest, bridge: string): string {
  const meta = (["inbound", "outbound"] as const)
    .filter((d) => !g.bandwidth.includes(d))
    .map((d) => `<vq:${d} average="${g[d]}"/>`)
    .join("");
  const bandwidth = Object.fromEntries(g.bandwidth.map((d) => [d, { average: g[d] }]));
  return makeDomainXml({
    name: g.name,
    uuid: g.uuid,
    metadataXml: meta
      ? `    <vq:qos xmlns:vq="${QOS_NS}"><vq:interface mac="${g.mac}">${meta}</vq:interface></vq:qos>`
      : undefined,
    interfaces: [{ type: "bridge", bridge, ovs: true, mac: g.mac, bandwidth }],
  });
}

// ------------------------------------------------------------------ the kernel, sampled

/** How tc prints a rate (iproute2 print_rate) for a libvirt rate in kB/s. */
function tcRate(kiloBytesPerSec: number): string {
  const bits = kiloBytesPerSec * 8000;
  if (bits % 1e9 === 0) return `${bits / 1e9}Gbit`;
  if (bits % 1e6 === 0) return `${bits / 1e6}Mbit`;
  if (bits % 1e3 === 0) return `${bits / 1e3}Kbit`;
  return `${bits}bit`;
}

interface Port {
  g: Guest;
  s: Shaped;
}

interface FilterJson {
  pref?: number;
  options?: { actions?: { kind?: string; to_dev?: string; mirred_action?: string }[] };
}

/** What one sample read of a port. */
interface PortView {
  qdiscs: QdiscJson[];
  filters: FilterJson[];
  /** `class show` lines (iproute2 6.1 prints no JSON for classes). */
  classes: string[];
  ifbQdiscs: QdiscJson[];
  ifbClasses: string[];
}

/** The rate of an HTB class in `class show` lines. */
function classRate(lines: readonly string[], classid: string): string | undefined {
  for (const l of lines) {
    const tok = l.trim().split(/\s+/);
    if (tok[0] === "class" && tok[1] === "htb" && tok[2] === classid) return tok[tok.indexOf("rate") + 1];
  }
  return undefined;
}

/**
 * What the kernel lacks of the guest's shaping, [] when it matches: download on the tap (root HTB 7651:, class
 * 7651:1 at the inbound rate), upload through the tap's ingress (one virtqos filter, prio 64000, redirecting to
 * the IFB) and the IFB (root HTB 7651:, class 7651:1 at the outbound rate).
 */
function problemsOf({ g, s }: Port, v: PortView): string[] {
  const problems: string[] = [];
  const root = v.qdiscs.find((q) => q.root);
  if (`${root?.kind} ${root?.handle}` !== "htb 7651:")
    problems.push(`root qdisc ${root?.kind} ${root?.handle}`);
  else if (classRate(v.classes, "7651:1") !== tcRate(g.inbound))
    problems.push(`class 7651:1 rate ${classRate(v.classes, "7651:1")}`);
  // u32 lists a filter's header entries as well: only the entries with actions are filters of their own.
  const ours = v.filters.filter(
    (f) => f.pref !== undefined && f.pref >= PRIO_MIN && f.pref <= PRIO_MAX && f.options?.actions,
  );
  const mirred = ours[0]?.options?.actions?.find((a) => a.kind === "mirred");
  if (
    ours.length !== 1 ||
    ours[0]?.pref !== PRIO_MIN ||
    mirred?.mirred_action !== "redirect" ||
    mirred.to_dev !== s.ifb
  ) {
    const hook = v.qdiscs.find((q) => q.parent === "ffff:fff1");
    problems.push(
      `ingress redirect (${hook ? `${hook.kind} qdisc` : "no hook qdisc"}, ${ours.length} virtqos filters)`,
    );
  }
  const iroot = v.ifbQdiscs.find((q) => q.root);
  if (`${iroot?.kind} ${iroot?.handle}` !== "htb 7651:")
    problems.push(`ifb root qdisc ${iroot?.kind} ${iroot?.handle}`);
  else if (classRate(v.ifbClasses, "7651:1") !== tcRate(g.outbound))
    problems.push(`ifb class 7651:1 rate ${classRate(v.ifbClasses, "7651:1")}`);
  return problems;
}

/** One `tc -j -batch -` reading `ports`, or why not (a device is gone: tc's message). */
async function readBatch(ports: readonly Port[]): Promise<PortView[] | string> {
  const lines = ports.flatMap(({ s }) => [
    `qdisc show dev ${s.dev}`,
    `filter show dev ${s.dev} ingress`,
    `class show dev ${s.dev}`,
    `qdisc show dev ${s.ifb}`,
    `class show dev ${s.ifb}`,
  ]);
  const r = await run("tc", ["-j", "-batch", "-"], { input: `${lines.join("\n")}\n`, timeoutMs: 10_000 });
  if (r.code !== 0) return (r.stderr.trim().split("\n")[0] ?? "") || `tc exited ${r.code}`;
  // Each qdisc and filter command prints one JSON line; each class command zero or more text lines.
  const out = r.stdout.split("\n").filter((l) => l.trim());
  let i = 0;
  const json = <T>(): T[] => JSON.parse(out[i++] ?? "[]") as T[];
  const text = () => {
    const xs: string[] = [];
    while (i < out.length && !out[i]?.startsWith("[")) xs.push(out[i++] ?? "");
    return xs;
  };
  try {
    return ports.map(() => {
      const qd = json<QdiscJson>();
      const filters = json<FilterJson>();
      const classes = text();
      const ifbQdiscs = json<QdiscJson>();
      return { qdiscs: qd, filters, classes, ifbQdiscs, ifbClasses: text() };
    });
  } catch (e) {
    throw new Error(
      `tc -j -batch printed what this test cannot read (${(e as Error).message}):\n${r.stdout}`,
    );
  }
}

/** What each port lacks now ([] per matching port), in one tc process (one per port when a device is gone). */
async function sample(ports: readonly Port[]): Promise<string[][]> {
  const views = await readBatch(ports);
  if (typeof views !== "string") return ports.map((p, i) => problemsOf(p, views[i] as PortView));
  return Promise.all(
    ports.map(async (p) => {
      const v = await readBatch([p]);
      return typeof v === "string"
        ? [`tap ${p.s.dev} or IFB ${p.s.ifb} not readable: ${v}`]
        : problemsOf(p, v[0] as PortView);
    }),
  );
}

// ------------------------------------------------------------------ following a step

interface Event {
  at: number;
  what: string;
}

interface Outcome {
  guest: string;
  dev: string;
  /** Samples that found the port broken, and in how many separate stretches. */
  brokenSamples: number;
  breaks: number;
  /** Everything the broken samples found missing. */
  missing: string[];
  /** The last sample that saw the port broken, and the first one after it (matching). */
  lastBrokenAt?: number;
  repairedAt?: number;
  matchesAtEnd: boolean;
}

interface Followed {
  outcomes: Outcome[];
  samples: number;
  /** Mean time between samples. */
  periodMs: number;
  /** Each port's changes between broken and matching, as samples saw them. */
  events: Event[];
  triggerError?: unknown;
}

/**
 * Sample the ports (POLL_PAUSE_MS apart) from now until `trigger` has settled, every port matches, and none
 * has been seen broken for QUIET_MS; or until `maxMs`.
 */
async function follow(ports: readonly Port[], trigger: Promise<unknown>, maxMs: number): Promise<Followed> {
  const t0 = performance.now();
  let done = false;
  let triggerError: unknown;
  const settled = trigger.then(
    () => {
      done = true;
    },
    (e: unknown) => {
      done = true;
      triggerError = e;
    },
  );
  const series = ports.map(() => [] as { t: number; problems: string[] }[]);
  const events: Event[] = [];
  let lastBroken = t0;
  let n = 0;
  while (performance.now() - t0 < maxMs) {
    const found = await sample(ports);
    const t = performance.now();
    n++;
    found.forEach((problems, i) => {
      const xs = series[i] as { t: number; problems: string[] }[];
      const before = xs[xs.length - 1]?.problems.join("; ");
      if (before !== problems.join("; ")) {
        const p = ports[i] as Port;
        events.push({
          at: t,
          what: `sample: ${p.g.name} (${p.s.dev}) ${problems.length ? `broken: ${problems.join("; ")}` : "matches"}`,
        });
      }
      xs.push({ t, problems });
    });
    if (found.some((p) => p.length)) lastBroken = t;
    else if (done && t - lastBroken >= QUIET_MS) break;
    // The repair's time comes from tc monitor; the poll confirms the port matches, so it can leave the CPUs to
    // the agent and OVS.
    await new Promise((r) => setTimeout(r, POLL_PAUSE_MS));
  }
  await settled;
  const outcomes = ports.map(({ g, s }, i): Outcome => {
    const xs = series[i] ?? [];
    const missing = new Set<string>();
    let breaks = 0;
    let lastEnd = -1;
    xs.forEach((x, k) => {
      if (!x.problems.length) return;
      for (const p of x.problems) missing.add(p);
      if (k === 0 || !xs[k - 1]?.problems.length) breaks++;
      lastEnd = k;
    });
    return {
      guest: g.name,
      dev: s.dev,
      brokenSamples: xs.filter((x) => x.problems.length).length,
      breaks,
      missing: [...missing],
      lastBrokenAt: lastEnd >= 0 ? xs[lastEnd]?.t : undefined,
      repairedAt: lastEnd >= 0 ? xs[lastEnd + 1]?.t : undefined,
      matchesAtEnd: (xs[xs.length - 1]?.problems.length ?? 1) === 0,
    };
  });
  const periodMs = n > 1 ? (performance.now() - t0) / n : 0;
  return { outcomes, samples: n, periodMs, events, triggerError };
}

function describeOutcome(o: Outcome, t0: number): string {
  if (!o.breaks) return `${o.guest} (${o.dev}): never seen broken`;
  const rel = (x: number | undefined) => (x === undefined ? "never" : `+${Math.round(x - t0)} ms`);
  return (
    `${o.guest} (${o.dev}): seen broken in ${o.breaks} stretch(es), ${o.brokenSamples} samples (${o.missing.join("; ")}); ` +
    `last seen broken ${rel(o.lastBrokenAt)}, matching again ${rel(o.repairedAt)}`
  );
}

/**
 * Evidence for a step's timeline: `tc monitor` lines about the ports' devices, and what ovs-vswitchd logged
 * meanwhile (its own timestamps). Times are performance.now() values.
 */
async function watchEvidence(
  devs: readonly string[],
): Promise<{ stop(): Promise<{ events: Event[]; kernel: KernelLine[] }> }> {
  const events: Event[] = [];
  const kernel: KernelLine[] = [];
  const logFrom = (await stat(OVS_LOG).catch(() => undefined))?.size;
  const mon = spawn("tc", ["monitor"], { stdio: ["ignore", "pipe", "ignore"] });
  let rest = "";
  mon.stdout?.setEncoding("utf8").on("data", (d: string) => {
    const at = performance.now();
    const lines = (rest + d).split("\n");
    rest = lines.pop() ?? "";
    for (const l of lines) {
      // (The chain lines that come with every ingress qdisc say nothing more.)
      if (/^(added|deleted) chain /.test(l)) continue;
      const dev = devs.find((d) => new RegExp(`\\bdev ${d}\\b`).test(l));
      if (!dev) continue;
      kernel.push({ at, dev, line: l.trim() });
      events.push({ at, what: `tc monitor: ${l.trim()}` });
    }
  });
  mon.on("error", () => {});
  // OVSDB's changes to ports and interfaces as a monitor sees them (the agent's OVSDB watch at the same time);
  // started again when ovsdb-server restarts under it.
  let stopped = false;
  const ovsdb: ChildProcess[] = [];
  const monitorTable = (table: string, columns: string) => {
    if (stopped) return;
    const c = spawn(
      "ovsdb-client",
      ["monitor", "--format=json", "unix:/var/run/openvswitch/db.sock", "Open_vSwitch", table, columns],
      { stdio: ["ignore", "pipe", "ignore"] },
    );
    ovsdb.push(c);
    let buf = "";
    c.stdout?.setEncoding("utf8").on("data", (d: string) => {
      const at = performance.now();
      const xs = (buf + d).split("\n");
      buf = xs.pop() ?? "";
      for (const x of xs) {
        try {
          const u = JSON.parse(x) as { data?: unknown[][]; headings?: string[] };
          for (const row of u.data ?? []) {
            if (row[1] === "initial") continue;
            const cols = (u.headings ?? []).slice(2).map((h, i) => `${h}=${JSON.stringify(row[i + 2])}`);
            events.push({ at, what: `ovsdb ${table}: ${row[1]} ${cols.join(" ")}` });
          }
        } catch {
          // Not a JSON update line.
        }
      }
    });
    c.on("error", () => {});
    c.on("exit", () => setTimeout(() => monitorTable(table, columns), 250));
  };
  monitorTable("Port", "name,qos");
  monitorTable("Interface", "name,ofport,ingress_policing_rate,admin_state,link_state,external_ids");
  // `tc monitor` and ovsdb-client subscribe as they start: give them that moment.
  await new Promise((r) => setTimeout(r, 300));
  return {
    async stop() {
      stopped = true;
      mon.kill("SIGTERM");
      for (const c of ovsdb) if (c.exitCode === null) c.kill("SIGTERM");
      if (logFrom !== undefined) {
        const f = await open(OVS_LOG, "r");
        try {
          const { size } = await f.stat();
          const buf = Buffer.alloc(Math.max(0, Math.min(size - logFrom, 1 << 20)));
          await f.read(buf, 0, buf.length, logFrom);
          for (const l of buf.toString("utf8").split("\n")) {
            const m = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z)\|\d+\|(.*)$/.exec(l);
            if (m)
              events.push({
                at: Date.parse(m[1] as string) - performance.timeOrigin,
                what: `ovs-vswitchd: ${m[2]}`,
              });
          }
        } finally {
          await f.close();
        }
      }
      return { events, kernel };
    },
  };
}

/** A `tc monitor` line about one of the watched devices. */
interface KernelLine {
  at: number;
  dev: string;
  line: string;
}

/**
 * Whether a `tc monitor` line is OVS changing the port: a qdisc deleted (virtqos itself only ever replaces the
 * kernel's default root, handle 0:, when it repairs) or an `ingress` qdisc created (virtqos adds `clsact`).
 */
const isOvsChange = (line: string) => /^deleted qdisc \S+ (?!0:)/.test(line) || /^qdisc ingress /.test(line);

/**
 * When a port that the poll found broken matched again, and since when OVS had left it alone:
 * - `settledAt`: OVS's last change to the tap or its IFB (the last `isOvsChange` line of `tc monitor` before the
 *   poll saw the port match again): OVS has settled;
 * - `matchedAt`: the first sample that saw the port match again (`brokenAt`: the sample before it, broken);
 * - `repairedAt`: the last kernel change on the tap or IFB after `settledAt` and before `matchedAt` (the end of the
 *   agent's repair batch, as `tc monitor` timed it): the moment the kernel matched again, which the poll confirms.
 * Undefined when the port does not match at the end or OVS changed nothing.
 */
function repairOf(
  o: Outcome,
  s: Shaped,
  kernel: readonly KernelLine[],
):
  | { settledAt: number; repairedAt: number; matchedAt: number; brokenAt?: number; changes: number }
  | undefined {
  const matchedAt = o.repairedAt;
  if (!o.matchesAtEnd || matchedAt === undefined) return undefined;
  const mine = kernel.filter((k) => (k.dev === s.dev || k.dev === s.ifb) && k.at <= matchedAt);
  const changes = mine.filter((k) => isOvsChange(k.line));
  const last = changes[changes.length - 1];
  if (!last) return undefined;
  const after = mine.filter((k) => k.at > last.at);
  const repairedAt = after[after.length - 1]?.at ?? matchedAt;
  return { settledAt: last.at, repairedAt, matchedAt, brokenAt: o.lastBrokenAt, changes: changes.length };
}

function printTimeline(t: TestContext, t0: number, events: readonly Event[]): void {
  const seen = new Set<string>();
  for (const e of [...events].sort((a, b) => a.at - b.at)) {
    // libvirt repeats its warnings at every re-apply: once is enough here.
    const what = e.what.length > 240 ? `${e.what.slice(0, 240)}...` : e.what;
    if (/<bandwidth> on an Open vSwitch port/.test(what)) {
      if (seen.has(what)) continue;
      seen.add(what);
    }
    t.diagnostic(`  ${String(Math.round(e.at - t0)).padStart(6)} ms  ${what}`);
  }
}

/**
 * Per port: the repair time (repairOf) printed as MEASURED and held against TARGET_MS; the failures.
 * `returnedAt`: when the trigger's command returned, for the restart.
 */
function judge(
  t: TestContext,
  r: Followed,
  ports: readonly Port[],
  kernel: readonly KernelLine[],
  t0: number,
  since: string,
  returnedAt?: number,
  /** False: OVS leaving the port alone is a result, not a failure. */
  expectChange = true,
): string[] {
  const failures: string[] = [];
  const rel = (x: number) => `+${Math.round(x - t0)} ms`;
  r.outcomes.forEach((o, i) => {
    const p = ports[i] as Port;
    const where = `${o.guest} (${o.dev})`;
    if (!o.matchesAtEnd) {
      failures.push(`${where}: still not matching ${Math.round(performance.now() - t0)} ms after ${since}`);
      return;
    }
    const changes = kernel.filter((k) => (k.dev === p.s.dev || k.dev === p.s.ifb) && isOvsChange(k.line));
    if (!o.breaks) {
      // Repaired between two samples, or never broken.
      if (changes.length)
        t.diagnostic(
          `MEASURED: ${where}: OVS changed it ${changes.length} times and no sample saw it broken: repaired within one sample period`,
        );
      else if (expectChange)
        failures.push(`${where}: OVS changed nothing on the port (nothing for the agent to repair)`);
      else t.diagnostic(`MEASURED: ${where}: OVS changed nothing on the port; it matched throughout`);
      return;
    }
    const rep = repairOf(o, p.s, kernel);
    if (!rep) {
      failures.push(`${where}: seen broken, but tc monitor saw no change by OVS (see the timeline)`);
      return;
    }
    const took = rep.repairedAt - rep.settledAt;
    t.diagnostic(
      `MEASURED: ${where}: OVS's last change to it at ${rel(rep.settledAt)} (${rep.changes} changes by OVS seen by tc monitor); ` +
        `the agent's repair in the kernel at ${rel(rep.repairedAt)}: ${Math.round(took)} ms after OVS settled; ` +
        `confirmed by the poll: broken at ${rep.brokenAt === undefined ? "-" : rel(rep.brokenAt)}, matching at ${rel(rep.matchedAt)} ` +
        `(${Math.round(rep.matchedAt - rep.settledAt)} ms after OVS settled, ${Math.round(rep.matchedAt - t0)} ms after ${since}` +
        (returnedAt === undefined
          ? ""
          : `, ${Math.round(rep.matchedAt - returnedAt)} ms after the command returned`) +
        ")",
    );
    if (took > TARGET_MS)
      failures.push(
        `${where}: repaired ${Math.round(took)} ms after OVS's last change to it (target ${TARGET_MS} ms)`,
      );
  });
  return failures;
}

// ------------------------------------------------------------------ the agent

interface Agent {
  proc: ChildProcess;
  socketPath: string;
  /** Its stderr, line by line, with when each line arrived (performance.now()). */
  lines: Event[];
  exited: Promise<number | null>;
}

const logText = (a: Agent, from = 0) =>
  a.lines
    .slice(from)
    .map((l) => l.what)
    .join("\n");

/** The agent's drift-repair counters by cause, its contested gauge and its in-force series, from /metrics. */
async function scrape(
  socketPath: string,
): Promise<{ causes: Map<string, number>; contested?: number; inForce: string[] }> {
  const m = await http({ socketPath }, "GET", "/metrics");
  assert.equal(m.status, 200, `GET /metrics: ${JSON.stringify(m.body)}`);
  const text = String(m.body);
  const causes = new Map<string, number>();
  for (const line of text.split("\n")) {
    const c = /^virtqos_drift_repairs_total\{cause="([^"]*)"\} (\S+)$/.exec(line);
    if (c) causes.set(c[1] ?? "", Number(c[2]));
  }
  const contested = /^virtqos_contested_objects (\S+)$/m.exec(text);
  const inForce = text
    .split("\n")
    .filter((l) => l.startsWith("virtqos_in_force{") && new RegExp(`domain="${P}-`).test(l));
  return { causes, contested: contested ? Number(contested[1]) : undefined, inForce };
}

const fmt = (m: Map<string, number>) =>
  [...m].map(([k, v]) => `${k}=${v}`).join(", ") || "no drift repair counted";

/** A status row's contested objects (the running agent's drift repair finds another tool undoing them). */
const contestedOf = (r: StatusRow) =>
  (r as StatusRow & { contested?: { dev: string; object: string; drifts: number }[] }).contested ?? [];

/** The agent's `drift repaired` lines for a guest, as [dev list, cause]. */
function repairsIn(text: string, g: Guest): { devs: string[]; cause: string; line: string }[] {
  const out: { devs: string[]; cause: string; line: string }[] = [];
  for (const line of text.split("\n")) {
    const m = /WARNING: drift repaired: dev=(\S+) .*cause=(.+) guest=(\S+)$/.exec(line);
    if (m && m[3] === g.name) out.push({ devs: (m[1] ?? "").split(","), cause: m[2] ?? "", line });
  }
  return out;
}

// ------------------------------------------------------------------ the test

test(
  "OVS drift with a real libvirtd: another port added, OVS restarted; repaired, counted, in status",
  { skip, timeout: 300_000 },
  async (t) => {
    const started = performance.now();
    const dir = await mkdtemp(join(tmpdir(), `${P}-agent-`));
    let agent: Agent | undefined;
    // Registered before HookTestHost's cleanup, so it runs first (node:test runs after hooks in order): the
    // agent goes before the guests, and Open vSwitch is up again for the bridge's removal.
    t.after(async () => {
      if (agent) await stopAgent(t, agent);
      await rm(dir, { recursive: true, force: true });
      if (!(await ovsAvailable()).ok) {
        t.diagnostic("Open vSwitch is down after the test: starting it again");
        await run("bash", [SETUP_SCRIPT, "--no-install", "--ovs"], { timeoutMs: 120_000 });
      }
    });
    await host.setUp(t);
    const installed = await installHook(t);
    assert.equal(installed.code, 0, `install-hook: ${installed.stderr}`);
    const bridge = await createOvsBridge(`${P}-ovs0`);

    await t.test(
      "0. <bandwidth> in both directions on an OVS port: virtqos takes the port over, status in force and matching",
      async (st) => {
        // Before the agent starts: its log is about A and B only.
        await defineDomain(guestXml(BW, bridge));
        try {
          await startDomain(BW.name);
          const dev = (await tapsOf(BW.name)).get(BW.mac) ?? "";
          const root = (await qdiscs(dev)).find((q) => q.root);
          const classes = (await htbClasses(dev)).map((c) => `${c.classid} rate ${c.rate} ceil ${c.ceil}`);
          st.diagnostic(
            `${BW.name} (${dev}): root qdisc ${root?.kind} ${root?.handle}; classes ${classes.join(", ")}`,
          );
          const qos = await run("ovs-vsctl", [
            "--timeout=5",
            "--bare",
            "--columns=type,other_config",
            "find",
            "QoS",
            `external_ids:vm-id="${BW.uuid}"`,
          ]);
          st.diagnostic(
            `OVS QoS row libvirt created for ${BW.name}: ${qos.stdout.trim().replace(/\s+/g, " ")}`,
          );
          const rows = (await virtqosStatus()).rows.filter((r) => r.domainUuid === BW.uuid);
          for (const r of rows)
            st.diagnostic(
              `status ${BW.name} ${r.direction}: matches=${r.matches}${r.code ? ` code=${r.code}` : ""}${r.note ? ` note=${r.note}` : ""}`,
            );
          assert.equal(rows.length, 2, `${BW.name}: status lists both directions: ${JSON.stringify(rows)}`);
          // `ovs: tc` takes the port over (OVS_QOS_TAKEN_OVER): libvirt's QoS (a guarantee, min-rate, not a
          // limit) cleared from the port and its ingress policing reset, then virtqos's own tree. Status must
          // tell the truth: both directions in force, with the configured limit in the kernel (rate and ceiling).
          assert.equal(root?.kind, "htb", `${BW.name}: root qdisc`);
          assert.equal(root?.handle, "7651:", `${BW.name}: virtqos's root, not OVS's htb 1:`);
          const port = await run("ovs-vsctl", [
            "--timeout=5",
            "--bare",
            "--columns=qos",
            "list",
            "Port",
            dev,
          ]);
          assert.equal(port.stdout.trim(), "", `${BW.name}: the port's qos is empty`);
          const policing = await run("ovs-vsctl", [
            "--timeout=5",
            "--bare",
            "--columns=ingress_policing_rate,ingress_policing_burst",
            "list",
            "Interface",
            dev,
          ]);
          assert.deepEqual(
            policing.stdout.trim().split(/\s+/),
            ["0", "0"],
            `${BW.name}: ingress policing reset`,
          );
          for (const r of rows) {
            const where = `${BW.name} ${r.direction}`;
            assert.equal(r.matches, true, `${where}: in force: ${r.code ?? ""} ${r.note ?? ""}`);
            assert.equal(r.enforcer, undefined, `${where}: virtqos's tc objects enforce it`);
            assert.equal(r.kernel?.rateBitsPerSec, r.configured.rateBitsPerSec, `${where}: kernel rate`);
            assert.equal(r.kernel?.ceilBitsPerSec, r.configured.ceilBitsPerSec, `${where}: kernel ceiling`);
          }
        } finally {
          await destroy(BW.name);
          await undefine(BW.name);
          // libvirt leaves the QoS and Queue rows behind: gone now, not only at the end.
          await removeOvsQosOf(BW.uuid);
        }
      },
    );

    agent = await startAgent(dir);
    const a = agent;
    const tail = () => `\nagent log (last lines):\n${logText(a, Math.max(0, a.lines.length - 30))}`;

    const shaped = new Map<string, Shaped>();
    const portsOf = (...gs: Guest[]): Port[] => gs.map((g) => ({ g, s: shaped.get(g.name) as Shaped }));
    const counters: { label: string; causes: Map<string, number> }[] = [];
    const statusAfter: { label: string; code: number; rows: StatusRow[] }[] = [];
    const logs = { afterB: "", afterRestart: "" };

    /** The tap and IFB the hook recorded for a running guest. */
    async function shapedOf(g: Guest): Promise<Shaped> {
      const dev = (await tapsOf(g.name)).get(g.mac);
      assert.ok(dev, `${g.name}: the live XML names the OVS port's tap`);
      const rec = (await readRecord(g.uuid)).interfaces.find((i) => i.mac === g.mac);
      assert.ok(rec, `${g.name}: the hook recorded the interface (not refused)`);
      assert.equal(rec.dev, dev, `${g.name}: recorded dev`);
      const ifb = recordIfb(g.uuid, rec);
      assert.ok(ifb, `${g.name}: the record names an IFB for the upload`);
      checkIfName(dev);
      checkIfName(ifb);
      return { dev, ifb };
    }

    await t.test(
      "1. guest A on an OVS port with <bandwidth>, shaped by the hook, the agent running",
      async (st) => {
        await defineDomain(guestXml(A, bridge));
        const t0 = performance.now();
        const from = a.lines.length;
        await startDomain(A.name);
        st.diagnostic(`virsh start ${A.name}: ${Math.round(performance.now() - t0)} ms`);
        shaped.set(A.name, await shapedOf(A));
        // Until it has matched for QUIET_MS: OVS's own reconfigurations after the start are over by then.
        const r = await follow(portsOf(A), Promise.resolve(), 20_000);
        for (const o of r.outcomes) st.diagnostic(describeOutcome(o, t0));
        printTimeline(st, t0, [...a.lines.slice(from), ...r.events]);
        assert.ok(r.outcomes[0]?.matchesAtEnd, `${A.name}: shaped in both directions${tail()}`);
      },
    );

    const aReady = () => (shaped.has(A.name) ? false : "guest A did not start shaped");
    /** Whether OVS changed A's port when B's came (step 2); what steps 4 and 5 expect follows from it. */
    let aChangedByB = false;

    await t.test(
      "2. guest B added to the bridge: A's port in force throughout, or repaired after OVS settles (time measured)",
      { skip: aReady() },
      async (st) => {
        counters.push({ label: "before B", causes: (await scrape(a.socketPath)).causes });
        await defineDomain(guestXml(B, bridge));
        const ports = portsOf(A);
        const evidence = await watchEvidence(ports.flatMap((p) => [p.s.dev, p.s.ifb]));
        const from = a.lines.length;
        const t0 = performance.now();
        const r = await follow(ports, startDomain(B.name), 20_000);
        const { events, kernel } = await evidence.stop();
        if (r.triggerError) throw r.triggerError;
        logs.afterB = logText(a, from);
        st.diagnostic(
          `load average ${loadavg()
            .map((x) => x.toFixed(2))
            .join(" ")}`,
        );
        st.diagnostic(
          `sampled every ${Math.round(r.periodMs)} ms (${r.samples} samples); timeline from virsh start ${B.name}:`,
        );
        printTimeline(st, t0, [...events, ...r.events, ...a.lines.slice(from)]);
        for (const o of r.outcomes) st.diagnostic(describeOutcome(o, t0));

        shaped.set(B.name, await shapedOf(B));
        await until("B shaped", async () => (await sample(portsOf(B)))[0]?.length === 0, 5000);
        const m = await scrape(a.socketPath);
        counters.push({ label: "after B", causes: m.causes });
        st.diagnostic(`drift repairs: ${fmt(m.causes)}; contested objects: ${m.contested}`);
        statusAfter.push({ label: "after B", ...(await virtqosStatus()) });

        // virtqos took libvirt's policing off A's port (OVS_QOS_TAKEN_OVER), so OVS usually has no reason to
        // touch it when B's port comes: no drift is then the right result; any drift must be repaired.
        aChangedByB = kernel.some(
          (k) => ports.some((p) => k.dev === p.s.dev || k.dev === p.s.ifb) && isOvsChange(k.line),
        );
        const failures = judge(st, r, ports, kernel, t0, `virsh start ${B.name} began`, undefined, false);
        const misattributed = repairsIn(logs.afterB, A).filter((x) => x.cause !== "ovs add-port");
        for (const x of misattributed) st.diagnostic(`repair not attributed to OVS: ${x.line}`);
        assert.deepEqual(failures, [], `${failures.join("\n")}${tail()}`);
      },
    );

    const bothReady = () =>
      shaped.has(A.name) && shaped.has(B.name) ? false : "guests A and B are not both running shaped";

    await t.test(
      "3. Open vSwitch restarted: both guests' ports repaired after OVS settles (time measured)",
      { skip: bothReady() },
      async (st) => {
        const ports = portsOf(A, B);
        const evidence = await watchEvidence(ports.flatMap((p) => [p.s.dev, p.s.ifb]));
        const from = a.lines.length;
        const t0 = performance.now();
        let restartMs = 0;
        const restart = restartOvs().then((took) => {
          restartMs = took;
        });
        const r = await follow(ports, restart, 60_000);
        const { events, kernel } = await evidence.stop();
        if (r.triggerError) throw r.triggerError;
        logs.afterRestart = logText(a, from);
        st.diagnostic(
          `load average ${loadavg()
            .map((x) => x.toFixed(2))
            .join(" ")}`,
        );
        st.diagnostic(
          `OVS restart: ${Math.round(restartMs)} ms until ovs-vsctl answered again; sampled every ${Math.round(r.periodMs)} ms (${r.samples} samples); timeline from the restart:`,
        );
        printTimeline(st, t0, [
          ...events,
          ...r.events,
          ...a.lines.slice(from),
          { at: t0 + restartMs, what: "restart command returned" },
        ]);
        for (const o of r.outcomes) st.diagnostic(describeOutcome(o, t0));
        const m = await scrape(a.socketPath);
        counters.push({ label: "after the OVS restart", causes: m.causes });
        st.diagnostic(`drift repairs: ${fmt(m.causes)}; contested objects: ${m.contested}`);
        statusAfter.push({ label: "after the OVS restart", ...(await virtqosStatus()) });

        const failures = judge(st, r, ports, kernel, t0, "the restart began", t0 + restartMs);
        assert.deepEqual(failures, [], `${failures.join("\n")}${tail()}`);
      },
    );

    await t.test("4. the repairs are counted in the agent's /metrics, by cause", async (st) => {
      const at = (label: string, cause: string) =>
        counters.find((c) => c.label === label)?.causes.get(cause) ?? 0;
      assert.ok(counters.length >= 3, "counters missing: earlier steps did not run");
      for (const c of counters) st.diagnostic(`virtqos_drift_repairs_total ${c.label}: ${fmt(c.causes)}`);
      for (const l of (await scrape(a.socketPath)).inForce) st.diagnostic(l);
      const failures: string[] = [];
      if (aChangedByB && !(at("after B", "ovs add-port") > at("before B", "ovs add-port")))
        failures.push(
          `virtqos_drift_repairs_total{cause="ovs add-port"} did not go up with B's start: ` +
            `${at("before B", "ovs add-port")} -> ${at("after B", "ovs add-port")}`,
        );
      if (!(at("after the OVS restart", "ovs-vswitchd restart") > at("after B", "ovs-vswitchd restart")))
        failures.push(
          `virtqos_drift_repairs_total{cause="ovs-vswitchd restart"} did not go up with the restart: ` +
            `${at("after B", "ovs-vswitchd restart")} -> ${at("after the OVS restart", "ovs-vswitchd restart")}`,
        );
      assert.deepEqual(failures, [], failures.join("\n"));
    });

    await t.test("5. visible in `virtqos status --json` and in the agent's log", async (st) => {
      assert.ok(statusAfter.length >= 2, "status missing: earlier steps did not run");
      const failures: string[] = [];
      for (const { label, code, rows } of statusAfter) {
        for (const g of [A, B]) {
          const s = shaped.get(g.name);
          for (const direction of ["inbound", "outbound"] as const) {
            const row = rows.find(
              (r) => r.domainUuid === g.uuid && r.mac === g.mac && r.direction === direction,
            );
            const where = `status ${label}: ${g.name} ${direction}`;
            if (!row) {
              failures.push(`${where}: no row`);
              continue;
            }
            const contested = contestedOf(row);
            st.diagnostic(
              `${where}: dev=${row.dev} on=${row.enforcedOn} configured=${row.configured.rateBitsPerSec} (${row.configured.source}) ` +
                `kernel=${row.kernel?.rateBitsPerSec} matches=${row.matches}${contested.length ? ` contested=${JSON.stringify(contested)}` : ""}${row.note ? ` note=${row.note}` : ""}`,
            );
            const rate = g[direction] * 8000;
            if (!row.matches)
              failures.push(`${where}: does not match (${row.code ?? "-"}: ${row.note ?? "-"})`);
            if (contested.length)
              failures.push(
                `${where}: not in force, contested: ${contested.map((c) => `${c.object} on ${c.dev} (${c.drifts} drifts)`).join(", ")}`,
              );
            if (row.dev !== s?.dev) failures.push(`${where}: dev ${row.dev}, not ${s?.dev}`);
            const on = direction === "inbound" ? s?.dev : s?.ifb;
            if (row.enforcedOn !== on) failures.push(`${where}: enforced on ${row.enforcedOn}, not ${on}`);
            if (row.configured.rateBitsPerSec !== rate || row.kernel?.rateBitsPerSec !== rate)
              failures.push(
                `${where}: configured ${row.configured.rateBitsPerSec}, kernel ${row.kernel?.rateBitsPerSec}, not ${rate}`,
              );
            if (row.configured.source !== sourceOf(g, direction))
              failures.push(`${where}: source ${row.configured.source}, not ${sourceOf(g, direction)}`);
          }
        }
        const allInForce = rows.every((r) => r.matches && !contestedOf(r).length);
        if (code !== (allInForce ? 0 : 4))
          failures.push(`status ${label}: exit ${code} with every row ${allInForce ? "" : "not "}in force`);
      }
      // The log: a WARNING per repair, naming the port and the cause.
      const expect = [
        ...(aChangedByB ? [{ text: logs.afterB, when: "after B's start", g: A, cause: "ovs add-port" }] : []),
        { text: logs.afterRestart, when: "after the OVS restart", g: A, cause: "ovs-vswitchd restart" },
        { text: logs.afterRestart, when: "after the OVS restart", g: B, cause: "ovs-vswitchd restart" },
      ];
      for (const { text, when, g, cause } of expect) {
        const dev = shaped.get(g.name)?.dev ?? "?";
        const mine = repairsIn(text, g);
        for (const x of mine) st.diagnostic(`agent log ${when}: ${x.line}`);
        if (!mine.some((x) => x.cause === cause && x.devs.includes(dev)))
          failures.push(
            `agent log ${when}: no "WARNING: drift repaired: dev=${dev} ... cause=${cause} guest=${g.name}"`,
          );
      }
      assert.deepEqual(failures, [], failures.join("\n"));
    });

    t.diagnostic(`steps: ${Math.round(performance.now() - started)} ms`);
  },
);

// ------------------------------------------------------------------ agent process

async function startAgent(dir: string): Promise<Agent> {
  const socketPath = join(dir, "api.sock");
  const lines: Event[] = [];
  let rest = "";
  const proc = spawn(process.execPath, [CLI, "agent", "--socket", socketPath], {
    env: { ...process.env, VIRTQOS_LOG: "stderr" },
    stdio: ["ignore", "ignore", "pipe"],
  });
  proc.stderr?.setEncoding("utf8").on("data", (d: string) => {
    const at = performance.now();
    const xs = (rest + d).split("\n");
    rest = xs.pop() ?? "";
    for (const what of xs) if (what.trim()) lines.push({ at, what: `agent: ${what}` });
  });
  const exited = new Promise<number | null>((resolve) => proc.on("exit", (code) => resolve(code)));
  const agent: Agent = { proc, socketPath, lines, exited };
  const said = () => logText(agent);
  await until(
    "agent answers on its socket",
    async () => {
      if (proc.exitCode !== null) throw new Error(`the agent exited ${proc.exitCode}:\n${said()}`);
      return existsSync(socketPath) && (await http({ socketPath }, "GET", "/v1/health")).status === 200;
    },
    20_000,
  );
  await until(
    "agent connected to libvirt",
    async () =>
      ((await http({ socketPath }, "GET", "/v1/health")).body as { libvirt: { connected: boolean } }).libvirt
        .connected,
    20_000,
  );
  // The drift watch follows OVSDB: that is where `ovs add-port` and the restart come from.
  await until("agent follows OVSDB", async () => /following OVSDB/.test(said()), 20_000).catch((e: Error) => {
    throw new Error(`${e.message}:\n${said()}`);
  });
  return agent;
}

/** SIGTERM, then SIGKILL (with its watcher processes) if it has not stopped within 10 s. */
async function stopAgent(t: TestContext, a: Agent): Promise<void> {
  if (a.proc.exitCode !== null) {
    t.diagnostic(`the agent had exited (${a.proc.exitCode}) before the end of the test`);
    return;
  }
  const pid = a.proc.pid as number;
  let children: number[] = [];
  try {
    children = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8")
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(Number);
  } catch {
    // Gone meanwhile.
  }
  a.proc.kill("SIGTERM");
  const code = await Promise.race([a.exited, new Promise((r) => setTimeout(() => r("timeout"), 10_000))]);
  if (code === "timeout") {
    t.diagnostic("the agent did not stop within 10 s of SIGTERM: SIGKILL, with its watcher processes");
    a.proc.kill("SIGKILL");
    for (const c of children) {
      try {
        process.kill(c, "SIGKILL");
      } catch {
        // Already gone.
      }
    }
  }
}
