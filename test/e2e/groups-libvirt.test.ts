/**
 * End-to-end test of virtqos groups through the installed libvirt qemu hook, against the real libvirtd + QEMU
 * (TCG) on this host: one group whose members sit on different interface types (Linux bridge, libvirt
 * network in bridge mode, direct/macvtap on a veth, and an Open vSwitch port where OVS runs), each guest with
 * ONE interface and its limits from the policy only (no <bandwidth>, no metadata). Checked after every step:
 * the two group IFBs (`vqd`/`vqu` + hash of the group) and their aliases, the shared HTB trees (one class, leaf
 * and MAC filter per member, in the u32 bucket of the MAC's last byte), each member's redirects on the right
 * clsact hook (swapped on a macvtap), the state records and `virtqos status --json`; a member leaving touches
 * only its own objects; the last member takes the group IFBs with it; admission: a member whose floor does not
 * fit is still started and shaped on its own at the group ceiling.
 *
 * Like test/e2e/virtqos-hook.test.ts (the plumbing both use is in virtqos-e2e.ts): libvirtd runs the hook
 * with its own environment, so the hook reads the default /etc/virtqos/policy.yaml and writes /run/virtqos;
 * this test writes that policy itself (an existing file is saved and put back at the end), installs the hook
 * with `virtqos install-hook` (an installed one is saved and put back), SIGHUPs libvirtd, and at the end
 * removes what it created and SIGHUPs again. CLI calls run with VIRTQOS_* removed from the environment.
 *
 * The hook logs to stderr here (no /dev/log), which libvirtd only keeps when a hook fails: the admission log
 * line is looked for in libvirtd's log (best effort) and in the stderr of the installed hook run by hand the
 * way libvirt runs it (`NAME started begin -`, live XML on stdin: an idempotent re-apply).
 *
 * Skips with the reason when not root or libvirt is unavailable (run scripts/setup-libvirt.sh --ovs); the OVS
 * member is left out, with the reason, when Open vSwitch does not run. Never run it concurrently with the
 * other libvirt e2e files (it SIGHUPs libvirtd and owns /etc/virtqos/policy.yaml while it runs):
 *   npx tsx --test test/e2e/groups-libvirt.test.ts
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdir, open, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import type { MemberLimit } from "../../src/core/model.js";
import { groupIfbName } from "../../src/core/names.js";
import { recordIfb } from "../../src/core/plan.js";
import {
  createLinuxBridge,
  createNetwork,
  createOvsBridge,
  createVethPair,
  defineDomain,
  destroy,
  domainState,
  domainXml,
  ensureLibvirt,
  type InterfaceSpec,
  linkExists,
  makeDomainXml,
  run,
  runOk,
  startDomain,
  tapsOf,
} from "./libvirt-env.js";
import {
  assertDomainGone,
  cli,
  HOOK_FILE,
  HookTestHost,
  type HtbClassText,
  htbClasses,
  ifindexOf,
  installHook,
  links,
  ms,
  ourFilters,
  qdiscs,
  readRecord,
  virtqosStatus,
  writePolicy,
} from "./virtqos-e2e.js";

const LIBVIRTD_LOG = "/var/log/libvirt/libvirtd.log";
const PRIO_INGRESS = 64000;
const PRIO_EGRESS = 64001;
const GROUP_PRIO = 64010;

// Every host object and domain of this test starts with this prefix ("virtqos groups"): a crashed earlier run is
// swept up front, and nothing collides with virtqos-hook.test.ts ("vqh") or libvirt-env.test.ts ("vqe2e").
// The policy selects the members with the glob "vqg-*" on the domain name.
const P = "vqg";
const MIXED = `${P}-mixed`;
const ADM = `${P}-adm`;
const MBIT = 1_000_000;

const NEUTRAL_POLICY =
  "# Written by test/e2e/groups-libvirt.test.ts; removed (or the original put back) at the end.\n";

/**
 * Step 1-3: every member gets 10 Mbit/s guaranteed and may borrow up to 30 Mbit/s (its own ceiling, from
 * memberDefaults) in a group of 40 Mbit/s: four members (with OVS) have 4 x 10 = 40 of floors, which fits.
 */
const MIXED_POLICY = [
  "# Written by test/e2e/groups-libvirt.test.ts (members of several interface types).",
  "groups:",
  `  - name: ${MIXED}`,
  "    inbound:  { average: 40mbit }",
  "    outbound: { average: 40mbit }",
  "    memberDefaults:",
  "      inbound:  { floor: 10mbit, average: 30mbit }",
  "      outbound: { floor: 10mbit, average: 30mbit }",
  "    select:",
  `      domains: ["${P}-*"]`,
  "",
].join("\n");

/** Step 4: 30 Mbit/s with 10 guaranteed per member: a fourth member (40 > 30) does not fit. */
const ADM_POLICY = [
  "# Written by test/e2e/groups-libvirt.test.ts (admission).",
  "groups:",
  `  - name: ${ADM}`,
  "    inbound:  { average: 30mbit }",
  "    outbound: { average: 30mbit }",
  "    memberDefaults:",
  "      inbound:  { floor: 10mbit }",
  "      outbound: { floor: 10mbit }",
  "    select:",
  `      domains: ["${P}-*"]`,
  "",
].join("\n");

