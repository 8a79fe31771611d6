import { mkdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { processRunner } from "../adapters/exec.js";
import { loadPolicy } from "../adapters/policy-load.js";
import { cachedCapabilities } from "../adapters/probe.js";
import { collectStatus, statusTable } from "../app/status.js";
import { formatTable } from "../app/table.js";
import { formatRate } from "../core/units.js";
import { runHook } from "../hook.js";
import { run } from "./exec.js";
import { runGroupsDemo } from "./groups-demo.js";
import { runTransfers, type TransferResult } from "./iperf.js";
import { createLab, destroyAllLabs, type Lab, type LabGuest } from "./topology.js";

// `virtqos lab`: a libvirt host in network namespaces. Three guests get their limits three different ways
// (<bandwidth>, virtqos <metadata>, the policy file), the real hook code path shapes their "taps", and
// iperf3 measures what each guest really gets, both directions, TCP and UDP.

export interface LabOptions {
  keep?: boolean;
  clean?: boolean;
  quick?: boolean;
  out: string;
  json: boolean;
}

interface GuestPlan {
  name: string;
  uuid: string;
  source: "bandwidth" | "metadata" | "policy";
  inboundBitsPerSec: number;
  outboundBitsPerSec: number;
}

const GUESTS: GuestPlan[] = [
  {
    name: "web-01",
    uuid: "8f2b61a4-3c1d-4e55-9a7e-0b1c2d3e4f01",
    source: "bandwidth",
    inboundBitsPerSec: 20e6,
    outboundBitsPerSec: 10e6,
  },
  {
    name: "db-01",
    uuid: "8f2b61a4-3c1d-4e55-9a7e-0b1c2d3e4f02",
    source: "metadata",
    inboundBitsPerSec: 50e6,
    outboundBitsPerSec: 25e6,
  },
  {
    name: "cache-01",
    uuid: "8f2b61a4-3c1d-4e55-9a7e-0b1c2d3e4f03",
    source: "policy",
    inboundBitsPerSec: 100e6,
    outboundBitsPerSec: 30e6,
  },
];

/** libvirt units: kB/s, 1 kB = 1000 bytes. */
const kBps = (bitsPerSec: number) => bitsPerSec / 8000;

function domainXml(p: GuestPlan, g: LabGuest, bridge: string): string {
  const bandwidth =
    p.source === "bandwidth"
      ? `\n      <bandwidth>\n        <inbound average='${kBps(p.inboundBitsPerSec)}'/>\n        <outbound average='${kBps(p.outboundBitsPerSec)}'/>\n      </bandwidth>`
      : "";
  const metadata =
    p.source === "metadata"
      ? `\n  <metadata>\n    <vq:qos xmlns:vq="https://virtqos.dev/xmlns/qos/1">\n      <vq:interface mac="${g.mac}">\n        <vq:inbound average="${kBps(p.inboundBitsPerSec)}" peak="${kBps(p.inboundBitsPerSec) * 2}" burst="256"/>\n        <vq:outbound average="${kBps(p.outboundBitsPerSec)}"/>\n      </vq:interface>\n    </vq:qos>\n  </metadata>`
      : "";
  return `<domain type='kvm' id='1'>
  <name>${p.name}</name>
  <uuid>${p.uuid}</uuid>${metadata}
  <devices>
    <interface type='bridge'>
      <mac address='${g.mac}'/>
      <source bridge='${bridge}'/>
      <target dev='${g.tap}'/>${bandwidth}
      <model type='virtio'/>
      <alias name='net0'/>
    </interface>
  </devices>
</domain>
`;
}

function policyYaml(p: GuestPlan): string {
  return `# Written by \`virtqos lab\`. Units are explicit: mbit = 10^6 bit/s.
logLevel: info
domains:
  - name: ${p.name}
    interfaces:
      - alias: net0
        inbound: { average: ${p.inboundBitsPerSec / 1e6}mbit }
        outbound: { average: ${p.outboundBitsPerSec / 1e6}mbit }
`;
}

interface Row {
  guest: string;
  source: string;
  direction: "inbound (download)" | "outbound (upload)";
  configuredBitsPerSec: number;
  tcpL2BitsPerSec: number;
  udpL2BitsPerSec: number;
  tcpFirstSecondL2BitsPerSec: number;
}

export async function runLab(opts: LabOptions): Promise<number> {
  if (process.getuid?.() !== 0) {
    process.stderr.write("virtqos lab: must run as root (it creates network namespaces)\n");
    return 1;
  }
  if (opts.clean) {
    const removed = await destroyAllLabs("");
    process.stdout.write(`removed ${removed.length} namespace(s)\n`);
    return 0;
  }
  const say = (s: string) => {
    if (!opts.json) process.stdout.write(`${s}\n`);
  };
  const out = resolve(opts.out);
  mkdirSync(out, { recursive: true });
  const runDir = join(out, "run");
  const seconds = opts.quick ? 2 : 4;

  say("virtqos lab: building a simulated libvirt host in network namespaces");
  const lab: Lab = await createLab({ guests: GUESTS.map((g) => ({ name: g.name })) });
  let exitCode = 0;
  try {
    say(`  host namespace ${lab.hostNs}, bridge ${lab.bridge}, peer (the outside world) ${lab.peerNs}`);
    const policyFile = join(out, "policy.yaml");
    writeFileSync(policyFile, policyYaml(GUESTS[2]));
    // The hook reads its configuration from the environment exactly as under libvirtd.
    process.env.VIRTQOS_CONFIG = policyFile;
    process.env.VIRTQOS_RUN_DIR = runDir;
    process.env.VIRTQOS_LOG ??= "stderr";
    const xmls = GUESTS.map((p, i) => domainXml(p, lab.guests[i], lab.bridge));
    GUESTS.forEach((p, i) => {
      writeFileSync(join(out, `${p.name}.xml`), xmls[i]);
      say(
        `  guest ${p.name}: tap ${lab.guests[i].tap}, limits from ${p.source === "policy" ? "the policy file" : `<${p.source}>`}`,
      );
    });

    say("\nrunning the libvirt hook (start begin, started begin) for each guest, as libvirtd would:");
    await Promise.all(
      GUESTS.map(async (p, i) => {
        for (const phase of ["start", "started"]) {
          const r = await runHook([p.name, phase, "begin", "-"], xmls[i], { netns: lab.hostNs });
          if (r.exitCode !== 0 || r.stdout)
            throw new Error(`hook for ${p.name} ${phase} exited ${r.exitCode}`);
        }
      }),
    );
    const runner = processRunner({ netns: lab.hostNs });
    const caps = await cachedCapabilities(runner, runDir);
    say(
      `\nvirtqos status:\n${statusTable(await collectStatus(runner, runDir, caps, loadPolicy(policyFile)))}\n`,
    );

    say(
      `measuring with iperf3 (${seconds} s per run after 1 s of warm-up; TCP then UDP, one direction at a time)...`,
    );
    const rows: Row[] = [];
    for (const [i, p] of GUESTS.entries()) {
      const g = lab.guests[i];
      // One direction at a time: both at once would queue each flow's ACKs behind the other's data.
      const measure = async (protocol: "tcp" | "udp") => {
        const [down] = await runTransfers(lab, [
          {
            guest: g,
            direction: "download",
            protocol,
            seconds,
            omitSeconds: 1,
            udpRateBitsPerSec: p.inboundBitsPerSec * 1.5,
          },
        ]);
        const [up] = await runTransfers(lab, [
          {
            guest: g,
            direction: "upload",
            protocol,
            seconds,
            omitSeconds: 1,
            udpRateBitsPerSec: p.outboundBitsPerSec * 1.5,
          },
        ]);
        return [down, up];
      };
      const [tcpDown, tcpUp] = await measure("tcp");
      const [udpDown, udpUp] = await measure("udp");
      const row = (
        direction: Row["direction"],
        configured: number,
        tcp: TransferResult,
        udp: TransferResult,
      ): Row => ({
        guest: p.name,
        source: p.source,
        direction,
        configuredBitsPerSec: configured,
        tcpL2BitsPerSec: tcp.l2BitsPerSec,
        udpL2BitsPerSec: udp.l2BitsPerSec,
        tcpFirstSecondL2BitsPerSec: tcp.firstSecondL2BitsPerSec,
      });
      rows.push(row("inbound (download)", p.inboundBitsPerSec, tcpDown, udpDown));
      rows.push(row("outbound (upload)", p.outboundBitsPerSec, tcpUp, udpUp));
    }

    const ratio = (x: number, c: number) => `${formatRate(x)} (${(x / c).toFixed(3)})`;
    const table = formatTable([
      ["GUEST", "LIMIT FROM", "DIRECTION", "CONFIGURED", "TCP MEASURED (ratio)", "UDP MEASURED (ratio)"],
      ...rows.map((r) => [
        r.guest,
        r.source,
        r.direction,
        formatRate(r.configuredBitsPerSec),
        ratio(r.tcpL2BitsPerSec, r.configuredBitsPerSec),
        ratio(r.udpL2BitsPerSec, r.configuredBitsPerSec),
      ]),
    ]);
    say(`\n${table}`);
    say(
      "\nRates are judged at layer 2, as tc counts them: receiver goodput x 1514/1448 for TCP (MTU 1500, timestamps)\nand x 1442/1400 for UDP (1400-byte payload). iperf3 payload rates are lower by those factors.",
    );
    const worst = Math.max(
      ...rows.flatMap((r) =>
        [r.tcpL2BitsPerSec, r.udpL2BitsPerSec].map((x) => Math.abs(x / r.configuredBitsPerSec - 1)),
      ),
    );
    const verdict = worst <= 0.05 ? "PASS" : "FAIL";
    say(`verdict: ${verdict} (largest deviation ${(worst * 100).toFixed(1)}%, allowed 5%)`);
    if (verdict === "FAIL") exitCode = 1;

    say("\nrunning the hook for stopped end / release end: everything virtqos created is removed");
    for (const [i, p] of GUESTS.entries()) {
      for (const [op, sub] of [
        ["stopped", "end"],
        ["release", "end"],
      ]) {
        await runHook([p.name, op, sub, "-"], xmls[i], { netns: lab.hostNs });
      }
    }
    const left = await run("ip", ["-n", lab.hostNs, "-j", "link", "show", "type", "ifb"]);
    const leftIfbs = (JSON.parse(left.stdout || "[]") as { ifname: string }[]).filter((l) =>
      l.ifname.startsWith("vq"),
    );
    say(
      leftIfbs.length
        ? `LEAK: ${leftIfbs.map((l) => l.ifname).join(", ")}`
        : "cleanup: no virtqos device or qdisc left",
    );
    if (leftIfbs.length) exitCode = 1;

    // Part two: seed 001's groups, phase by phase, with a chart.
    const groups = await runGroupsDemo({ out, quick: opts.quick, say });
    say(
      `groups verdict: ${groups.ok ? "PASS" : "FAIL"} (every guest within 10% of its guarantee or ceiling at the end of each phase)`,
    );
    if (!groups.ok) exitCode = 1;

    const results = {
      rows,
      worstDeviation: worst,
      verdict,
      groups: { verdict: groups.ok ? "PASS" : "FAIL", phases: groups.results, chart: groups.chart },
      labNamespaces: [lab.hostNs, lab.peerNs],
    };
    writeFileSync(join(out, "results.json"), `${JSON.stringify(results, null, 2)}\n`);
    if (opts.json) process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
    say(`results written to ${join(out, "results.json")}`);
    if (opts.keep) {
      say(
        `\n--keep: namespaces left in place (${lab.hostNs}, ${lab.peerNs}, vqg-*); remove them with \`virtqos lab --clean\``,
      );
      // Re-apply so there is something to poke at.
      for (const [i, p] of GUESTS.entries())
        await runHook([p.name, "start", "begin", "-"], xmls[i], { netns: lab.hostNs });
    }
  } finally {
    if (!opts.keep) await lab.destroy();
  }
  return exitCode;
}
