import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { runTransfers, type TransferResult } from "../../src/lab/iperf.js";
import type { Lab } from "../../src/lab/topology.js";
import { assertWithin, describeTransfer, kernelGate, mbit, measureUdp } from "../helpers/kernel.js";
import {
  applyXml,
  closeLab,
  domainXml,
  type Harness,
  openLab,
  policy,
  removeDomain,
  tcDump,
  uuidFor,
} from "../helpers/netns.js";

// Accuracy with the leaves the test kernel lacks: fq_codel (what `leaf: auto` picks here; at both rates behind
// the GSO-splitting tbf) and sfq, at 10 and 100 Mbit/s, TCP and UDP, each direction on its own: download = HTB on the tap's egress, upload = the tap's
// ingress redirected (matchall + mirred) to an IFB carrying HTB. Judged at layer 2 (README "Units").

const gate = await kernelGate(["qdisc:fq_codel", "qdisc:sfq", "classifier:matchall", "ifb"]);
const RATES_MBIT = [10, 100];
/** UDP offered at 1.3x the limit: saturates the shaper without spending the VM's CPU on datagrams it drops. */
const UDP_OVERLOAD = 1.3;

for (const leaf of ["auto", "sfq"] as const) {
  const expectLeaf = leaf === "auto" ? "tbf+fq_codel" : "sfq";
  describe(`accuracy with leaf: ${leaf} (${expectLeaf})`, { skip: gate.skip }, () => {
    let lab: Lab;
    let h: Harness;
    before(async () => {
      ({ lab, h } = await openLab({ guests: [{ name: "a" }] }));
    });
    after(() => closeLab(lab, h));

    test("the kernel has what this file tests", () => gate.assertPresent());

    if (leaf === "auto") {
      test("unshaped, the VM carries far more than the highest tested limit", async () => {
        const g = lab.guests[0];
        for (const direction of ["download", "upload"] as const) {
          const [tcp] = await runTransfers(lab, [
            { guest: g, direction, protocol: "tcp", seconds: 2, omitSeconds: 1 },
          ]);
          const [udp] = await runTransfers(lab, [
            {
              guest: g,
              direction,
              protocol: "udp",
              seconds: 2,
              omitSeconds: 1,
              udpRateBitsPerSec: 100e6 * UDP_OVERLOAD,
            },
          ]);
          console.log(describeTransfer(`unshaped TCP ${direction}`, tcp));
          console.log(
            describeTransfer(`unshaped UDP ${direction} (offered ${100 * UDP_OVERLOAD} Mbit/s)`, udp),
          );
          assert.ok(
            tcp.l2BitsPerSec > 3 * 100e6,
            `unshaped TCP ${direction} ${mbit(tcp.l2BitsPerSec)}: the CPU, not the shaper, would limit`,
          );
          // Everything offered arrives: the receiver keeps up with more than the shaper will let through.
          assert.ok(
            udp.l2BitsPerSec > 1.1 * 100e6,
            `unshaped UDP ${direction} ${mbit(udp.l2BitsPerSec)} (loss ${udp.lostPercent} %): the VM cannot carry the UDP test`,
          );
        }
      });
    }

    for (const rate of RATES_MBIT) {
      for (const protocol of ["tcp", "udp"] as const) {
        // Known failure, kept running and reported: UDP at 100 Mbit/s download, one iperf3 sender in the TCG
        // VM. sfq measured 0.78-0.97 of the limit, fq_codel 0.98-1.00 on quiet runs but 0.958-0.968 on
        // 2026-11-29 (and 0.82-0.96 with the GSO-splitting tbf in front, before that stage was limited to
        // < 54 Mbit/s), always with no loss at the shaper: the sender did not offer the limit. Upload and TCP
        // pass; the host benchmarks measure UDP at 100 Mbit/s at 1.000.
        const todo =
          rate === 100 && protocol === "udp"
            ? `${leaf === "sfq" ? "sfq" : "fq_codel"} at 100 Mbit/s UDP download in the VM: 0.78-0.97 (sfq), 0.958-1.00 (fq_codel), no loss at the shaper; the VM's UDP sender, not yet separated from the shaper`
            : undefined;
        test(
          `${rate} Mbit/s ${protocol.toUpperCase()}, download and upload within 3 %`,
          { todo },
          async () => {
            const g = lab.guests[0];
            const uuid = uuidFor("acc");
            const pol = policy(
              `leaf: ${leaf}\ndomains:\n  - name: acc\n    inbound: { average: ${rate}mbit }\n    outbound: { average: ${rate}mbit }\n`,
            );
            const r = await applyXml(h, [domainXml("acc", uuid, [{ guest: g, bridge: lab.bridge }])], pol);
            assert.equal(r.failure, undefined, r.failure?.message);
            assert.deepEqual(r.plan.problems, []);
            const dump = await tcDump(lab.hostNs, g.tap);
            if (leaf === "auto" && rate < 54) {
              // Below ~54 Mbit/s: fq_codel behind the GSO-splitting tbf.
              assert.match(dump, /qdisc tbf 7656: parent 7651:1\b/, dump);
              assert.match(dump, /qdisc fq_codel 7657: parent 7656:1\b/, dump);
            } else if (leaf === "auto") assert.match(dump, /qdisc fq_codel 7654: parent 7651:1\b/, dump);
            else assert.match(dump, /qdisc sfq \w+: parent 7651:1\b/, dump);
            assert.match(dump, /pref 64000 matchall/, dump);
            try {
              for (const direction of ["download", "upload"] as const) {
                const what = `${expectLeaf} ${rate} Mbit/s ${protocol} ${direction}`;
                const once = async () =>
                  (
                    await runTransfers(lab, [
                      {
                        guest: g,
                        direction,
                        protocol,
                        seconds: 4,
                        omitSeconds: 1,
                        udpRateBitsPerSec: rate * 1e6 * UDP_OVERLOAD,
                      },
                    ])
                  )[0];
                let res: TransferResult;
                if (protocol === "udp") res = await measureUdp(what, rate * 1e6, once);
                else {
                  res = await once();
                  console.log(describeTransfer(what, res, rate * 1e6));
                }
                assertWithin(res.l2BitsPerSec, rate * 1e6, what);
              }
            } finally {
              await removeDomain(h, uuid);
            }
          },
        );
      }
    }
  });
}
