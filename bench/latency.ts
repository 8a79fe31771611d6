// 3. Latency under load: ping p99 through a saturated 10 Mbit/s download, virtqos's recipe vs a naive HTB.
import { run, sleep } from "../src/lab/exec.js";
import { runTransfers, type TransferResult } from "../src/lab/iperf.js";
import { type PingResult, pingLatency } from "../src/lab/ping.js";
import type { Lab } from "../src/lab/topology.js";
import { applyXml, domainXml, policy, removeDomain, uuidFor } from "../test/helpers/netns.js";
import { atMost, type BenchOptions, type BenchResult, info, round } from "./common.js";
import { kBpsForMbit, withLab } from "./lab.js";

const MBIT = 10;
const PING_INTERVAL_S = 0.01;
/** Let TCP fill the queue before the first probe. */
const WARMUP_MS = 1500;

function p99(samples: number[]): number {
  const s = [...samples].sort((a, b) => a - b);
  if (!s.length) return Number.NaN;
  return s[Math.min(s.length, Math.max(1, Math.ceil(0.99 * s.length))) - 1];
}

async function underLoad(lab: Lab, count: number): Promise<{ ping: PingResult; transfer: TransferResult }> {
  const g = lab.guests[0];
  const seconds = Math.ceil(WARMUP_MS / 1000 + count * PING_INTERVAL_S + 2);
  const [[transfer], ping] = await Promise.all([
    runTransfers(lab, [{ guest: g, direction: "download", protocol: "tcp", seconds }]),
    sleep(WARMUP_MS).then(() => pingLatency(lab.peerNs, g.ipv4, { count, intervalSec: PING_INTERVAL_S })),
  ]);
  return { ping, transfer };
}

export async function latency(opts: BenchOptions): Promise<BenchResult[]> {
  const count = opts.quick ? 300 : 400;
  const rounds = opts.quick ? 1 : 2;
  return withLab(async (lab, h) => {
    const g = lab.guests[0];
    const tc = (args: string[], allowFail = false) => run("tc", ["-n", lab.hostNs, ...args], { allowFail });
    const idle = await pingLatency(lab.peerNs, g.ipv4, { count: 100, intervalSec: PING_INTERVAL_S });
    const samples = { virtqos: [] as number[], naive: [] as number[], fifo: [] as number[] };
    const perRound: Record<string, unknown>[] = [];
    const uuid = uuidFor("bench-lat");
    let virtqosTc: string[] = [];
    for (let round_ = 0; round_ < rounds; round_++) {
      // virtqos's recipe
      const applied = await applyXml(h, [
        domainXml("bench-lat", uuid, [
          {
            guest: g,
            bridge: lab.bridge,
            inbound: { average: kBpsForMbit(MBIT) },
            outbound: { average: kBpsForMbit(MBIT) },
          },
        ]),
      ]);
      if (applied.failure || applied.plan.problems.length) throw new Error("virtqos apply failed");
      if (applied.rendered.tc.length) virtqosTc = applied.rendered.tc;
      const v = await underLoad(lab, count);
      await removeDomain(h, uuid);
      // Kernel VM: virtqos's FIFO recipe too (`leaf: fifo`, what the test kernel gets), next to fq_codel.
      let f: Awaited<ReturnType<typeof underLoad>> | undefined;
      if (opts.kernelVm) {
        const limits = { average: kBpsForMbit(MBIT) };
        const xml = domainXml("bench-lat", uuid, [
          { guest: g, bridge: lab.bridge, inbound: limits, outbound: limits },
        ]);
        const fifo = await applyXml(h, [xml], policy("leaf: fifo\n"));
        if (fifo.failure || fifo.plan.problems.length) throw new Error("virtqos apply (leaf: fifo) failed");
        f = await underLoad(lab, count);
        await removeDomain(h, uuid);
        samples.fifo.push(...f.ping.samplesMs);
      }
      // The naive recipe, by hand, on the same tap.
      await tc(["qdisc", "replace", "dev", g.tap, "root", "handle", "1:", "htb", "default", "1"]);
      await tc([
        "class",
        "add",
        "dev",
        g.tap,
        "parent",
        "1:",
        "classid",
        "1:1",
        "htb",
        "rate",
        `${MBIT}mbit`,
      ]);
      const naiveLeaf = (await tc(["qdisc", "show", "dev", g.tap])).stdout.trim();
      const n = await underLoad(lab, count);
      await tc(["qdisc", "del", "dev", g.tap, "root"], true);
      samples.virtqos.push(...v.ping.samplesMs);
      samples.naive.push(...n.ping.samplesMs);
      const summary = (x: { ping: PingResult; transfer: TransferResult }) => ({
        p50Ms: round(x.ping.p50Ms, 2),
        p99Ms: round(x.ping.p99Ms, 2),
        maxMs: round(x.ping.maxMs, 2),
        lossPercent: round(x.ping.lossPercent, 2),
        loadL2Mbit: round(x.transfer.l2BitsPerSec / 1e6, 3),
        loadRetransmits: x.transfer.retransmits,
      });
      perRound.push({
        virtqos: summary(v),
        naive: { ...summary(n), qdiscs: naiveLeaf },
        ...(f ? { virtqosFifo: summary(f) } : {}),
      });
      opts.log(
        `  round ${round_ + 1}: virtqos p99 ${v.ping.p99Ms.toFixed(1)} ms, naive p99 ${n.ping.p99Ms.toFixed(1)} ms${f ? `, virtqos leaf fifo p99 ${f.ping.p99Ms.toFixed(1)} ms` : ""}`,
      );
    }
    const vq = p99(samples.virtqos);
    const nv = p99(samples.naive);
    const details = {
      configuredMbit: MBIT,
      pingsPerRound: count,
      rounds,
      idleP99Ms: round(idle.p99Ms, 3),
      virtqosP99Ms: round(vq, 2),
      naiveP99Ms: round(nv, 2),
      naiveOverVirtqos: round(nv / vq, 2),
      perRound,
      virtqosTc,
      naiveTc: [
        `qdisc replace dev ${g.tap} root handle 1: htb default 1`,
        `class add dev ${g.tap} parent 1: classid 1:1 htb rate ${MBIT}mbit`,
      ],
    };
    return [
      atMost(
        "latency.10mbit.virtqos_p99",
        "ping p99 under saturated TCP download",
        round(vq, 2),
        "ms",
        30,
        details,
      ),
      info("latency.10mbit.naive_p99", "ping p99, naive HTB + 1000-packet FIFO", round(nv, 2), "ms", {
        perRound: perRound.map((r) => r.naive),
      }),
      info("latency.10mbit.naive_over_virtqos", "naive p99 / virtqos p99", round(nv / vq, 2), "ratio", {}),
      ...(samples.fifo.length
        ? [
            info(
              "latency.10mbit.virtqos_fifo_p99",
              "ping p99, virtqos with `leaf: fifo` (the test kernel's recipe)",
              round(p99(samples.fifo), 2),
              "ms",
              { perRound: perRound.map((r) => r.virtqosFifo) },
            ),
          ]
        : []),
    ];
  });
}
