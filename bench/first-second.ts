// 2. First second: how far above the limit a fresh transfer gets in its first second (token bucket burst).
import { sleep } from "../src/lab/exec.js";
import { runTransfers } from "../src/lab/iperf.js";
import { applyXml, domainXml, removeDomain, uuidFor } from "../test/helpers/netns.js";
import { atMost, type BenchOptions, type BenchResult, round } from "./common.js";
import { kBpsForMbit, withLab } from "./lab.js";

export async function firstSecond(opts: BenchOptions): Promise<BenchResult[]> {
  return withLab(async (lab, h) => {
    const g = lab.guests[0];
    const results: BenchResult[] = [];
    const uuid = uuidFor("bench-first");
    for (const mbit of [10, 100]) {
      const xml = domainXml("bench-first", uuid, [
        {
          guest: g,
          bridge: lab.bridge,
          inbound: { average: kBpsForMbit(mbit) },
          outbound: { average: kBpsForMbit(mbit) },
        },
      ]);
      const applied = await applyXml(h, [xml]);
      if (applied.failure || applied.plan.problems.length) throw new Error(`apply ${mbit} Mbit/s failed`);
      for (const direction of ["download", "upload"] as const) {
        // Let the bucket refill completely (an idle guest starting a transfer is the case that matters).
        await sleep(500);
        const [r] = await runTransfers(lab, [
          { guest: g, direction, protocol: "tcp", seconds: 3, omitSeconds: 0, intervalSeconds: 1 },
        ]);
        const ratio = r.firstSecondL2BitsPerSec / (mbit * 1e6);
        const row = atMost(
          `first_second.${mbit}mbit.tcp.${direction}`,
          "first-second L2 / configured",
          round(ratio, 4),
          "ratio",
          1.1,
          {
            configuredMbit: mbit,
            firstSecondL2Mbit: round(r.firstSecondL2BitsPerSec / 1e6, 3),
            intervalsL2Mbit: r.intervals.map((i) => round(i.l2BitsPerSec / 1e6, 2)),
            wholeRunL2Mbit: round(r.l2BitsPerSec / 1e6, 3),
            retransmits: r.retransmits,
            tc: applied.rendered.tc,
          },
        );
        opts.log(`  ${row.name}: ${row.value} (${row.pass ? "ok" : "FAIL"})`);
        results.push(row);
      }
    }
    await removeDomain(h, uuid);
    return results;
  });
}
