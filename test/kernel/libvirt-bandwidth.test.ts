import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { run } from "../../src/lab/exec.js";
import { runTransfers } from "../../src/lab/iperf.js";
import type { Lab } from "../../src/lab/topology.js";
import { assertWithin, describeTransfer, kernelGate, mbit, tailMean, udpStreams } from "../helpers/kernel.js";
import { closeLab, domainXml, type Harness, openLab, uuidFor } from "../helpers/netns.js";

// libvirt's own <bandwidth> already on the tap when virtqos runs, as libvirt 9.0 applies it on a kernel that
// has sfq and police (src/util/virnetdevbandwidth.c, virNetDevBandwidthSet: clear, `htb 1:` root, class 1:1
// with libvirt's quantum, sfq leaf, fw filter; `ingress` qdisc and a match-all u32 police filter at the
// kernel's default priority, 49152). virtqos must not fight it: ROOT_QDISC_FOREIGN for the root,
// INGRESS_FILTER_FOREIGN for the police filter that runs before its redirect (prio 64000), exit 3, that
// interface left alone, and `virtqos status` calling it a mismatch (exit 4). The guest gets libvirt's rate, not
// virtqos's, until the operator removes libvirt's state. The real CLI (bin/virtqos, dist/) runs against the lab.

const gate = await kernelGate(["qdisc:sfq", "action:police", "classifier:fw", "classifier:u32", "ifb"]);
const CLI = new URL("../../bin/virtqos", import.meta.url).pathname;

/** libvirt's units: kB/s. 2500 = 20 Mbit/s for libvirt, 625 = 5 Mbit/s for virtqos. */
const LIBVIRT_AVERAGE = 2500;
const LIBVIRT_BITS = LIBVIRT_AVERAGE * 8000;
const VIRTQOS_BITS = 5e6;

/** The argv of every tc command libvirt 9.0 runs for <inbound average=A/><outbound average=A/> on `dev`. */
function libvirtTcCommands(dev: string, average: number): { args: string[]; mayFail?: boolean }[] {
  // virNetDevBandwidthCmdAddOptimalQuantum: r2q = average * 1024 / 8 / 1500 (integer division).
  const quantum = String(Math.max(1, Math.floor((average * 1024) / 8 / 1500)));
  const kbps = `${average}kbps`;
  return [
    // virNetDevBandwidthClear (errors ignored)
    { args: ["qdisc", "del", "dev", dev, "root"], mayFail: true },
    { args: ["qdisc", "del", "dev", dev, "ingress"], mayFail: true },
    // tx = the guest's inbound (download) on the tap's egress
    { args: ["qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1"] },
    {
      args: [
        "class",
        "add",
        "dev",
        dev,
        "parent",
        "1:",
        "classid",
        "1:1",
        "htb",
        "rate",
        kbps,
        "quantum",
        quantum,
      ],
    },
    { args: ["qdisc", "add", "dev", dev, "parent", "1:1", "handle", "2:", "sfq", "perturb", "10"] },
    {
      args: [
        "filter",
        "add",
        "dev",
        dev,
        "parent",
        "1:0",
        "protocol",
        "all",
        "prio",
        "1",
        "handle",
        "1",
        "fw",
        "flowid",
        "1",
      ],
    },
    // rx = the guest's outbound (upload) on the tap's ingress; burst defaults to `average` KiB
    { args: ["qdisc", "add", "dev", dev, "ingress"] },
    {
      args: [
        ...[
          "filter",
          "add",
          "dev",
          dev,
          "parent",
          "ffff:",
          "protocol",
          "all",
          "u32",
          "match",
          "u32",
          "0",
          "0",
        ],
        ...["police", "rate", kbps, "burst", `${average}kb`, "mtu", "64kb", "drop", "flowid", ":1"],
      ],
    },
  ];
}

interface Problem {
  code: string;
  message: string;
}
interface StatusJson {
  interfaces: { direction: string; matches: boolean; note?: string }[];
}

