// Groups: (1) classification cost does not grow with the group — one busy member's throughput at a high
// ceiling in a group of 1000 vs a group of 10, measured alternately in one run, plus apply and join times;
// (2) fairness — Jain's index of ten busy members' shares relative to their floors.
import { run } from "../src/lab/exec.js";
import { runTransfers } from "../src/lab/iperf.js";
import { createLab } from "../src/lab/topology.js";
import { applyXml, domainXml, harness, policy, removeDomain } from "../test/helpers/netns.js";
import {
  atLeast,
  type BenchOptions,
  type BenchResult,
  errored,
  info,
  median,
  nowMs,
  onCleanup,
  round,
} from "./common.js";

const hex2 = (n: number) => n.toString(16).padStart(2, "0");
const uuid = (prefix: string, i: number) => `${prefix}-0000-4000-8000-${i.toString(16).padStart(12, "0")}`;

function fakeMemberXml(i: number): string {
  const mac = `52:54:00:c${(i >> 16) & 0xf}:${hex2((i >> 8) & 0xff)}:${hex2(i & 0xff)}`;
  return `<domain type='kvm'><name>gb-${i}</name><uuid>${uuid("9b000000", i)}</uuid><devices><interface type='bridge'><mac address='${mac}'/><source bridge='br0'/><target dev='gbt${i}'/></interface></devices></domain>`;
}

const BIG_GROUP = `
groups:
  - name: big
    inbound: { average: 40gbit }
    outbound: { average: 40gbit }
    memberDefaults:
      inbound: { floor: 1mbit }
      outbound: { floor: 1mbit }
    select: { domains: ["gb-*", "busy"] }
`;

async function classification(opts: BenchOptions): Promise<BenchResult[]> {
  const lab = await createLab({ guests: [{ name: "busy" }] });
  const drop = onCleanup(() => lab.destroy());
  try {
    const h = await harness(lab);
    const members = opts.quick ? 300 : 1000;
    // Fake members: veth ends in the host namespace, one `ip -batch`; they carry no traffic, they only fill
    // the tree and its hash table as 1000 guests would.
    const lines: string[] = [];
    for (let i = 1; i < members; i++)
      lines.push(`link add gbt${i} type veth peer name gbp${i}`, `link set gbt${i} up`);
    await run("ip", ["-n", lab.hostNs, "-batch", "-"], { input: `${lines.join("\n")}\n` });
    const pol = policy(BIG_GROUP);
    const busy = lab.guests[0];
    const busyXml = domainXml("busy", uuid("9b0000ff", 0), [{ guest: busy, bridge: lab.bridge }]);
    const small = Array.from({ length: 9 }, (_, k) => fakeMemberXml(k + 1));
    const big = Array.from({ length: members - 1 }, (_, k) => fakeMemberXml(k + 1));
    const scope = [uuid("9b0000ff", 0), ...big.map((x) => /<uuid>([^<]+)/.exec(x)![1])];
    let t = nowMs();
    await applyXml(h, [busyXml, ...small], pol, { scope });
    const applySmallMs = nowMs() - t;
    const rates: Record<"small" | "big", number[]> = { small: [], big: [] };
    let applyBigMs = 0;
    let joinMs = 0;
    const rounds = opts.quick ? 2 : 4;
    for (let r = 0; r < rounds; r++) {
      for (const size of ["small", "big"] as const) {
        const xmls = size === "small" ? [busyXml, ...small] : [busyXml, ...big];
        t = nowMs();
        const res = await applyXml(h, xmls, pol, { scope });
        if (size === "big" && r === 0) applyBigMs = nowMs() - t;
        if (res.failure) throw new Error(res.failure.message);
        const [down] = await runTransfers(lab, [
          {
            guest: busy,
            direction: "download",
            protocol: "tcp",
            seconds: opts.quick ? 3 : 5,
            omitSeconds: 1,
          },
        ]);
        rates[size].push(down.l2BitsPerSec);
        opts.log(
          `groups: ${size === "small" ? 10 : members} members: busy member ${(down.l2BitsPerSec / 1e9).toFixed(2)} Gbit/s`,
        );
      }
    }
    // One more guest joining the big group: only its class and filter are added.
    const joinXml = fakeMemberXml(members);
    await run("ip", [
      "-n",
      lab.hostNs,
      "link",
      "add",
      `gbt${members}`,
      "type",
      "veth",
      "peer",
      "name",
      `gbp${members}`,
    ]);
    await run("ip", ["-n", lab.hostNs, "link", "set", `gbt${members}`, "up"]);
    t = nowMs();
    const joined = await applyXml(h, [joinXml], pol);
    joinMs = nowMs() - t;
    const smallRate = median(rates.small);
    const bigRate = median(rates.big);
    h.cleanup();
    return [
      atLeast(
        "groups.classification_1000_over_10",
        `throughput of one busy member, group of ${members} / group of 10`,
        round(bigRate / smallRate),
        "ratio",
        0.9,
        {
          members,
          smallGbitPerSec: rates.small.map((x) => round(x / 1e9)),
          bigGbitPerSec: rates.big.map((x) => round(x / 1e9)),
          note: "one u32 hash on the last MAC byte, then an exact match in a 256-bucket table",
        },
      ),
      info(
        "groups.apply_10_members_ms",
        "cold apply, group of 10 (busy + 9)",
        round(applySmallMs, 1),
        "ms",
        {},
      ),
      info(
        `groups.apply_${members}_members_ms`,
        `apply growing the group from 10 to ${members} members`,
        round(applyBigMs, 1),
        "ms",
        {},
      ),
      info(
        "groups.join_one_into_big_ms",
        `one guest joining the ${members}-member group`,
        round(joinMs, 1),
        "ms",
        {
          ops: joined.plan.ops.length,
        },
      ),
    ];
  } finally {
    drop();
    await lab.destroy();
  }
}