const env = await ensureLibvirt({ ovs: true });

// ------------------------------------------------------------------ helpers

/** Bytes of a file from `offset` to its end (the part of a log written since then). */
async function readFrom(path: string, offset: number): Promise<string> {
  try {
    const fh = await open(path, "r");
    try {
      const size = (await fh.stat()).size;
      if (size <= offset) return "";
      const buf = Buffer.alloc(size - offset);
      await fh.read(buf, 0, buf.length, offset);
      return buf.toString("utf8");
    } finally {
      await fh.close();
    }
  } catch {
    return "";
  }
}

const sizeOf = (path: string) =>
  stat(path).then(
    (s) => s.size,
    () => 0,
  );

// ------------------------------------------------------------ kernel state

/** One u32 node under `parent 7651:` as `tc filter show` prints it (text: the JSON repeats "match" keys). */
interface U32Node {
  prio: number;
  handle: string;
  bucket?: string;
  flowid?: string;
  link?: string;
  divisor?: number;
  /** "match VALUE/MASK at OFF" and "hash mask ..." lines, as printed. */
  matches: string[];
}

async function treeFilters(dev: string): Promise<U32Node[]> {
  const out = await runOk("tc", ["filter", "show", "dev", dev, "parent", "7651:"]);
  const nodes: U32Node[] = [];
  let cur: U32Node | undefined;
  for (const line of out.split("\n")) {
    if (line.startsWith("filter ")) {
      const tok = line.trim().split(/\s+/);
      const get = (re: RegExp) => {
        const i = tok.findIndex((x) => re.test(x));
        return i >= 0 ? tok[i + 1] : undefined;
      };
      const handle = get(/^fh$/);
      cur = undefined;
      if (!handle) continue; // the per-priority header line
      cur = {
        prio: Number(get(/^pref$/)),
        handle,
        bucket: get(/^bkt$/),
        flowid: get(/^\*?flowid$/),
        link: get(/^link$/),
        divisor: get(/^divisor$/) === undefined ? undefined : Number(get(/^divisor$/)),
        matches: [],
      };
      nodes.push(cur);
    } else if (cur && line.trim()) {
      cur.matches.push(line.trim().replace(/\s+/g, " "));
    }
  }
  return nodes.sort((a, b) => a.handle.localeCompare(b.handle));
}

interface Redirect {
  prio: number;
  to?: string;
}

/** virtqos's filters (prio 64000-64099, with actions) on one hook of a device, as prio + redirect target. */
async function redirects(dev: string, hook: "ingress" | "egress"): Promise<Redirect[]> {
  return (await ourFilters(dev, hook)).map((f) => ({ prio: f.prio, to: f.redirectTo }));
}

// --------------------------------------------------------------- test data

type Dir = "inbound" | "outbound";
const DIRS: readonly Dir[] = ["inbound", "outbound"];

interface Guest {
  label: string;
  name: string;
  uuid: string;
  spec: InterfaceSpec;
}

/** Host side of a running member, as found in the kernel. */
interface Live {
  dev: string;
  ifindex: number;
  /** Class minor per direction (from the record), hex as in the classid. */
  minor: Record<Dir, string>;
}

const host = new HookTestHost(
  P,
  NEUTRAL_POLICY,
  [MIXED, ADM].flatMap((g) => DIRS.map((d) => groupIfbName(g, d))),
);

function guest(label: string, spec: InterfaceSpec): Guest {
  return { label, name: `${P}-${label}`, uuid: host.newUuid(), spec };
}

/** How the kernel carries a member's two directions: download from the tap's egress hook, unless macvtap. */
function expectedRedirects(g: Guest, tree: string): Record<"ingress" | "egress", Redirect[]> {
  const swapped = g.spec.type === "direct";
  const down = groupIfbName(tree, "inbound");
  const up = groupIfbName(tree, "outbound");
  return swapped
    ? { ingress: [{ prio: PRIO_INGRESS, to: down }], egress: [{ prio: PRIO_EGRESS, to: up }] }
    : { ingress: [{ prio: PRIO_INGRESS, to: up }], egress: [{ prio: PRIO_EGRESS, to: down }] };
}

/** The u32 keys tc prints for `match ether dst|src MAC` (4-byte aligned words, offsets from the network header). */
function macMatches(mac: string, d: Dir): string[] {
  const b = mac.toLowerCase().split(":");
  return d === "inbound"
    ? [`match 0000${b[0]}${b[1]}/0000ffff at -16`, `match ${b[2]}${b[3]}${b[4]}${b[5]}/ffffffff at -12`]
    : [`match ${b[0]}${b[1]}${b[2]}${b[3]}/ffffffff at -8`, `match ${b[4]}${b[5]}0000/ffff0000 at -4`];
}

const bucketOf = (mac: string) => Number.parseInt(mac.split(":")[5] ?? "", 16).toString(16);