describe("libvirt's own <bandwidth> on the tap before virtqos", { skip: gate.skip }, () => {
  let lab: Lab;
  let h: Harness;
  let dir: string;
  let xmlFile: string;
  let policyFile: string;
  before(async () => {
    ({ lab, h } = await openLab({ guests: [{ name: "a" }] }));
    dir = mkdtempSync(join(tmpdir(), "virtqos-libvirt-"));
    const g = lab.guests[0];
    xmlFile = join(dir, "lv.xml");
    policyFile = join(dir, "policy.yaml");
    const bw = { average: LIBVIRT_AVERAGE };
    writeFileSync(
      xmlFile,
      domainXml("lv", uuidFor("lv"), [{ guest: g, bridge: lab.bridge, inbound: bw, outbound: bw }]),
    );
    // The policy beats <bandwidth>: virtqos wants 5 Mbit/s each way.
    writeFileSync(
      policyFile,
      "domains:\n  - name: lv\n    inbound: { average: 5mbit }\n    outbound: { average: 5mbit }\n",
    );
  });
  after(async () => {
    await cli("clear");
    await closeLab(lab, h);
    rmSync(dir, { recursive: true, force: true });
  });

  const cli = (...args: string[]) =>
    run(process.execPath, [CLI, "--netns", lab.hostNs, "--run-dir", dir, "--config", policyFile, ...args], {
      allowFail: true,
    });
  const apply = async () => {
    const r = await cli("apply", "--xml", xmlFile, "--json");
    const out = JSON.parse(r.stdout) as { problems: Problem[] };
    return { code: r.code, problems: out.problems.map((p) => p.code).sort(), raw: out };
  };
  const status = async () => {
    const r = await cli("status", "--json");
    const text = await cli("status");
    const rows = (JSON.parse(r.stdout) as StatusJson).interfaces;
    const match = Object.fromEntries(rows.map((x) => [x.direction, x.matches]));
    return { code: r.code, match, text: text.stdout, rows };
  };
  const tc = (...args: string[]) => run("tc", ["-n", lab.hostNs, ...args]);

  test("the kernel has what this file tests", () => gate.assertPresent());

  test("libvirt 9.0's exact tc commands apply on this kernel", async () => {
    const g = lab.guests[0];
    for (const c of libvirtTcCommands(g.tap, LIBVIRT_AVERAGE)) {
      const r = await run("tc", ["-n", lab.hostNs, ...c.args], { allowFail: true });
      assert.ok(r.code === 0 || c.mayFail, `tc ${c.args.join(" ")}: ${r.stderr}`);
    }
    const qdiscs = (await tc("qdisc", "show", "dev", g.tap)).stdout;
    const filters = (await tc("filter", "show", "dev", g.tap, "parent", "ffff:")).stdout;
    console.log(`libvirt's state on ${g.tap}:\n${qdiscs}${filters}`);
    assert.match(qdiscs, /qdisc htb 1: root/);
    assert.match(qdiscs, /qdisc sfq 2: parent 1:1/);
    assert.match(qdiscs, /qdisc ingress ffff:/);
    assert.match(filters, /pref 49152 u32/, "the kernel's default priority for the first filter");
    assert.match(filters, /police/);
  });

  test("libvirt's root and police filter: virtqos refuses the interface (ROOT_QDISC_FOREIGN, exit 3)", async () => {
    const g = lab.guests[0];
    const a = await apply();
    console.log(`apply: exit ${a.code}, problems ${a.problems.join(", ")}`);
    for (const p of a.raw.problems) console.log(`  ${p.code}: ${p.message}`);
    assert.ok(a.problems.includes("ROOT_QDISC_FOREIGN"), a.problems.join(", "));
    assert.equal(a.code, 3);
    const qdiscs = (await tc("qdisc", "show", "dev", g.tap)).stdout;
    const filters = (await tc("filter", "show", "dev", g.tap, "parent", "ffff:")).stdout;
    assert.match(qdiscs, /qdisc htb 1: root/, "libvirt's root was replaced");
    assert.doesNotMatch(qdiscs, /7651:/);
    assert.doesNotMatch(filters, /pref 64000/, "virtqos added a redirect behind libvirt's police filter");
    assert.match(filters, /pref 49152 u32[\s\S]*police/, "libvirt's police filter is gone");
    const s = await status();
    console.log(s.text.trim());
    assert.equal(s.code, 4);
    assert.ok(s.rows.length > 0 && s.rows.every((r) => !r.matches), JSON.stringify(s.rows));
    assert.match(s.text, /\bNO\b/);
  });

  test("traffic: the guest gets libvirt's 20 Mbit/s, not virtqos's 5", async () => {
    const g = lab.guests[0];
    await libvirtRateOnUpload(g);
    const [tcpDown] = await runTransfers(lab, [
      { guest: g, direction: "download", protocol: "tcp", seconds: 4, omitSeconds: 1 },
    ]);
    console.log(describeTransfer("TCP download under libvirt's htb 1:", tcpDown, LIBVIRT_BITS));
    assert.ok(
      tcpDown.l2BitsPerSec > 2 * VIRTQOS_BITS,
      `TCP download ${mbit(tcpDown.l2BitsPerSec)}: virtqos's?`,
    );
    assert.ok(
      tcpDown.l2BitsPerSec <= 1.03 * LIBVIRT_BITS,
      `TCP download ${mbit(tcpDown.l2BitsPerSec)} above libvirt's`,
    );
  });

  test("libvirt's police filter alone (its outbound): INGRESS_FILTER_FOREIGN, exit 3; status NO, exit 4", async () => {
    const g = lab.guests[0];
    // What libvirt leaves for <bandwidth><outbound .../></bandwidth> only: the `ingress` qdisc and its filter.
    await tc("qdisc", "del", "dev", g.tap, "root");
    const a = await apply();
    console.log(`apply: exit ${a.code}, problems ${a.problems.join(", ")}`);
    for (const p of a.raw.problems) console.log(`  ${p.code}: ${p.message}`);
    assert.deepEqual(a.problems, ["INGRESS_FILTER_FOREIGN"]);
    assert.equal(a.code, 3);
    const filters = (await tc("filter", "show", "dev", g.tap, "parent", "ffff:")).stdout;
    assert.doesNotMatch(filters, /pref 64000/, "virtqos added a redirect behind libvirt's police filter");
    assert.match(filters, /pref 49152 u32[\s\S]*police/, "libvirt's police filter is gone");
    const s = await status();
    console.log(s.text.trim());
    assert.equal(s.code, 4);
    assert.equal(s.match.outbound, false);
    assert.match(s.text, /\bNO\b/);
    assert.ok(
      s.rows.some((r) => r.direction === "outbound" && /INGRESS_FILTER_FOREIGN/.test(r.note ?? "")),
      JSON.stringify(s.rows),
    );
    await libvirtRateOnUpload(g);
  });

  test("libvirt's filter removed and applied again: virtqos's 5 Mbit/s within 3 %, status matches (exit 0)", async () => {
    const g = lab.guests[0];
    await tc("filter", "del", "dev", g.tap, "parent", "ffff:", "prio", "49152");
    const a = await apply();
    console.log(`apply: exit ${a.code}, problems ${a.problems.join(", ") || "none"}`);
    assert.deepEqual(a.problems, []);
    assert.equal(a.code, 0);
    const s = await status();
    console.log(`status: exit ${s.code}, ${JSON.stringify(s.match)}`);
    assert.deepEqual(s.match, { inbound: true, outbound: true });
    assert.equal(s.code, 0);
    for (const [direction, protocol] of [
      ["upload", "tcp"],
      ["upload", "udp"],
      ["download", "tcp"],
    ] as const) {
      const [r] = await runTransfers(lab, [
        { guest: g, direction, protocol, seconds: 4, omitSeconds: 1, udpRateBitsPerSec: 1.3 * VIRTQOS_BITS },
      ]);
      console.log(describeTransfer(`virtqos ${direction} ${protocol}`, r, VIRTQOS_BITS));
      assertWithin(r.l2BitsPerSec, VIRTQOS_BITS, `${protocol} ${direction} shaped by virtqos`);
    }
  });

  /** Upload under libvirt's police filter: UDP at its rate once the bucket is spent, TCP far above virtqos's. */
  async function libvirtRateOnUpload(g: Lab["guests"][number]): Promise<void> {
    const udp = await udpStreams(lab, g, "upload", 2 * LIBVIRT_BITS, 6);
    const steady = tailMean(udp.intervalsL2, 3);
    console.log(
      `UDP upload under libvirt's police (offered 2x): last 3 s ${mbit(steady)} = ${(steady / LIBVIRT_BITS).toFixed(4)} x libvirt's ${mbit(LIBVIRT_BITS)}; per second ${udp.intervalsL2.map((x) => (x / 1e6).toFixed(1)).join(" ")}`,
    );
    assertWithin(steady, LIBVIRT_BITS, "UDP upload through libvirt's police filter");
    const [tcpUp] = await runTransfers(lab, [
      { guest: g, direction: "upload", protocol: "tcp", seconds: 4, omitSeconds: 2 },
    ]);
    console.log(describeTransfer("TCP upload under libvirt's police", tcpUp, LIBVIRT_BITS));
    // Clearly libvirt's rate, not virtqos's. Through a policer with a one-second bucket (counting from the IP
    // header on ingress) a 4 s TCP average may sit a few % above the police rate.
    assert.ok(
      tcpUp.l2BitsPerSec > 2 * VIRTQOS_BITS,
      `TCP upload ${mbit(tcpUp.l2BitsPerSec)}: virtqos's rate?`,
    );
    assert.ok(
      tcpUp.l2BitsPerSec <= 1.1 * LIBVIRT_BITS,
      `TCP upload ${mbit(tcpUp.l2BitsPerSec)} above libvirt's`,
    );
  }
});
