// 1. Accuracy: achieved/configured at layer 2, per rate, protocol and direction (one direction at a time).

import { interfaceIfbName } from "../src/core/names.js";
import { runTransfers, type Transfer, type TransferResult } from "../src/lab/iperf.js";
import { applyXml, domainXml, removeDomain, uuidFor } from "../test/helpers/netns.js";
import { type BenchOptions, type BenchResult, between, info, nowMs, round } from "./common.js";
import { kBpsForMbit, withLab } from "./lab.js";
import { startMonitor } from "./monitor.js";

const RATES_MBIT = [1, 10, 100, 1000];
/** In the kernel VM (TCG) unshaped TCP tops out at ~0.6-1.3 Gbit/s: 1000 Mbit/s would measure the CPU. */
const KERNEL_VM_RATES_MBIT = [1, 10, 100];
const UDP_OVERLOAD = 1.3;
const UDP_RETRIES = 2;

/** What the iperf3 client says it sent (payload), Mbit/s. */
function senderMbit(r: TransferResult): number | undefined {
  const client = (
    r.raw as {
      client?: { end?: { sum?: { bits_per_second?: number }; sum_sent?: { bits_per_second?: number } } };
    }
  )?.client;
  const bps = client?.end?.sum_sent?.bits_per_second ?? client?.end?.sum?.bits_per_second;
  return bps === undefined ? undefined : round(bps / 1e6, 3);
}