/** A group tree as the kernel has it, for comparisons before/after a member leaves. */
interface TreeSnapshot {
  ifb: string;
  ifindex: number;
  alias?: string;
  root?: string;
  classes: HtbClassText[];
  leaves: { handle: string; parent?: string; kind: string }[];
  filters: U32Node[];
}

async function snapshot(ifb: string): Promise<TreeSnapshot> {
  const link = (await links()).find((l) => l.ifname === ifb);
  assert.ok(link, `group IFB ${ifb} exists`);
  const qd = await qdiscs(ifb);
  const root = qd.find((q) => q.root);
  return {
    ifb,
    ifindex: link.ifindex,
    alias: link.ifalias,
    root: root ? `${root.kind} ${root.handle}` : undefined,
    classes: await htbClasses(ifb),
    leaves: qd
      .filter((q) => !q.root && q.parent?.startsWith("7651:"))
      .map((q) => ({ handle: q.handle, parent: q.parent, kind: q.kind }))
      .sort((a, b) => a.handle.localeCompare(b.handle)),
    filters: await treeFilters(ifb),
  };
}

/** What one member owns in a tree: its class, its leaf qdisc, its MAC filter. */
function memberParts(s: TreeSnapshot, minorHex: string) {
  const classid = `7651:${minorHex}`;
  return {
    cls: s.classes.find((c) => c.classid === classid),
    leaf: s.leaves.find((q) => q.parent === classid),
    filters: s.filters.filter((f) => f.flowid === classid),
  };
}

/** The snapshot without a member's class, leaf and filter. */
function withoutMember(s: TreeSnapshot, minorHex: string): TreeSnapshot {
  const classid = `7651:${minorHex}`;
  return {
    ...s,
    classes: s.classes.filter((c) => c.classid !== classid),
    leaves: s.leaves.filter((q) => q.parent !== classid),
    filters: s.filters.filter((f) => f.flowid !== classid),
  };
}

// -------------------------------------------------------------------- test

