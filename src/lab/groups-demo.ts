import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { formatTable } from "../app/table.js";
import { runHook } from "../hook.js";
import { renderChart, type Series } from "./chart.js";
import { sleep } from "./exec.js";
import { runTransfers, type TransferResult } from "./iperf.js";
import { createLab, type LabGuest } from "./topology.js";

// Seed 001 in the lab: "cliff and rob have to share 30mbit, 15 is guaranteed to each; jason can have 30 on
// its own", under a host-wide ceiling. Four phases per direction, each guest sampled every 250 ms.

export const SEED_001_POLICY = `# Seed 001, written out: cliff and rob share 30 Mbit/s with 15 Mbit/s guaranteed to each;
# jason can have 30 Mbit/s on his own; all of it under a host-wide ceiling. Units are explicit.
groups:
  - name: host                      # the parent: a host-wide ceiling over the groups below
    inbound:  { average: 1000mbit }
    outbound: { average: 1000mbit }
  - name: web                       # cliff + rob
    parent: host
    inbound:  { average: 30mbit }   # shared ceiling (download)
    outbound: { average: 30mbit }   # shared ceiling (upload)
    memberDefaults:                 # each member's guarantee
      inbound:  { floor: 15mbit }
      outbound: { floor: 15mbit }
    select:
      domains: ["cliff", "rob"]     # globs on the domain name; also networks: [...], bridges: [...]
  - name: solo                      # jason on his own
    parent: host
    inbound:  { average: 30mbit }
    outbound: { average: 30mbit }
    members:
      - domain: jason               # by name or UUID; add mac: to pick one interface
`;

const GUESTS = [
  { name: "cliff", uuid: "5eed0001-0000-4000-8000-00000000c1ff", color: "#1f77b4" },
  { name: "rob", uuid: "5eed0001-0000-4000-8000-000000000b0b", color: "#d62728" },
  { name: "jason", uuid: "5eed0001-0000-4000-8000-000000003a50", color: "#2ca02c" },
];

type Dir = "download" | "upload";
const PHASE_SECONDS = 4;

interface PhaseResult {
  phase: string;
  direction: Dir;
  guest: string;
  expectedBitsPerSec: number;
  measuredBitsPerSec: number;
}

function xmlFor(g: (typeof GUESTS)[number], lg: LabGuest, bridge: string): string {
  return `<domain type='kvm' id='1'>
  <name>${g.name}</name>
  <uuid>${g.uuid}</uuid>
  <devices>
    <interface type='bridge'>
      <mac address='${lg.mac}'/>
      <source bridge='${bridge}'/>
      <target dev='${lg.tap}'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>
`;
}