export async function accuracy(opts: BenchOptions): Promise<BenchResult[]> {
  const seconds = opts.quick ? 3 : 6;
  const omitSeconds = opts.quick ? 1 : 2;
  return withLab(async (lab, h) => {
    const g = lab.guests[0];
    const results: BenchResult[] = [];
    // What the lab carries without any shaping: the ceiling for judging the 1000 Mbit/s rows.
    const baseline: Record<string, number> = {};
    for (const direction of ["download", "upload"] as const) {
      const [r] = await runTransfers(lab, [
        { guest: g, direction, protocol: "tcp", seconds: 2, omitSeconds: 1 },
      ]);
      baseline[direction] = r.l2BitsPerSec;
    }
    opts.log(
      `  unshaped TCP capacity: download ${(baseline.download / 1e6).toFixed(0)} Mbit/s, upload ${(baseline.upload / 1e6).toFixed(0)} Mbit/s (L2)`,
    );
    results.push(
      info(
        "accuracy.unshaped_tcp_download",
        "L2 rate, no shaping",
        round(baseline.download / 1e6, 1),
        "Mbit/s",
        {},
      ),
      info(
        "accuracy.unshaped_tcp_upload",
        "L2 rate, no shaping",
        round(baseline.upload / 1e6, 1),
        "Mbit/s",
        {},
      ),
    );
    const uuid = uuidFor("bench-acc");
    for (const mbit of opts.kernelVm ? KERNEL_VM_RATES_MBIT : RATES_MBIT) {
      const xml = domainXml("bench-acc", uuid, [
        {
          guest: g,
          bridge: lab.bridge,
          inbound: { average: kBpsForMbit(mbit) },
          outbound: { average: kBpsForMbit(mbit) },
        },
      ]);
      const applied = await applyXml(h, [xml]);
      if (applied.failure || applied.plan.problems.length) {
        throw new Error(
          `apply ${mbit} Mbit/s failed: ${applied.failure?.message ?? applied.plan.problems.map((p) => p.message).join("; ")}`,
        );
      }
      const tcLines = applied.rendered.tc;
      const ifb = interfaceIfbName(uuid, g.mac);
      for (const protocol of ["tcp", "udp"] as const) {
        for (const direction of ["download", "upload"] as const) {
          const t: Transfer = {
            guest: g,
            direction,
            protocol,
            seconds,
            omitSeconds,
            udpRateBitsPerSec: protocol === "udp" ? mbit * 1e6 * UDP_OVERLOAD : undefined,
          };
          const measure = async () => {
            const mon = startMonitor({
              ns: lab.hostNs,
              dev: direction === "download" ? g.tap : ifb,
              receiverNs: direction === "download" ? g.ns : lab.peerNs,
              intervalMs: opts.kernelVm ? 2000 : undefined,
            });
            const start = nowMs();
            const [r] = await runTransfers(lab, [t]).finally(() => mon.stop());
            // iperf3 sends for omit + seconds from shortly after `start`; keep clear of both edges.
            const side = await mon.report(
              start + omitSeconds * 1000 + 800,
              start + (omitSeconds + seconds) * 1000 - 200,
            );
            return { r, side, ok: Math.abs(r.l2BitsPerSec / (mbit * 1e6) - 1) <= 0.02 };
          };
          // A UDP receiver that drops datagrams in its own socket buffer (iperf3 not scheduled in time on a busy
          // 2-core host) measured the host, not the shaper: such a miss is retried, and every attempt reported.
          const attempts = [await measure()];
          while (
            protocol === "udp" &&
            attempts.length <= UDP_RETRIES &&
            attempts.every((a) => !a.ok && (a.side.udpRcvbufErrors ?? 0) > 0)
          ) {
            const last = attempts[attempts.length - 1];
            opts.log(
              `  ${mbit}mbit.${protocol}.${direction}: ${(last.r.l2BitsPerSec / (mbit * 1e6)).toFixed(4)} with ${last.side.udpRcvbufErrors} datagrams dropped by the receiving socket (shaper output ${((last.side.shaperL2Mbit ?? Number.NaN) / mbit).toFixed(4)}x); retrying`,
            );
            attempts.push(await measure());
          }
          const chosen = attempts.find((a) => a.ok) ?? attempts[attempts.length - 1];
          const { r, side } = chosen;
          const earlierAttempts = attempts
            .filter((a) => a !== chosen)
            .map((a) => ({
              ratio: round(a.r.l2BitsPerSec / (mbit * 1e6), 4),
              shaperOverConfigured:
                a.side.shaperL2Mbit === undefined ? undefined : round(a.side.shaperL2Mbit / mbit, 4),
              lostPercent: a.r.lostPercent,
              udpRcvbufErrors: a.side.udpRcvbufErrors,
              cpuBusyPct: a.side.cpuBusyPct,
            }));
          const ratio = r.l2BitsPerSec / (mbit * 1e6);
          const row = between(
            `accuracy.${mbit}mbit.${protocol}.${direction}`,
            "achieved/configured (L2)",
            round(ratio, 4),
            "ratio",
            0.98,
            1.02,
            {
              configuredMbit: mbit,
              l2Mbit: round(r.l2BitsPerSec / 1e6, 3),
              goodputMbit: round(r.goodputBitsPerSec / 1e6, 3),
              intervalsL2Mbit: r.intervals.map((i) => round(i.l2BitsPerSec / 1e6, 2)),
              retransmits: r.retransmits,
              lostPercent: r.lostPercent === undefined ? undefined : round(r.lostPercent, 2),
              udpOfferedMbit: protocol === "udp" ? mbit * UDP_OVERLOAD : undefined,
              seconds,
              omitSeconds,
              unshapedL2Mbit: round(baseline[direction] / 1e6, 1),
              senderMbit: senderMbit(r),
              shaperOverConfigured:
                side.shaperL2Mbit === undefined ? undefined : round(side.shaperL2Mbit / mbit, 4),
              ...side,
              otherAttempts: earlierAttempts.length ? earlierAttempts : undefined,
              tc: tcLines,
            },
          );
          const udp =
            protocol === "udp"
              ? `, loss ${r.lostPercent?.toFixed(1)}%, rcvbuf drops ${side.udpRcvbufErrors}`
              : "";
          opts.log(
            `  ${row.name}: ${row.value} (${row.pass ? "ok" : "FAIL"}); shaper output ${side.shaperL2Mbit === undefined ? "?" : (side.shaperL2Mbit / mbit).toFixed(4)}x${udp}, CPU busy ${side.cpuBusyPct}% (steal ${side.cpuStealPct}%)`,
          );
          results.push(row);
        }
      }
    }
    await removeDomain(h, uuid);
    return results;
  });
}