test(
  "virtqos groups through the libvirt hook, members of every interface type",
  {
    skip: env.ok ? false : env.reason,
    timeout: 900_000,
  },
  async (t) => {
    const logOffset = await sizeOf(LIBVIRTD_LOG);
    const scratch = join(tmpdir(), `vqg-${process.pid}`);
    t.after(() => rm(scratch, { recursive: true, force: true }));
    await host.setUp(t);
    await mkdir(scratch, { recursive: true });
    const ourTrees = host.ourTrees;

    // ---------------------------------------------------------- install
    await t.test("install-hook + SIGHUP: libvirtd runs the virtqos hook", async () => {
      // (An installed virtqos hook was saved by host.setUp and is put back at the end.)
      const r = await installHook(t);
      assert.equal(r.code, 0, `install-hook: ${r.stderr}`);
      assert.ok(existsSync(HOOK_FILE), `${HOOK_FILE} installed`);
      assert.equal((await stat(HOOK_FILE)).mode & 0o777, 0o755, "hook is executable");
    });

    // ---------------------------------------------------- host prerequisites
    const br0 = await createLinuxBridge(`${P}-br0`);
    const br1 = await createLinuxBridge(`${P}-br1`);
    const veth = await createVethPair(`${P}-up0`, `${P}-up1`);
    const network = await createNetwork({ name: `${P}-net`, mode: "bridge", bridge: br1 });
    const ovsBridge = env.ovs.ok ? await createOvsBridge(`${P}-ovs0`) : undefined;
    const noOvs = ovsBridge ? false : `Open vSwitch is not available: ${env.ovs.reason}`;
    if (!ovsBridge) t.diagnostic(`OVS member left out: ${env.ovs.reason}`);

    // One interface per guest, each of another type. bridge and network share the u32 bucket 0x0a (same last
    // MAC byte), so the exact match inside a bucket is exercised as well.
    const gBridge = guest("bridge", {
      type: "bridge",
      bridge: br0,
      mac: "52:54:00:7b:00:0a",
      target: `${P}-t1`,
    });
    const gNetwork = guest("network", { type: "network", network, mac: "52:54:00:7b:01:0a" });
    const gDirect = guest("direct", {
      type: "direct",
      dev: veth.a,
      mode: "bridge",
      mac: "52:54:00:7b:00:c3",
    });
    const gOvs = guest("ovs", {
      type: "bridge",
      bridge: ovsBridge ?? br0,
      ovs: true,
      mac: "52:54:00:7b:00:f4",
    });
    const gExtra = guest("extra", { type: "bridge", bridge: br0, mac: "52:54:00:7b:00:e5" });
    const mixed: Guest[] = [gBridge, gNetwork, gDirect, ...(ovsBridge ? [gOvs] : [])];
    for (const g of [...mixed, gExtra]) {
      await defineDomain(makeDomainXml({ name: g.name, uuid: g.uuid, interfaces: [g.spec] }));
    }

    /** Running members of the mixed group, as found by the member checks. */
    const live = new Map<string, Live>();

    /**
     * One running member of `tree`: redirects on the right hooks, nothing of its own (no root HTB, no vqi IFB),
     * a class (rate = floor, ceil = ceiling), leaf and MAC filter (bucket = last MAC byte) in both trees, record.
     */
    async function assertMember(g: Guest, tree: string, ceilMbit: number): Promise<Live> {
      const dev = (await tapsOf(g.name)).get(g.spec.mac);
      assert.ok(dev, `${g.name}: the live XML names a host device for ${g.spec.mac}`);
      const where = `${g.name} (${g.label}, ${dev})`;

      const rec = await readRecord(g.uuid);
      assert.equal(rec.domainName, g.name, `${where}: record domain name`);
      assert.equal(rec.interfaces.length, 1, `${where}: record has one interface`);
      const ri = rec.interfaces[0];
      assert.ok(ri, `${where}: record interface`);
      assert.equal(ri.mac, g.spec.mac, `${where}: record mac`);
      assert.equal(ri.dev, dev, `${where}: record dev`);
      assert.equal(ri.ifindex, await ifindexOf(dev), `${where}: record ifindex`);
      assert.equal(recordIfb(g.uuid, ri), undefined, `${where}: no per-interface IFB in the record`);
      assert.equal(ri.group?.tree, tree, `${where}: record group tree`);
      assert.deepEqual(ri.group?.path, [tree], `${where}: record group path`);
      assert.equal(ri.group?.via, "select.domains", `${where}: record group via`);

      // The tap: clsact with one redirect per direction, on the hook that carries it.
      const qd = await qdiscs(dev);
      const root = qd.find((q) => q.root);
      assert.notEqual(
        root?.handle,
        "7651:",
        `${where}: no root HTB of its own on the tap (${JSON.stringify(qd)})`,
      );
      const hookQ = qd.find((q) => q.parent === "ffff:fff1");
      assert.equal(hookQ?.kind, "clsact", `${where}: clsact on the tap (${JSON.stringify(qd)})`);
      const want = expectedRedirects(g, tree);
      assert.deepEqual(await redirects(dev, "ingress"), want.ingress, `${where}: ingress hook redirects`);
      assert.deepEqual(await redirects(dev, "egress"), want.egress, `${where}: egress hook redirects`);
      const own = (await links("ifb")).filter((l) => l.ifalias?.includes(`,${g.uuid},`));
      assert.deepEqual(own, [], `${where}: no IFB of its own`);

      const minor = {} as Record<Dir, string>;
      for (const d of DIRS) {
        const m: MemberLimit | undefined = ri.group?.[d];
        assert.ok(m && m.minor !== undefined, `${where}: record has the ${d} class minor`);
        assert.equal(m.floorBitsPerSec, 10 * MBIT, `${where}: record ${d} floor`);
        assert.equal(m.ceilBitsPerSec, ceilMbit * MBIT, `${where}: record ${d} ceiling`);
        const hex = m.minor.toString(16);
        minor[d] = hex;
        const ifb = groupIfbName(tree, d);
        const s = await snapshot(ifb);
        const parts = memberParts(s, hex);
        const w = `${where} ${d} in ${ifb}`;
        assert.ok(
          parts.cls,
          `${w}: class 7651:${hex} (classes: ${s.classes.map((c) => c.classid).join(" ")})`,
        );
        assert.equal(parts.cls.parent, "7651:1", `${w}: class parent`);
        assert.equal(parts.cls.rate, "10Mbit", `${w}: class rate = floor`);
        assert.equal(parts.cls.ceil, `${ceilMbit}Mbit`, `${w}: class ceil = ceiling`);
        assert.ok(parts.leaf, `${w}: a leaf qdisc under 7651:${hex} (${JSON.stringify(s.leaves)})`);
        assert.equal(
          parts.filters.length,
          1,
          `${w}: one filter to 7651:${hex}: ${JSON.stringify(parts.filters)}`,
        );
        const f = parts.filters[0] as U32Node;
        const bucket = bucketOf(g.spec.mac);
        assert.equal(f.prio, GROUP_PRIO, `${w}: filter prio`);
        assert.equal(f.handle, `100:${bucket}:${hex}`, `${w}: filter handle (bucket = last MAC byte)`);
        assert.equal(f.bucket, bucket, `${w}: filter bucket`);
        assert.deepEqual(
          f.matches,
          macMatches(g.spec.mac, d),
          `${w}: filter matches the guest's ${d === "inbound" ? "destination" : "source"} MAC`,
        );
      }
      return { dev, ifindex: await ifindexOf(dev), minor };
    }

    /** Both trees of a group: aliases, root, top and default classes, hash table and link filter; members exactly `members`. */
    async function assertTrees(tree: string, members: readonly { g: Guest; l: Live }[], rateMbit: number) {
      const groupIfbs = (await links("ifb"))
        .filter((l) => l.ifalias?.startsWith(`virtqos/1,group,${tree},`))
        .map((l) => `${l.ifname} ${l.ifalias}`)
        .sort();
      assert.deepEqual(
        groupIfbs,
        [
          `${groupIfbName(tree, "inbound")} virtqos/1,group,${tree},inbound`,
          `${groupIfbName(tree, "outbound")} virtqos/1,group,${tree},outbound`,
        ].sort(),
        `exactly two IFBs for group ${tree}, with their aliases`,
      );
      for (const d of DIRS) {
        const ifb = groupIfbName(tree, d);
        assert.match(
          ifb,
          d === "inbound" ? /^vqd[0-9a-f]{12}$/ : /^vqu[0-9a-f]{12}$/,
          `${tree} ${d}: IFB name`,
        );
        assert.ok((await links()).find((l) => l.ifname === ifb)?.flags?.includes("UP"), `${ifb} is up`);
        const s = await snapshot(ifb);
        assert.equal(s.root, "htb 7651:", `${ifb}: root qdisc`);
        const top = s.classes.find((c) => c.classid === "7651:1");
        assert.equal(
          `${top?.parent} ${top?.rate} ${top?.ceil}`,
          `root ${rateMbit}Mbit ${rateMbit}Mbit`,
          `${ifb}: class 7651:1`,
        );
        assert.equal(
          s.classes.find((c) => c.classid === "7651:2")?.parent,
          "7651:1",
          `${ifb}: default class 7651:2`,
        );
        const memberIds = members.map((m) => `7651:${m.l.minor[d]}`).sort();
        assert.deepEqual(
          s.classes.map((c) => c.classid).filter((c) => c !== "7651:1" && c !== "7651:2"),
          memberIds,
          `${ifb}: one class per member, nothing else`,
        );
        const ht = s.filters.find((f) => f.handle === "100:");
        assert.equal(ht?.divisor, 256, `${ifb}: hash table 100: with 256 buckets`);
        const link = s.filters.find((f) => f.link === "100:");
        assert.ok(link, `${ifb}: a filter linking to the hash table`);
        assert.equal(link.prio, GROUP_PRIO, `${ifb}: link filter prio`);
        assert.deepEqual(
          s.filters
            .filter((f) => f.flowid)
            .map((f) => f.handle)
            .sort(),
          members.map((m) => `100:${bucketOf(m.g.spec.mac)}:${m.l.minor[d]}`).sort(),
          `${ifb}: one MAC filter per member, nothing else`,
        );
      }
    }

    /** `virtqos status --json`: both directions of every member, with the group, enforced on its IFB, matching. */
    async function assertStatus(tree: string, members: readonly { g: Guest; l: Live }[], ceilMbit: number) {
      const { code, rows } = await virtqosStatus();
      for (const { g, l } of members) {
        const mine = rows.filter((r) => r.domainUuid === g.uuid);
        assert.equal(mine.length, 2, `status rows of ${g.name}: ${JSON.stringify(mine)}`);
        for (const d of DIRS) {
          const row = mine.find((r) => r.direction === d);
          const where = `status ${g.name} ${d}`;
          assert.ok(row, `${where}: row exists`);
          assert.equal(row.matches, true, `${where}: matches (note: ${row.note ?? "-"})`);
          assert.equal(row.group, tree, `${where}: group`);
          assert.equal(row.guest, g.name, `${where}: guest`);
          assert.equal(row.mac, g.spec.mac, `${where}: mac`);
          assert.equal(row.dev, l.dev, `${where}: dev`);
          assert.equal(row.enforcedOn, groupIfbName(tree, d), `${where}: enforced on the group IFB`);
          assert.equal(row.configured.floorBitsPerSec, 10 * MBIT, `${where}: configured floor`);
          assert.equal(row.configured.ceilBitsPerSec, ceilMbit * MBIT, `${where}: configured ceiling`);
          assert.equal(row.kernel?.floorBitsPerSec, 10 * MBIT, `${where}: kernel floor`);
          assert.equal(row.kernel?.ceilBitsPerSec, ceilMbit * MBIT, `${where}: kernel ceiling`);
        }
      }
      // Exit status 4 (mismatch) is right when another, unrelated record on the host does not match.
      assert.equal(code, rows.every((r) => r.matches) ? 0 : 4, "virtqos status exit code");
    }

    /** A stopped domain: no record, no status rows, no IFB with its UUID, nothing of virtqos on its (old) device. */
    async function assertGone(g: Guest, l: { dev: string; ifindex: number } | undefined) {
      await assertDomainGone(g.name, g.uuid);
      if (l && (await linkExists(l.dev)) && (await ifindexOf(l.dev)) === l.ifindex) {
        // (libvirt deletes taps and macvtaps on destroy; if one survived it must carry nothing of virtqos.)
        assert.deepEqual(await redirects(l.dev, "ingress"), [], `${g.name}: ${l.dev} ingress`);
        assert.deepEqual(await redirects(l.dev, "egress"), [], `${g.name}: ${l.dev} egress`);
      }
    }

    async function startTimed(g: Guest, what: string): Promise<void> {
      const t0 = performance.now();
      await startDomain(g.name);
      t.diagnostic(`virsh start ${g.name} (${what}): ${ms(t0)}`);
      assert.equal(await domainState(g.name), "running");
    }

    async function destroyTimed(g: Guest): Promise<void> {
      const t0 = performance.now();
      await destroy(g.name);
      t.diagnostic(`virsh destroy ${g.name}: ${ms(t0)}`);
      assert.equal(await domainState(g.name), "shut off");
    }

    // ------------------------------------------------- 1. start the members
    await t.test(
      `start ${mixed.length} guests, one interface each, all selected into group ${MIXED}`,
      async () => {
        await writePolicy(MIXED_POLICY);
        for (const g of mixed) await startTimed(g, g.label);
      },
    );

    // ------------------------------------------------------ 2. the trees
    await t.test(
      "each member: redirects on the right hooks, class + MAC filter in both group trees",
      async (st) => {
        for (const g of [gBridge, gNetwork, gDirect, gOvs]) {
          await st.test(`${g.label} member`, { skip: g === gOvs ? noOvs : false }, async () => {
            const l = await assertMember(g, MIXED, 30);
            live.set(g.label, l);
            st.diagnostic(
              `${g.name}: ${l.dev} classes 7651:${l.minor.inbound} (down) 7651:${l.minor.outbound} (up), bucket ${bucketOf(g.spec.mac)}`,
            );
          });
        }
      },
    );

    const running = () =>
      mixed.flatMap((g) => (live.has(g.label) ? [{ g, l: live.get(g.label) as Live }] : []));
    /** Devices that carry virtqos objects while the mixed members run: their taps and the group's two IFBs. */
    const liveObjects = (tree: string) => [
      ...running().map((m) => m.l.dev),
      ...DIRS.map((d) => groupIfbName(tree, d)),
    ];

    await t.test(`exactly two group IFBs for ${MIXED}; the trees hold exactly the members`, async () => {
      assert.equal(running().length, mixed.length, "every member passed its checks");
      await assertTrees(MIXED, running(), 40);
      assert.deepEqual(await host.strayObjects(liveObjects(MIXED)), [], "no other virtqos object");
    });

    await t.test("virtqos status --json: every member with its group, matching", async () => {
      await assertStatus(MIXED, running(), 30);
    });

    // --------------------------------------------- 3. one member leaves, then all
    await t.test("destroy one member: only its classes, leaves, filters and redirects go", async () => {
      const leaving = gNetwork; // shares bucket 0x0a with the bridge member: that one's filter must stay
      const l = live.get(leaving.label);
      assert.ok(l, `${leaving.name} was running`);
      const before = new Map<Dir, TreeSnapshot>();
      for (const d of DIRS) before.set(d, await snapshot(groupIfbName(MIXED, d)));
      await destroyTimed(leaving);
      live.delete(leaving.label);
      for (const d of DIRS) {
        const ifb = groupIfbName(MIXED, d);
        const after = await snapshot(ifb);
        const was = before.get(d) as TreeSnapshot;
        const gone = memberParts(after, l.minor[d]);
        assert.equal(gone.cls, undefined, `${ifb}: class 7651:${l.minor[d]} of ${leaving.name} is gone`);
        assert.equal(gone.leaf, undefined, `${ifb}: leaf of ${leaving.name} is gone`);
        assert.deepEqual(gone.filters, [], `${ifb}: filter of ${leaving.name} is gone`);
        assert.equal(after.ifindex, was.ifindex, `${ifb}: the same IFB (not re-created)`);
        assert.deepEqual(after, withoutMember(was, l.minor[d]), `${ifb}: everything else is untouched`);
      }
      await assertGone(leaving, l);
      await assertTrees(MIXED, running(), 40);
      for (const m of running()) {
        assert.deepEqual(await assertMember(m.g, MIXED, 30), m.l, `${m.g.name}: same device and classes`);
      }
      await assertStatus(MIXED, running(), 30);
      assert.deepEqual(await host.strayObjects(liveObjects(MIXED)), [], "no virtqos object left over");
    });

    await t.test("destroy the other members: the group IFBs go, nothing of virtqos is left", async () => {
      for (const { g, l } of running()) {
        await destroyTimed(g);
        live.delete(g.label);
        await assertGone(g, l);
        if (running().length) {
          await assertTrees(MIXED, running(), 40);
        }
      }
      const left = (await links())
        .filter((l) => ourTrees.has(l.ifname))
        .map((l) => `${l.ifname} (${l.ifalias})`);
      assert.deepEqual(left, [], `the IFBs of ${MIXED} went with its last member`);
      assert.deepEqual(await host.strayObjects(), [], "no virtqos object left on any device");
    });

    // ------------------------------------------------------- 4. admission
    const admitted: Guest[] = [gBridge, gNetwork, gDirect];
    const admLive = new Map<string, Live>();
    const admMembers = () =>
      admitted.flatMap((g) => (admLive.has(g.label) ? [{ g, l: admLive.get(g.label) as Live }] : []));
    const admTrees = new Map<Dir, TreeSnapshot>();
    /** The refused 4th member: its tap and its own upload IFB. */
    let refused: { dev: string; ifindex: number; ifb: string } | undefined;
    const needRefused = () => {
      assert.ok(refused, `${gExtra.name} was started and shaped by the previous step`);
      return refused;
    };

    await t.test(
      `admission: 3 members (bridge, network, direct) fill ${ADM}'s floors (3 x 10 = 30 Mbit/s)`,
      async () => {
        await writePolicy(ADM_POLICY);
        for (const g of admitted) await startTimed(g, `${g.label}, group ${ADM}`);
        for (const g of admitted) admLive.set(g.label, await assertMember(g, ADM, 30));
        await assertTrees(ADM, admMembers(), 30);
        for (const d of DIRS) admTrees.set(d, await snapshot(groupIfbName(ADM, d)));
        await assertStatus(ADM, admMembers(), 30);
      },
    );

    await t.test(
      "admission: a 4th bridge member (40 > 30) starts, shaped on its own at the group ceiling",
      async () => {
        assert.equal(admMembers().length, 3, "the three members run");
        await startTimed(gExtra, "4th member, over the floors");
        const dev = (await tapsOf(gExtra.name)).get(gExtra.spec.mac);
        assert.ok(dev, `${gExtra.name}: host device`);
        const where = `${gExtra.name} (${dev})`;

        // Its own trees at the group ceiling: root HTB on the tap (download), its own vqi IFB (upload).
        const qd = await qdiscs(dev);
        const root = qd.find((q) => q.root);
        assert.equal(
          `${root?.kind} ${root?.handle}`,
          "htb 7651:",
          `${where}: its own root HTB (${JSON.stringify(qd)})`,
        );
        const cls = (await htbClasses(dev)).find((c) => c.classid === "7651:1");
        assert.equal(
          `${cls?.rate} ${cls?.ceil}`,
          "30Mbit 30Mbit",
          `${where}: class 7651:1 at the group ceiling`,
        );
        const ingress = await redirects(dev, "ingress");
        assert.equal(ingress.length, 1, `${where}: one ingress redirect: ${JSON.stringify(ingress)}`);
        assert.equal(ingress[0]?.prio, PRIO_INGRESS, `${where}: ingress redirect prio`);
        assert.match(ingress[0]?.to ?? "", /^vqi[0-9a-f]{12}$/, `${where}: upload to its own vqi IFB`);
        assert.deepEqual(await redirects(dev, "egress"), [], `${where}: no egress redirect into the group`);
        const ifb = ingress[0]?.to as string;
        const ifbLink = (await links("ifb")).find((l) => l.ifname === ifb);
        assert.ok(
          ifbLink?.ifalias?.startsWith(`virtqos/1,iface,${gExtra.uuid},${gExtra.spec.mac},${dev}`),
          `${where}: IFB ${ifb} alias ${ifbLink?.ifalias}`,
        );
        const icls = (await htbClasses(ifb)).find((c) => c.classid === "7651:1");
        assert.equal(
          `${icls?.rate} ${icls?.ceil}`,
          "30Mbit 30Mbit",
          `${where}: upload class at the group ceiling`,
        );
        refused = { dev, ifindex: await ifindexOf(dev), ifb };

        // The group is untouched: the same three members, the same classes, no filter for the refused MAC.
        for (const d of DIRS) {
          const s = await snapshot(groupIfbName(ADM, d));
          assert.deepEqual(s, admTrees.get(d), `${groupIfbName(ADM, d)}: untouched by the refused member`);
          assert.ok(
            !s.filters.some(
              (f) => JSON.stringify(f.matches) === JSON.stringify(macMatches(gExtra.spec.mac, d)),
            ),
            `${groupIfbName(ADM, d)}: no filter for ${gExtra.spec.mac}`,
          );
        }
        const rec = await readRecord(gExtra.uuid);
        t.diagnostic(`record of the refused member: ${JSON.stringify(rec.interfaces)}`);
        const ri = rec.interfaces[0];
        assert.equal(ri?.dev, dev, `${where}: record dev (so a stop removes its shaping)`);
        assert.equal(ri && recordIfb(gExtra.uuid, ri), ifb, `${where}: record names its IFB`);
        assert.ok(
          ri?.group?.inbound?.minor === undefined && ri?.group?.outbound?.minor === undefined,
          `${where}: no group class in the record: ${JSON.stringify(ri?.group)}`,
        );
        // The admitted members are not disturbed by the refused one, in the kernel or in status.
        await assertStatus(ADM, admMembers(), 30);
        const liveDevs = [
          ...admMembers().map((m) => m.l.dev),
          ...DIRS.map((d) => groupIfbName(ADM, d)),
          dev,
          ifb,
        ];
        assert.deepEqual(await host.strayObjects(liveDevs), [], "no other virtqos object");
      },
    );

    await t.test(
      "admission: virtqos plan reports GROUP_ADMISSION; the hook logs the refusal at ERROR",
      async (st) => {
        const r = needRefused();
        // `virtqos plan` for the live XML: the problem, with its code.
        const xmlFile = join(scratch, `${gExtra.name}.xml`);
        const liveXml = await domainXml(gExtra.name);
        await writeFile(xmlFile, liveXml);
        const planned = await cli(["plan", "--xml", xmlFile, "--json"]);
        const problems =
          (JSON.parse(planned.stdout || "{}") as { problems?: { code: string; message: string }[] })
            .problems ?? [];
        st.diagnostic(
          `virtqos plan (exit ${planned.code}): ${problems.map((p) => `${p.code}: ${p.message}`).join("; ")}`,
        );
        assert.deepEqual(
          problems.map((p) => p.code),
          ["GROUP_ADMISSION", "GROUP_ADMISSION"],
          `virtqos plan reports GROUP_ADMISSION for both directions: ${planned.stdout}`,
        );
        assert.equal(planned.code, 3, "virtqos plan exits 3 (partial)");

        // The hook's log line, best effort: libvirtd keeps hook stderr only when a hook fails.
        const fromLibvirtd = (await readFrom(LIBVIRTD_LOG, logOffset))
          .split("\n")
          .filter((l) => /GROUP_ADMISSION|does not fit in group/.test(l));
        st.diagnostic(
          fromLibvirtd.length
            ? `libvirtd log: ${fromLibvirtd.join(" | ")}`
            : "libvirtd log: no admission line (libvirtd keeps hook stderr only when the hook fails)",
        );
        // The installed hook run by hand the way libvirt runs it: its stderr, and an idempotent re-apply.
        const t0 = performance.now();
        const hook = await run(HOOK_FILE, [gExtra.name, "started", "begin", "-"], { input: liveXml });
        st.diagnostic(`hook run by hand (started begin): ${ms(t0)}; stderr: ${hook.stderr.trim()}`);
        assert.equal(hook.code, 0, "the hook exits 0 (the guest starts)");
        assert.equal(hook.stdout, "", "the hook prints nothing on stdout");
        for (const d of DIRS) {
          assert.match(
            hook.stderr,
            new RegExp(
              `ERROR: .*${gExtra.name} ${gExtra.spec.mac}: ${d} floor 10 Mbit/s does not fit in group "${ADM}": members already hold 30 Mbit/s of its 30 Mbit/s`,
            ),
            `the hook logs the refused ${d} admission at ERROR, with the numbers`,
          );
        }
        assert.equal(
          (await qdiscs(r.dev)).find((q) => q.root)?.handle,
          "7651:",
          `${r.dev}: still shaped after the re-run`,
        );
        assert.equal(await ifindexOf(r.dev), r.ifindex, `${r.dev}: the same device`);
        for (const d of DIRS) {
          assert.deepEqual(
            await snapshot(groupIfbName(ADM, d)),
            admTrees.get(d),
            `${d} tree unchanged by the re-run`,
          );
        }
      },
    );

    await t.test("admission: the hook's log line carries the code GROUP_ADMISSION", async () => {
      const hook = await run(HOOK_FILE, [gExtra.name, "started", "begin", "-"], {
        input: await domainXml(gExtra.name),
      });
      assert.match(hook.stderr, /ERROR: .*GROUP_ADMISSION/, `hook stderr: ${hook.stderr.trim()}`);
    });

    await t.test(
      "admission: virtqos status lists the refused member, at the group ceiling, matching",
      async () => {
        const r = needRefused();
        const { rows } = await virtqosStatus();
        const mine = rows.filter((x) => x.domainUuid === gExtra.uuid);
        assert.equal(mine.length, 2, `status rows of ${gExtra.name}: ${JSON.stringify(mine)}`);
        for (const row of mine) {
          assert.equal(row.matches, true, `status ${row.direction}: matches (${row.note ?? "-"})`);
          assert.equal(row.group, undefined, `status ${row.direction}: no group`);
          assert.equal(row.configured.rateBitsPerSec, 30 * MBIT, `status ${row.direction}: configured rate`);
          assert.equal(row.kernel?.rateBitsPerSec, 30 * MBIT, `status ${row.direction}: kernel rate`);
          assert.equal(
            row.enforcedOn,
            row.direction === "inbound" ? r.dev : r.ifb,
            `status ${row.direction}: enforced on`,
          );
        }
      },
    );

    await t.test("admission: destroy everything; the group IFBs go, nothing of virtqos is left", async () => {
      const t0 = performance.now();
      await destroyTimed(gExtra);
      await assertGone(gExtra, refused);
      if (refused)
        assert.ok(!(await linkExists(refused.ifb)), `${gExtra.name}: its IFB ${refused.ifb} is gone`);
      if (admMembers().length) {
        await assertTrees(ADM, admMembers(), 30);
        for (const d of DIRS) {
          assert.deepEqual(
            await snapshot(groupIfbName(ADM, d)),
            admTrees.get(d),
            `${d} tree unchanged by the refused member's stop`,
          );
        }
      }
      for (const g of admitted) {
        await destroyTimed(g);
        await assertGone(g, admLive.get(g.label));
      }
      t.diagnostic(`4 destroys with checks: ${ms(t0)}`);
      const left = (await links())
        .filter((l) => ourTrees.has(l.ifname))
        .map((l) => `${l.ifname} (${l.ifalias})`);
      assert.deepEqual(left, [], `the IFBs of ${ADM} went with its last member`);
      assert.deepEqual(await host.strayObjects(), [], "no virtqos object left on any device");
    });
  },
);