async function fairness(opts: BenchOptions): Promise<BenchResult[]> {
  const floors = [2, 2, 3, 3, 4, 4, 5, 5, 6, 6]; // Mbit/s, 40 in all, under a 60 Mbit/s ceiling
  const lab = await createLab({ guests: floors.map((_, i) => ({ name: `f${i}` })) });
  const drop = onCleanup(() => lab.destroy());
  try {
    const h = await harness(lab);
    const members = floors.map(
      (f, i) => `      - { domain: fair-${i}, inbound: { floor: ${f}mbit }, outbound: { floor: ${f}mbit } }`,
    );
    const pol = policy(
      `groups:\n  - name: fair\n    inbound: { average: 60mbit }\n    outbound: { average: 60mbit }\n    members:\n${members.join("\n")}\n`,
    );
    const uuids = floors.map((_, i) => uuid("9c000000", i));
    const xmls = lab.guests.map((g, i) =>
      domainXml(`fair-${i}`, uuids[i], [{ guest: g, bridge: lab.bridge }]),
    );
    const r = await applyXml(h, xmls, pol);
    if (r.failure || r.plan.problems.length)
      throw new Error(r.failure?.message ?? JSON.stringify(r.plan.problems));
    const out: BenchResult[] = [];
    for (const direction of ["download", "upload"] as const) {
      const res = await runTransfers(
        lab,
        lab.guests.map((guest) => ({
          guest,
          direction,
          protocol: "tcp" as const,
          seconds: opts.quick ? 4 : 6,
          omitSeconds: 2,
        })),
      );
      const shares = res.map((x, i) => x.l2BitsPerSec / (floors[i] * 1e6));
      const jain =
        shares.reduce((a, b) => a + b, 0) ** 2 / (shares.length * shares.reduce((a, b) => a + b * b, 0));
      const total = res.reduce((a, x) => a + x.l2BitsPerSec, 0);
      opts.log(
        `groups: fairness ${direction}: Jain ${jain.toFixed(4)}, total ${(total / 1e6).toFixed(1)} Mbit/s`,
      );
      out.push(
        atLeast(
          `groups.fairness_jain_${direction}`,
          "Jain's index of throughput/floor, 10 busy members",
          round(jain, 4),
          "index",
          0.98,
          {
            floorsMbit: floors,
            measuredMbit: res.map((x) => round(x.l2BitsPerSec / 1e6, 2)),
            sharePerFloor: shares.map((x) => round(x, 3)),
            totalMbit: round(total / 1e6, 2),
            ceilingMbit: 60,
          },
        ),
      );
    }
    for (const u of uuids) await removeDomain(h, u);
    h.cleanup();
    return out;
  } finally {
    drop();
    await lab.destroy();
  }
}

export async function groups(opts: BenchOptions): Promise<BenchResult[]> {
  const out: BenchResult[] = [];
  for (const [name, fn] of [
    ["groups.classification", classification],
    ["groups.fairness", fairness],
  ] as const) {
    try {
      out.push(...(await fn(opts)));
    } catch (e) {
      out.push(errored(name, e));
    }
  }
  return out;
}