export async function runGroupsDemo(opts: {
  out: string;
  quick?: boolean;
  say: (s: string) => void;
}): Promise<{ ok: boolean; results: PhaseResult[]; chart: string }> {
  const { say } = opts;
  const lab = await createLab({ guests: GUESTS.map((g) => ({ name: g.name })) });
  const policyFile = join(opts.out, "policy-groups.yaml");
  writeFileSync(policyFile, SEED_001_POLICY);
  const previousConfig = process.env.VIRTQOS_CONFIG;
  process.env.VIRTQOS_CONFIG = policyFile;
  const xml = Object.fromEntries(GUESTS.map((g, i) => [g.name, xmlFor(g, lab.guests[i], lab.bridge)]));
  const guest = Object.fromEntries(GUESTS.map((g, i) => [g.name, lab.guests[i]]));
  const hook = async (name: string, ops: [string, string][]) => {
    for (const [op, sub] of ops) {
      const r = await runHook([name, op, sub, "-"], xml[name], { netns: lab.hostNs });
      if (r.exitCode !== 0) throw new Error(`hook ${op} ${sub} for ${name} exited ${r.exitCode}`);
    }
  };
  const start = (name: string) =>
    hook(name, [
      ["start", "begin"],
      ["started", "begin"],
    ]);
  const stop = (name: string) =>
    hook(name, [
      ["stopped", "end"],
      ["release", "end"],
    ]);
  const results: PhaseResult[] = [];
  const panels: Parameters<typeof renderChart>[1] = [];
  try {
    say(`\nseed 001: policy written to ${policyFile}; starting cliff, rob and jason through the hook`);
    for (const g of GUESTS) await start(g.name);
    for (const direction of ["download", "upload"] as Dir[]) {
      const series: Record<string, [number, number][]> = { cliff: [], rob: [], jason: [] };
      const phases: { label: string; start: number; end: number }[] = [];
      let clock = 0;
      const record = (name: string, offset: number, r: TransferResult) => {
        for (const iv of r.intervals) series[name].push([offset + iv.endSec, iv.l2BitsPerSec / 1e6]);
      };
      const phase = async (
        label: string,
        busy: string[],
        expected: Record<string, number>,
        during?: { afterSeconds: number; action: () => Promise<void>; thenBusy: string },
      ) => {
        const seconds = opts.quick ? 3 : PHASE_SECONDS;
        // With a join the busy guest runs two seconds longer and the newcomer runs past its end, so there is
        // a stretch where both are surely busy, whatever the hook and iperf3 take to start the newcomer.
        const mainSeconds = during ? seconds + during.afterSeconds + 2 : seconds;
        const main = runTransfers(
          lab,
          busy.map((n) => ({
            guest: guest[n],
            direction,
            protocol: "tcp" as const,
            seconds: mainSeconds,
            intervalSeconds: 0.25,
          })),
        );
        const t0 = Date.now();
        let late: Promise<TransferResult[]> | undefined;
        // Seconds from the busy guests' start to the newcomer's: the hook and iperf3 take their time.
        let lateStartSec = 0;
        if (during) {
          await sleep(during.afterSeconds * 1000);
          await during.action();
          lateStartSec = (Date.now() - t0) / 1000;
          late = runTransfers(lab, [
            { guest: guest[during.thenBusy], direction, protocol: "tcp", seconds, intervalSeconds: 0.25 },
          ]);
        }
        const res = await main;
        const lateRes = late ? await late : [];
        for (const [k, n] of busy.entries()) record(n, clock, res[k]);
        if (during && lateRes[0]) record(during.thenBusy, clock + during.afterSeconds, lateRes[0]);
        // Mean L2 rate over the intervals ending in (from, to] seconds of that transfer.
        const over = (r: TransferResult, from: number, to: number) => {
          const iv = r.intervals.filter((x) => x.endSec > from && x.endSec <= to + 1e-6);
          return iv.reduce((a, x) => a + x.l2BitsPerSec, 0) / Math.max(1, iv.length);
        };
        // Without a join: each guest's last second. With one: the newcomer's second second, and the same
        // second of the busy guest's transfer (whatever the newcomer's start took), where both surely run.
        for (const [k, n] of busy.entries()) {
          const end = res[k].intervals.at(-1)?.endSec ?? mainSeconds;
          const from = Math.min(lateStartSec + 1, end - 1);
          results.push({
            phase: label,
            direction,
            guest: n,
            expectedBitsPerSec: expected[n],
            measuredBitsPerSec: during ? over(res[k], from, from + 1) : over(res[k], end - 1, end),
          });
        }
        if (during && lateRes[0]) {
          results.push({
            phase: label,
            direction,
            guest: during.thenBusy,
            expectedBitsPerSec: expected[during.thenBusy],
            measuredBitsPerSec: over(lateRes[0], 1, 2),
          });
        }
        phases.push({ label, start: clock, end: clock + mainSeconds });
        clock += mainSeconds + 0.5;
      };
      say(
        `measuring ${direction} (guest ${direction === "download" ? "inbound" : "outbound"}), phase by phase...`,
      );
      await phase("jason alone", ["jason"], { jason: 30e6 });
      await phase("all three busy", ["cliff", "rob", "jason"], { cliff: 15e6, rob: 15e6, jason: 30e6 });
      await phase("cliff alone (borrows)", ["cliff"], { cliff: 30e6 });
      await stop("rob");
      await phase(
        "rob joins while cliff is busy",
        ["cliff"],
        { cliff: 15e6, rob: 15e6 },
        {
          afterSeconds: opts.quick ? 1 : 2,
          action: () => start("rob"),
          thenBusy: "rob",
        },
      );
      panels.push({
        title: `guest ${direction} (${direction === "download" ? "inbound" : "outbound"}), layer-2 rate per guest, 250 ms samples`,
        series: GUESTS.map((g): Series => ({ name: g.name, color: g.color, points: series[g.name] })),
        refLines: [
          { label: "web ceiling / jason 30", value: 30, color: "#555" },
          { label: "floor cliff, rob 15", value: 15, color: "#9467bd" },
        ],
        phases,
      });
    }
  } finally {
    for (const g of GUESTS) await stop(g.name).catch(() => {});
    await lab.destroy();
    if (previousConfig === undefined) delete process.env.VIRTQOS_CONFIG;
    else process.env.VIRTQOS_CONFIG = previousConfig;
  }
  const chart = join(opts.out, "groups.svg");
  writeFileSync(
    chart,
    renderChart(
      "virtqos lab: seed 001 groups (cliff + rob share 30 Mbit/s, 15 guaranteed each; jason 30 alone)",
      panels,
    ),
  );
  // Guarantees and ceilings: a member within 10% of what it should get at the end of a phase passes.
  let ok = true;
  const rows = results.map((r) => {
    const ratio = r.measuredBitsPerSec / r.expectedBitsPerSec;
    const pass = ratio >= 0.9 && ratio <= 1.1;
    ok &&= pass;
    return [
      r.direction,
      r.phase,
      r.guest,
      `${(r.expectedBitsPerSec / 1e6).toFixed(1)} Mbit/s`,
      `${(r.measuredBitsPerSec / 1e6).toFixed(2)} Mbit/s`,
      ratio.toFixed(3),
      pass ? "ok" : "OFF",
    ];
  });
  say(
    `\n${formatTable([["DIRECTION", "PHASE", "GUEST", "EXPECTED", "MEASURED (last 1 s, L2)", "RATIO", ""], ...rows])}`,
  );
  say(`chart: ${chart}`);
  return { ok, results, chart };
}
