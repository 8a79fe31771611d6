// Golden tests for the planner, in the spirit of libvirt's tests/virnetdevbandwidthtest.c: domain XML and
// policy in, the exact `ip -batch`/`tc -batch` lines out. Expected output lives in test/golden/expected/.
// UPDATE_GOLDEN=1 rewrites the expected files; review every diff by eye before accepting it.

import assert from "node:assert/strict";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { parseDomainXml } from "../../src/core/domain-xml.js";
import type { DesiredInterface, DomainRecord } from "../../src/core/model.js";
import { formatIfbAlias, interfaceIfbName, parseIfbAlias } from "../../src/core/names.js";
import {
  filtersFromJson,
  linksFromJson,
  type ObservedDevice,
  parseClasses,
  printTcRate,
  qdiscsFromJson,
} from "../../src/core/normalise.js";
import { type Observed, type Op, type Plan, type PlanOptions, plan } from "../../src/core/plan.js";
import { emptyPolicy, type Policy, parsePolicy } from "../../src/core/policy.js";
import type { Capabilities } from "../../src/core/recipe.js";
import { type Rendered, render } from "../../src/core/render.js";
import { resolveDomain } from "../../src/core/resolve.js";
import { NO_CLSACT, NO_IFB, PRODUCTION, THIS_KERNEL } from "../helpers/caps.js";

const UPDATE = process.env.UPDATE_GOLDEN === "1";
const EXPECTED = new URL("./expected/", import.meta.url);
const FIXTURES = new URL("../fixtures/libvirt-9.0/", import.meta.url);

// ---------------------------------------------------------------------------------------------------------
// Inputs

const UUID_A = "6d0e4a6c-5b0f-4c1e-9d7a-1f2e3d4c5b6a";
const UUID_B = "0f1e2d3c-4b5a-4968-8776-655443322110";

interface Rate {
  average?: number;
  peak?: number;
  burst?: number;
  floor?: number;
}

interface IfaceSpec {
  type: string;
  mac: string;
  dev?: string;
  alias?: string;
  source?: string;
  ovs?: boolean;
  /** libvirt units: kB/s for average/peak/floor, KiB for burst. */
  inbound?: Rate;
  outbound?: Rate;
}

const rateAttrs = (r: Rate) =>
  Object.entries(r)
    .map(([k, v]) => `${k}='${v}'`)
    .join(" ");

function ifaceXml(i: IfaceSpec): string {
  const bw =
    i.inbound || i.outbound
      ? `<bandwidth>${i.inbound ? `<inbound ${rateAttrs(i.inbound)}/>` : ""}${i.outbound ? `<outbound ${rateAttrs(i.outbound)}/>` : ""}</bandwidth>`
      : "";
  return `    <interface type='${i.type}'>
      <mac address='${i.mac}'/>
      ${i.source ?? ""}
      ${i.ovs ? "<virtualport type='openvswitch'><parameters interfaceid='e5b83b18-9b02-480a-ab32-0701fee83d39'/></virtualport>" : ""}
      ${i.dev ? `<target dev='${i.dev}'/>` : ""}
      <model type='virtio'/>
      ${bw}
      ${i.alias ? `<alias name='${i.alias}'/>` : ""}
    </interface>`;
}

function domainXml(name: string, uuid: string, ifaces: IfaceSpec[], metadata = ""): string {
  return `<domain type='kvm' id='7'>
  <name>${name}</name>
  <uuid>${uuid}</uuid>
  ${metadata ? `<metadata>${metadata}</metadata>` : ""}
  <memory unit='KiB'>65536</memory>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
${ifaces.map(ifaceXml).join("\n")}
  </devices>
</domain>`;
}

const bridge = (mac: string, dev: string, bw: Pick<IfaceSpec, "inbound" | "outbound"> = {}): IfaceSpec => ({
  type: "bridge",
  mac,
  dev,
  source: "<source bridge='br0'/>",
  ...bw,
});

interface Desired {
  interfaces: DesiredInterface[];
  warnings: string[];
  policy: Policy;
  uuid: string;
}

function desired(xml: string, policyText?: string): Desired {
  const policy = policyText === undefined ? emptyPolicy() : parsePolicy(policyText, "policy.yaml");
  const domain = parseDomainXml(xml);
  const { interfaces, warnings } = resolveDomain(domain, policy);
  return { interfaces, warnings, policy, uuid: domain.uuid };
}

// ---------------------------------------------------------------------------------------------------------
// A small fake kernel: state as tc keeps it, read back through the same parsers observe() uses (tc JSON for
// qdiscs and filters, `tc -d class show` text for HTB classes), with tc's rounding of rates and sizes.

interface KQdisc {
  kind: string;
  handle: string;
  parent: string;
  options: Record<string, unknown>;
}
interface KClass {
  classid: string;
  parent: string;
  rate: number;
  ceil: number;
  burst: number;
  cburst: number;
  quantum: number;
}
interface KFilter {
  hook: "ingress" | "egress";
  prio: number;
  kind: string;
  protocol: string;
  redirectDev?: string;
  police?: { rate: number; burst: number };
}
interface KDev {
  name: string;
  ifindex: number;
  kind?: string;
  alias?: string;
  up: boolean;
  master?: string;
  qdiscs: KQdisc[];
  classes: KClass[];
  filters: KFilter[];
}

class FakeKernel {
  devs = new Map<string, KDev>();
  private nextIfindex = 100;

  addLink(name: string, opts: Partial<KDev> = {}): KDev {
    const dev: KDev = {
      name,
      ifindex: opts.ifindex ?? this.nextIfindex++,
      up: true,
      qdiscs: [{ kind: "noqueue", handle: "0:", parent: "root", options: {} }],
      classes: [],
      filters: [],
      ...opts,
    };
    this.devs.set(name, dev);
    return dev;
  }

  private dev(name: string): KDev {
    const d = this.devs.get(name);
    if (!d) throw new Error(`Cannot find device "${name}"`);
    return d;
  }

  /** Apply ops in order, failing like tc/ip would on an impossible step. */
  apply(ops: Op[]): void {
    for (const op of ops) {
      switch (op.op) {
        case "ifb-add":
          if (this.devs.has(op.dev)) throw new Error(`ifb-add ${op.dev}: File exists`);
          this.addLink(op.dev, { kind: "ifb", alias: op.alias, up: false });
          break;
        case "link-up":
          this.dev(op.dev).up = true;
          break;
        case "ifb-del":
          this.dev(op.dev);
          this.devs.delete(op.dev);
          for (const d of this.devs.values()) {
            // mirred forgets a deleted target; keep the filter (as the kernel does) so tests can see it dangle.
            for (const f of d.filters) if (f.redirectDev === op.dev) f.redirectDev = `(gone:${op.dev})`;
          }
          break;
        case "root-replace": {
          const d = this.dev(op.dev);
          const root = d.qdiscs.find((q) => q.parent === "root");
          if (root?.handle === "7651:" && root.kind === "htb") {
            root.options.default = `0x${op.defaultMinor.toString(16)}`;
          } else {
            d.qdiscs = d.qdiscs.filter((q) => q.parent === "ffff:fff1");
            d.classes = [];
            d.qdiscs.unshift({
              kind: "htb",
              handle: "7651:",
              parent: "root",
              options: {
                r2q: 10,
                default: `0x${op.defaultMinor.toString(16)}`,
                direct_packets_stat: 0,
                direct_qlen: 1000,
              },
            });
          }
          break;
        }
        case "root-del": {
          const d = this.dev(op.dev);
          if (!d.qdiscs.some((q) => q.parent === "root" && q.handle !== "0:")) {
            throw new Error(`root-del ${op.dev}: Cannot delete qdisc with handle of zero`);
          }
          d.qdiscs = [
            { kind: "noqueue", handle: "0:", parent: "root", options: {} },
            ...d.qdiscs.filter((q) => q.parent === "ffff:fff1"),
          ];
          d.classes = [];
          break;
        }
        case "class-replace": {
          const d = this.dev(op.dev);
          const parentOk =
            d.qdiscs.some((q) => q.kind === "htb" && q.handle === op.parent) ||
            d.classes.some((c) => c.classid === op.parent);
          if (!parentOk)
            throw new Error(`class-replace ${op.dev} ${op.classid}: parent ${op.parent} does not exist`);
          const k: KClass = {
            classid: op.classid,
            parent: op.parent,
            rate: op.htb.rateBytesPerSec,
            ceil: op.htb.ceilBytesPerSec,
            burst: op.htb.burstBytes,
            cburst: op.htb.cburstBytes,
            quantum: op.htb.quantumBytes,
          };
          d.classes = [...d.classes.filter((c) => c.classid !== op.classid), k];
          break;
        }
        case "class-del": {
          const d = this.dev(op.dev);
          if (d.classes.some((c) => c.parent === op.classid))
            throw new Error(`class-del ${op.classid}: class has children`);
          d.classes = d.classes.filter((c) => c.classid !== op.classid);
          d.qdiscs = d.qdiscs.filter((q) => q.parent !== op.classid);
          break;
        }
        case "leaf-replace": {
          const d = this.dev(op.dev);
          if (!d.classes.some((c) => c.classid === op.parent))
            throw new Error(`leaf-replace: class ${op.parent} missing`);
          const l = op.leaf;
          const options: Record<string, unknown> =
            l.kind === "bfifo"
              ? { limit: l.limitBytes }
              : l.kind === "sfq"
                ? { limit: l.limitPackets, quantum: 1514, depth: 127, divisor: 1024, perturb: 10 }
                : l.kind === "fq_codel"
                  ? {
                      limit: 10240,
                      flows: 1024,
                      quantum: 1514,
                      target: 4999,
                      interval: 99999,
                      memory_limit: 33554432,
                      ecn: true,
                      drop_batch: 64,
                    }
                  : {
                      rate: l.rateBytesPerSec,
                      burst: tbfBurstRoundTrip(l.rateBytesPerSec, l.burstBytes),
                      lat: tbfLatency(l.rateBytesPerSec, l.limitBytes, l.burstBytes),
                    };
          d.qdiscs = [
            ...d.qdiscs.filter((q) => q.parent !== op.parent),
            { kind: l.kind, handle: op.handle, parent: op.parent, options },
          ];
          break;
        }
        case "hook-add": {
          const d = this.dev(op.dev);
          if (d.qdiscs.some((q) => q.parent === "ffff:fff1"))
            throw new Error(`hook-add ${op.dev}: Exclusivity flag on, cannot modify`);
          d.qdiscs.push({ kind: op.kind, handle: "ffff:", parent: "ffff:fff1", options: {} });
          break;
        }
        case "hook-del": {
          const d = this.dev(op.dev);
          if (!d.qdiscs.some((q) => q.parent === "ffff:fff1" && q.kind === op.kind))
            throw new Error(`hook-del ${op.dev}: no ${op.kind}`);
          d.qdiscs = d.qdiscs.filter((q) => q.parent !== "ffff:fff1");
          d.filters = [];
          break;
        }
        case "filter-add":
        case "filter-replace": {
          const d = this.dev(op.dev);
          const hookQ = d.qdiscs.find((q) => q.parent === "ffff:fff1");
          if (!hookQ) throw new Error(`filter ${op.dev}: Parent Qdisc doesn't exists`);
          if (op.hook === "egress" && hookQ.kind !== "clsact")
            throw new Error(`filter ${op.dev} egress needs clsact`);
          const same = d.filters.find((f) => f.hook === op.hook && f.prio === op.prio);
          if (same && same.kind !== op.classifier)
            throw new Error(`filter ${op.dev}: prio ${op.prio} has another kind`);
          if (same && op.op === "filter-add" && op.classifier === "matchall")
            throw new Error("matchall: File exists");
          if (op.filter.action === "redirect" && !this.devs.has(op.filter.toDev)) {
            throw new Error(`mirred: Cannot find device "${op.filter.toDev}"`);
          }
          const k: KFilter = {
            hook: op.hook,
            prio: op.prio,
            kind: op.classifier,
            protocol: "all",
            redirectDev: op.filter.action === "redirect" ? op.filter.toDev : undefined,
            police:
              op.filter.action === "police"
                ? { rate: op.filter.rateBytesPerSec, burst: op.filter.burstBytes }
                : undefined,
          };
          d.filters = [...d.filters.filter((f) => !(f.hook === op.hook && f.prio === op.prio)), k];
          break;
        }
        case "filter-del": {
          const d = this.dev(op.dev);
          if (!d.filters.some((f) => f.hook === op.hook && f.prio === op.prio)) {
            throw new Error(
              `filter-del ${op.dev} ${op.hook} prio ${op.prio}: Filter with specified priority/protocol not found`,
            );
          }
          d.filters = d.filters.filter((f) => !(f.hook === op.hook && f.prio === op.prio));
          break;
        }
        default:
          throw new Error(`fake kernel: unknown op ${JSON.stringify(op)}`);
      }
    }
  }

  /** What observe() would produce: everything passes through the real parsers in normalise.ts. */
  observe(records: DomainRecord[] = []): Observed {
    const linkJson = [...this.devs.values()].map((d) => ({
      ifindex: d.ifindex,
      ifname: d.name,
      flags: d.up ? ["BROADCAST", "NOARP", "UP", "LOWER_UP"] : ["BROADCAST", "NOARP"],
      ...(d.alias ? { ifalias: d.alias } : {}),
      ...(d.master ? { master: d.master } : {}),
      ...(d.kind ? { linkinfo: { info_kind: d.kind } } : {}),
    }));
    const links = new Map(linksFromJson(JSON.parse(JSON.stringify(linkJson))).map((l) => [l.name, l]));
    const qdiscJson = [...this.devs.values()].flatMap((d) =>
      d.qdiscs.map((q) => ({
        kind: q.kind,
        handle: q.handle,
        dev: d.name,
        ...(q.parent === "root" ? { root: true } : { parent: q.parent }),
        refcnt: 2,
        options: q.options,
      })),
    );
    const qdiscs = qdiscsFromJson(JSON.parse(JSON.stringify(qdiscJson)));
    const devices = new Map<string, ObservedDevice>();
    for (const d of this.devs.values()) {
      const classText = d.classes.map((c) => classLine(c, d)).join("\n");
      const filters = (["ingress", "egress"] as const).flatMap((hook) =>
        filtersFromJson(
          JSON.parse(JSON.stringify(filterJson(d.filters.filter((f) => f.hook === hook)))),
          hook,
        ),
      );
      devices.set(d.name, {
        dev: d.name,
        qdiscs: qdiscs.get(d.name) ?? [],
        classes: parseClasses(classText),
        filters,
      });
    }
    return { links, devices, records };
  }
}

/** tc's sprint_size (tc_util.c): "62493b", "64Kb" near a KiB multiple, "1Mb" near a MiB multiple. */
function tcSizeText(bytes: number): string {
  if (bytes >= 1024 * 1024 && Math.abs(1024 * 1024 * Math.round(bytes / (1024 * 1024)) - bytes) < 1024) {
    return `${Math.round(bytes / (1024 * 1024))}Mb`;
  }
  if (bytes >= 1024 && Math.abs(1024 * Math.round(bytes / 1024) - bytes) < 16)
    return `${Math.round(bytes / 1024)}Kb`;
  return `${bytes}b`;
}

// tc's time units (/proc/net/psched on a 1 GHz hrtimer kernel: t2us 1000, us2t 64): 15.625 ticks per µs.
const TICKS_PER_US = 15.625;
/** iproute2's tc_core_tick2time: ticks to whole µs (truncated). */
const tick2time = (ticks: number) => Math.floor(ticks / TICKS_PER_US);

/**
 * HTB and police take a burst as a time in ticks (tc_calc_xmittime truncates to whole µs, then to whole ticks)
 * and tc prints it back through tc_calc_xmitsize: 62500 bytes at 30 Mbit/s come back as 62493.
 */
function ticksRoundTrip(bytesPerSec: number, bytes: number): number {
  const ticks = Math.floor(Math.floor((1e6 * bytes) / bytesPerSec) * TICKS_PER_US);
  return Math.floor((bytesPerSec * tick2time(ticks)) / 1e6);
}

/** TBF gets the burst in bytes (TCA_TBF_BURST); the kernel keeps ns and dumps ticks: 3028 at 60 Mbit/s -> 3022. */
function tbfTicks(bytesPerSec: number, bytes: number): number {
  return Math.floor(Math.floor((bytes * 1e9) / bytesPerSec) / 64);
}
function tbfBurstRoundTrip(bytesPerSec: number, bytes: number): number {
  return Math.floor((bytesPerSec * tick2time(tbfTicks(bytesPerSec, bytes))) / 1e6);
}
/** q_tbf.c: latency = limit / rate - tick2time(buffer), in µs. */
function tbfLatency(bytesPerSec: number, limitBytes: number, burstBytes: number): number {
  return Math.floor((1e6 * limitBytes) / bytesPerSec - tick2time(tbfTicks(bytesPerSec, burstBytes)));
}

function classLine(c: KClass, d: KDev): string {
  const leaf = d.qdiscs.find((q) => q.parent === c.classid);
  const where = c.parent.endsWith(":") ? "root" : `parent ${c.parent}`;
  const burst = tcSizeText(ticksRoundTrip(c.rate, c.burst));
  const cburst = tcSizeText(ticksRoundTrip(c.ceil, c.cburst));
  return (
    `class htb ${c.classid} ${where} ${leaf ? `leaf ${leaf.handle} ` : ""}prio 0 quantum ${c.quantum} ` +
    `rate ${printTcRate(c.rate * 8)} ceil ${printTcRate(c.ceil * 8)} linklayer ethernet ` +
    `burst ${burst}/1 mpu 0b cburst ${cburst}/1 mpu 0b level 0 \n` +
    " Sent 0 bytes 0 pkt (dropped 0, overlimits 0 requeues 0) \n backlog 0b 0p requeues 0\n lended: 0 borrowed: 0 giants: 0\n tokens: 1 ctokens: 1"
  );
}

/** `tc -j filter show dev X ingress` as iproute2 6.1 prints it for u32/matchall with mirred or police. */
function filterJson(filters: KFilter[]): unknown[] {
  const out: unknown[] = [];
  for (const f of filters) {
    const head = { protocol: f.protocol, pref: f.prio, kind: f.kind, chain: 0 };
    out.push(head);
    const actions: unknown[] = [];
    if (f.redirectDev) {
      actions.push({
        order: 1,
        kind: "mirred",
        mirred_action: "redirect",
        direction: "egress",
        to_dev: f.redirectDev,
        control_action: { type: "stolen" },
        index: 1,
        ref: 1,
        bind: 1,
      });
    }
    if (f.police) {
      actions.push({
        order: 1,
        kind: "police",
        index: 1,
        control_action: { type: "drop" },
        overhead: 0,
        rate: printTcRate(f.police.rate * 8),
        burst: tcSizeText(ticksRoundTrip(f.police.rate, f.police.burst)),
        mtu: "64Kb",
        ref: 1,
        bind: 1,
      });
    }
    if (f.kind === "u32") {
      out.push({ ...head, options: { fh: "800:", ht_divisor: 1 } });
      out.push({
        ...head,
        options: {
          fh: "800::800",
          order: 2048,
          key_ht: "800",
          bkt: "0",
          ...(f.police ? { flowid: ":1" } : {}),
          not_in_hw: true,
          match: { value: "0", mask: "0", offmask: "", off: 0 },
          actions,
        },
      });
    } else {
      out.push({ ...head, options: { handle: 1, not_in_hw: true, actions } });
    }
  }
  return out;
}

/** The Observed the brief describes: each tap present with an ifindex, a default noqueue root, no filters. */
function freshKernel(ifaces: DesiredInterface[], except: string[] = []): FakeKernel {
  const k = new FakeKernel();
  let ifindex = 11;
  for (const i of ifaces) {
    if (i.dev && !except.includes(i.dev) && !k.devs.has(i.dev))
      k.addLink(i.dev, { ifindex: ifindex++, kind: "tun" });
  }
  return k;
}

describe("fake kernel", () => {
  // Read back from kernel 6.18 with iproute2 6.1 after applying type-bridge.txt in a scratch namespace.
  test("rounds sizes the way tc and the kernel do", () => {
    assert.equal(ticksRoundTrip(3_750_000, 62_500), 62_493); // the brief's `tc -d class show` sample
    assert.equal(ticksRoundTrip(3_750_000, 67_050), 67_050); // "burst 67050b/1"
    assert.equal(ticksRoundTrip(1_250_000, 62_500), 62_500); // "burst 62500b/1"
    assert.equal(tbfBurstRoundTrip(7_500_000, 3028), 3022); // tc -j qdisc: "burst":3022
    assert.equal(tbfLatency(7_500_000, 75_000, 3028), 9597); // "lat":9597
    assert.equal(tbfBurstRoundTrip(2_500_000, 3028), 3027);
    assert.equal(tbfLatency(2_500_000, 25_000, 3028), 8789);
    assert.equal(tcSizeText(65_536), "64Kb");
    assert.equal(tcSizeText(1024 * 1024 + 100), "1Mb");
    assert.equal(tcSizeText(62_493), "62493b");
  });
});

// ---------------------------------------------------------------------------------------------------------
// Running and checking

function options(d: Pick<Desired, "policy" | "uuid">, extra: Partial<PlanOptions> = {}): PlanOptions {
  return { leaf: d.policy.leaf, scope: [d.uuid], sweep: false, ...extra };
}

function lines(r: Rendered): string[] {
  return [...r.ipPre.map((l) => `ip ${l}`), ...r.tc.map((l) => `tc ${l}`), ...r.ipPost.map((l) => `ip ${l}`)];
}

/** Compare with test/golden/expected/<name>.txt (or write it, with UPDATE_GOLDEN=1). */
const usedGoldens = new Set<string>();

function assertGolden(name: string, r: Rendered): void {
  assert.ok(!usedGoldens.has(name), `golden name ${name} used twice`);
  usedGoldens.add(name);
  const got = lines(r);
  checkInvariants(name, got);
  const text = got.map((l) => `${l}\n`).join("");
  const url = new URL(`${name}.txt`, EXPECTED);
  const path = fileURLToPath(url);
  if (UPDATE) {
    mkdirSync(fileURLToPath(EXPECTED), { recursive: true });
    writeFileSync(url, text);
    return;
  }
  if (!existsSync(path)) {
    assert.fail(
      `golden file ${path} is missing: run with UPDATE_GOLDEN=1 to create it, then review it.\nGot:\n${text}`,
    );
  }
  assert.equal(text, readFileSync(url, "utf8"), `output differs from ${path} (UPDATE_GOLDEN=1 rewrites it)`);
}

/** Rules every rendered batch must follow, whatever the case. */
function checkInvariants(name: string, got: string[]): void {
  for (const line of got) {
    const ctx = `${name}: ${line}`;
    for (const m of line.matchAll(/\bdev (\S+)/g))
      assert.ok(m[1].length <= 15, `${ctx}: device name over 15 characters`);
    for (const m of line.matchAll(/\b(vq[a-z][0-9a-f]*)\b/g)) assert.match(m[1], /^vqi[0-9a-f]{12}$/, ctx);
    for (const m of line.matchAll(/\bc?burst (\d+)b\b/g))
      assert.ok(Number(m[1]) >= 2 * 1514, `${ctx}: burst below two frames`);
    for (const m of line.matchAll(/\b(?:rate|ceil) (\d+)bit\b/g))
      assert.equal(Number(m[1]) % 8, 0, `${ctx}: rate not whole bytes`);
    const rate = /\brate (\d+)bit ceil (\d+)bit/.exec(line);
    if (rate) assert.ok(Number(rate[2]) >= Number(rate[1]), `${ctx}: ceil below rate`);
    const quantum = /\bquantum (\d+)\b/.exec(line);
    if (quantum) assert.ok(Number(quantum[1]) >= 1514 && Number(quantum[1]) <= 200_000, `${ctx}: quantum`);
    if (/^tc filter (add|replace|del) /.test(line)) {
      assert.match(line, / (ingress|egress) protocol all prio 64000\b/, ctx);
    }
    if (/ u32 /.test(line)) assert.match(line, / u32 match u32 0 0 /, ctx);
    if (/^tc qdisc replace dev \S+ root /.test(line))
      assert.match(line, /root handle 7651: htb default 1$/, ctx);
  }
}

interface Case {
  plan: Plan;
  rendered: Rendered;
  kernel: FakeKernel;
  observed: Observed;
}

function runCase(
  d: Desired,
  caps: Capabilities,
  kernel = freshKernel(d.interfaces),
  extra: Partial<PlanOptions> = {},
): Case {
  const observed = kernel.observe();
  const p = plan(d.interfaces, observed, caps, options(d, extra));
  return { plan: p, rendered: render(p.ops), kernel, observed };
}

/** Apply the plan to the fake kernel, observe again and plan again: nothing may be left to do. */
function assertIdempotent(c: Case, d: Desired, caps: Capabilities): void {
  c.kernel.apply(c.plan.ops);
  const again = plan(d.interfaces, c.kernel.observe(c.plan.records), caps, options(d));
  assert.deepEqual(lines(render(again.ops)), [], "a second plan over the applied state has nothing to do");
  assert.deepEqual(
    again.problems.map((p) => p.code),
    c.plan.problems.map((p) => p.code),
  );
}

const codes = (p: Plan) => p.problems.map((x) => x.code);
const opsFor = (p: Plan, key: string) => p.ops.filter((o) => o.iface === key);

// ---------------------------------------------------------------------------------------------------------
// Cases

const M = {
  a1: "52:54:00:6d:00:01",
  a2: "52:54:00:6d:00:02",
  b1: "52:54:00:0f:00:01",
};
const IN_OUT = { inbound: { average: 3750 }, outbound: { average: 1250 } }; // 30 Mbit/s down, 10 Mbit/s up

describe("golden: one interface of each type, <bandwidth> inbound + outbound (THIS_KERNEL)", () => {
  const types: [string, IfaceSpec][] = [
    ["type-bridge", bridge(M.a1, "vnet1", IN_OUT)],
    [
      "type-network",
      {
        type: "network",
        mac: M.a1,
        dev: "vnet1",
        source: "<source network='lab' bridge='virbr-lab'/>",
        ...IN_OUT,
      },
    ],
    ["type-ethernet", { type: "ethernet", mac: M.a1, dev: "tap-web1", ...IN_OUT }],
    [
      "type-direct",
      {
        type: "direct",
        mac: M.a1,
        dev: "macvtap0",
        source: "<source dev='uplinkA' mode='bridge'/>",
        ...IN_OUT,
      },
    ],
    [
      "type-ovs",
      { type: "bridge", mac: M.a1, dev: "vnet2", source: "<source bridge='obr0'/>", ovs: true, ...IN_OUT },
    ],
  ];
  for (const [name, spec] of types) {
    test(name, () => {
      const d = desired(domainXml("web1", UUID_A, [spec]));
      const c = runCase(d, THIS_KERNEL);
      assert.deepEqual(c.plan.problems, []);
      assertGolden(name, c.rendered);
      assertIdempotent(c, d, THIS_KERNEL);
    });
  }

  test("direct is swapped: guest download through the IFB, upload on the macvtap's root", () => {
    const d = desired(domainXml("web1", UUID_A, [types[3][1]]));
    const c = runCase(d, THIS_KERNEL);
    const ifb = interfaceIfbName(UUID_A, M.a1);
    const classes = c.plan.ops.filter((o) => o.op === "class-replace");
    const onIfb = classes.find((o) => o.dev === ifb);
    const onTap = classes.find((o) => o.dev === "macvtap0");
    assert.equal(onIfb?.direction, "inbound");
    assert.equal(onIfb?.op === "class-replace" && onIfb.htb.rateBytesPerSec, 3_750_000);
    assert.equal(onTap?.direction, "outbound");
    assert.equal(onTap?.op === "class-replace" && onTap.htb.rateBytesPerSec, 1_250_000);
  });

  test("not swapped: guest download on the tap's root, upload through the IFB", () => {
    const d = desired(domainXml("web1", UUID_A, [types[0][1]]));
    const c = runCase(d, THIS_KERNEL);
    const classes = c.plan.ops.filter((o) => o.op === "class-replace");
    assert.equal(classes.find((o) => o.dev === "vnet1")?.direction, "inbound");
    assert.equal(classes.find((o) => o.dev === interfaceIfbName(UUID_A, M.a1))?.direction, "outbound");
  });
});

describe("golden: where the limits come from", () => {
  test("peak-burst: average 1000 kB/s, peak 5000 kB/s, burst 1024 KiB", () => {
    const d = desired(
      domainXml("web1", UUID_A, [
        bridge(M.a1, "vnet1", {
          inbound: { average: 1000, peak: 5000, burst: 1024 },
          outbound: { average: 500, peak: 1000, burst: 64 },
        }),
      ]),
    );
    const c = runCase(d, THIS_KERNEL);
    assertGolden("peak-burst", c.rendered);
    const tap = c.plan.ops.find((o) => o.op === "class-replace" && o.dev === "vnet1");
    assert.ok(tap?.op === "class-replace");
    assert.equal(tap.htb.rateBytesPerSec, 1_000_000);
    assert.equal(tap.htb.ceilBytesPerSec, 5_000_000);
    assert.equal(tap.htb.burstBytes, 1024 * 1024);
    assertIdempotent(c, d, THIS_KERNEL);
  });

  test("metadata-source: virtqos <metadata> beats <bandwidth>", () => {
    const d = desired(
      domainXml(
        "web1",
        UUID_A,
        [bridge(M.a1, "vnet1", { inbound: { average: 125 } })],
        `<vq:qos xmlns:vq="https://virtqos.dev/xmlns/qos/1"><vq:interface mac="${M.a1}"><vq:inbound average="2500"/><vq:outbound average="625" burst="128"/></vq:interface></vq:qos>`,
      ),
    );
    assert.equal(d.interfaces[0].inbound?.source, "metadata");
    assert.equal(d.interfaces[0].outbound?.source, "metadata");
    const c = runCase(d, THIS_KERNEL);
    assertGolden("metadata-source", c.rendered);
    assertIdempotent(c, d, THIS_KERNEL);
  });

  test("policy-source: explicit units in the policy file", () => {
    const d = desired(
      domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]),
      `domains:
  - name: web1
    inbound: { average: 25mbit, peak: 50mbit, burst: 128KiB }
    outbound: { average: 2MB/s }
`,
    );
    assert.equal(d.interfaces[0].inbound?.source, "policy");
    const c = runCase(d, THIS_KERNEL);
    assertGolden("policy-source", c.rendered);
    assertIdempotent(c, d, THIS_KERNEL);
  });

  test("policy-unlimited: `unlimited` removes the XML's limit for that direction", () => {
    const d = desired(
      domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]),
      "domains:\n  - name: web1\n    outbound: unlimited\n",
    );
    const c = runCase(d, THIS_KERNEL);
    assertGolden("policy-unlimited", c.rendered);
    assert.ok(c.plan.ops.every((o) => o.direction !== "outbound"));
  });

  test("fixture-jason: the real libvirt 9.0 XML with policy defaults, all four interface types", () => {
    const xml = readFileSync(new URL("jason-started-begin.xml", FIXTURES), "utf8");
    const d = desired(xml, "defaults:\n  inbound: { average: 30mbit }\n  outbound: { average: 10mbit }\n");
    assert.equal(d.warnings.length, 1, "the foreign <metadata> is warned about");
    const c = runCase(d, THIS_KERNEL);
    assert.deepEqual(c.plan.problems, []);
    assertGolden("fixture-jason", c.rendered);
    assertIdempotent(c, d, THIS_KERNEL);
  });

  test("fixture-cliff-release: at release the managed tap has no name; nothing to do without a record", () => {
    const xml = readFileSync(new URL("cliff-release-end.xml", FIXTURES), "utf8");
    const d = desired(xml, "defaults:\n  inbound: { average: 30mbit }\n");
    const kernel = new FakeKernel(); // the taps are gone at release
    const c = runCase(d, THIS_KERNEL, kernel);
    assertGolden("fixture-cliff-release", c.rendered);
    assert.equal(c.plan.notes.length, 2);
    assert.ok(c.plan.notes.every((n) => n.level === "info" && /does not exist/.test(n.message)));
  });
});

describe("golden: upload policing", () => {
  const xml = domainXml("web1", UUID_A, [
    bridge(M.a1, "vnet1"),
    bridge(M.a2, "vnet2", { inbound: { average: 3750 } }),
  ]);
  const policy = `domains:
  - name: web1
    interfaces:
      - mac: "${M.a1}"
        inbound: { average: 30mbit }
        outbound: { average: 20mbit, mode: police }
`;

  test("police-production: matchall police on the tap's ingress", () => {
    const d = desired(xml, policy);
    const c = runCase(d, PRODUCTION);
    assert.deepEqual(c.plan.problems, []);
    assertGolden("police-production", c.rendered);
    assert.ok(c.rendered.tc.some((l) => / matchall .*police rate 20000000bit /.test(l)));
    assert.ok(
      !c.rendered.ipPre.some((l) => l.includes(interfaceIfbName(UUID_A, M.a1))),
      "no IFB for a policed upload",
    );
    assertIdempotent(c, d, PRODUCTION);
  });

  // iproute2's matchall only takes actions after the `action` keyword: `matchall police ...` is refused by tc
  // itself ("What is \"police\"?", checked with iproute2 6.1), while u32 accepts a bare `police`.
  test("matchall police is written with the `action` keyword", () => {
    const c = runCase(desired(xml, policy), PRODUCTION);
    const line = c.rendered.tc.find((l) => / police /.test(l));
    assert.match(
      line ?? "",
      / handle 1 matchall action police rate 20000000bit burst \d+b mtu 64kb conform-exceed drop$/,
    );
  });

  test("police-production-u32: u32 police where matchall is missing", () => {
    const caps = { ...PRODUCTION, classifiers: ["u32"] };
    const d = desired(xml, policy);
    const c = runCase(d, caps);
    assertGolden("police-production-u32", c.rendered);
    assert.ok(c.rendered.tc.some((l) => / u32 match u32 0 0 police rate 20000000bit .* flowid :1$/.test(l)));
    assertIdempotent(c, d, caps);
  });

  test("police-upload-setting: `upload: police` polices XML limits", () => {
    const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]), "upload: police\n");
    const c = runCase(d, PRODUCTION);
    assertGolden("police-upload-setting", c.rendered);
    assertIdempotent(c, d, PRODUCTION);
  });

  test("police-this-kernel: POLICE_UNAVAILABLE and no ops for that interface; the other is still planned", () => {
    const d = desired(xml, policy);
    const c = runCase(d, THIS_KERNEL);
    assert.deepEqual(codes(c.plan), ["POLICE_UNAVAILABLE"]);
    assert.equal(c.plan.problems[0].iface, `${UUID_A}/${M.a1}`);
    assert.equal(c.plan.problems[0].dev, "vnet1");
    assert.deepEqual(opsFor(c.plan, `${UUID_A}/${M.a1}`), []);
    assert.ok(
      c.plan.ops.every((o) => o.dev !== "vnet1"),
      "nothing touches vnet1",
    );
    assert.ok(opsFor(c.plan, `${UUID_A}/${M.a2}`).length > 0);
    assertGolden("police-this-kernel", c.rendered);
    assertIdempotent(c, d, THIS_KERNEL);
  });
});

describe("golden: leaves and classifiers by capability", () => {
  test("production-fq-codel: fq_codel leaves, matchall redirect", () => {
    const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]));
    const c = runCase(d, PRODUCTION);
    assertGolden("production-fq-codel", c.rendered);
    assert.ok(c.rendered.tc.some((l) => / fq_codel$/.test(l)));
    assert.ok(c.rendered.tc.some((l) => / handle 1 matchall action mirred egress redirect dev vqi/.test(l)));
    assertIdempotent(c, d, PRODUCTION);
  });

  test("leaf-sfq: the policy asks for sfq and the kernel has it", () => {
    const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]), "leaf: sfq\n");
    const c = runCase(d, PRODUCTION);
    assertGolden("leaf-sfq", c.rendered);
    assert.ok(c.rendered.tc.some((l) => / sfq limit \d+ perturb 10$/.test(l)));
    assert.ok(!c.rendered.tc.some((l) => /fq_codel/.test(l)));
    assertIdempotent(c, d, PRODUCTION);
  });

  test("leaf-sfq-unavailable: sfq asked for on THIS_KERNEL falls back to a FIFO", () => {
    const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]), "leaf: sfq\n");
    const c = runCase(d, THIS_KERNEL);
    assert.ok(!c.rendered.tc.some((l) => / sfq /.test(l)));
  });

  const rates: [string, number, RegExp][] = [
    ["rate-1mbit", 125, / tbf rate 2000000bit burst 3028 limit \d+$/],
    ["rate-100mbit", 12_500, / bfifo limit 250000$/],
    ["rate-10gbit", 1_250_000, / bfifo limit 25000000$/],
  ];
  for (const [name, kBps, leaf] of rates) {
    test(`${name}: leaf by rate on THIS_KERNEL`, () => {
      const d = desired(
        domainXml("web1", UUID_A, [
          bridge(M.a1, "vnet1", { inbound: { average: kBps }, outbound: { average: kBps } }),
        ]),
      );
      const c = runCase(d, THIS_KERNEL);
      assertGolden(name, c.rendered);
      const leaves = c.rendered.tc.filter((l) => / parent 7651:1 handle /.test(l));
      assert.equal(leaves.length, 2);
      for (const l of leaves) assert.match(l, leaf);
      assertIdempotent(c, d, THIS_KERNEL);
    });
  }

  test("no-clsact: the old ingress qdisc carries the redirect", () => {
    const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]));
    const c = runCase(d, NO_CLSACT);
    assertGolden("no-clsact", c.rendered);
    assert.ok(c.rendered.tc.includes("qdisc add dev vnet1 handle ffff: ingress"));
    assertIdempotent(c, d, NO_CLSACT);
  });

  test("no-ifb: IFB_UNAVAILABLE, and nothing for that interface", () => {
    const d = desired(
      domainXml("web1", UUID_A, [
        bridge(M.a1, "vnet1", IN_OUT),
        bridge(M.a2, "vnet2", { inbound: { average: 3750 } }),
      ]),
    );
    const c = runCase(d, NO_IFB);
    assert.deepEqual(codes(c.plan), ["IFB_UNAVAILABLE"]);
    assert.deepEqual(opsFor(c.plan, `${UUID_A}/${M.a1}`), []);
    assertGolden("no-ifb", c.rendered);
  });
});

describe("golden: interfaces that cannot be shaped now", () => {
  test("vhostuser: no ops, a note", () => {
    const d = desired(
      domainXml("web1", UUID_A, [
        {
          type: "vhostuser",
          mac: M.a1,
          source: "<source type='unix' path='/run/vhost.sock' mode='server'/>",
          inbound: { average: 1000 },
        },
      ]),
    );
    const c = runCase(d, PRODUCTION);
    assertGolden("vhostuser", c.rendered);
    assert.deepEqual(c.plan.ops, []);
    assert.deepEqual(c.plan.problems, []);
    assert.equal(c.plan.notes.length, 1);
    assert.match(c.plan.notes[0].message, /not enforceable/);
    assert.match(c.plan.notes[0].message, /vhostuser/);
  });

  test("dev-missing: the tap is not in links; no ops, a note", () => {
    const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet9", IN_OUT)]));
    const c = runCase(d, THIS_KERNEL, freshKernel(d.interfaces, ["vnet9"]));
    assertGolden("dev-missing", c.rendered);
    assert.deepEqual(c.plan.ops, []);
    assert.equal(c.plan.notes.length, 1);
    assert.match(c.plan.notes[0].message, /vnet9 does not exist/);
  });

  test("no-limits: an interface with no limit anywhere gets a note and no ops", () => {
    const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1")]));
    const c = runCase(d, THIS_KERNEL);
    assert.deepEqual(c.plan.ops, []);
    assert.match(c.plan.notes[0].message, /no bandwidth limits/);
  });

  test("foreign-root: ROOT_QDISC_FOREIGN for that tap, the domain's other interface still planned", () => {
    const d = desired(
      domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT), bridge(M.a2, "vnet2", IN_OUT)]),
    );
    const kernel = freshKernel(d.interfaces);
    const vnet1 = kernel.devs.get("vnet1");
    assert.ok(vnet1);
    vnet1.qdiscs = [{ kind: "htb", handle: "1:", parent: "root", options: { r2q: 10, default: "0x0" } }];
    const c = runCase(d, THIS_KERNEL, kernel);
    assert.deepEqual(codes(c.plan), ["ROOT_QDISC_FOREIGN"]);
    assert.equal(c.plan.problems[0].dev, "vnet1");
    assert.match(c.plan.problems[0].message, /htb 1:/);
    assert.deepEqual(opsFor(c.plan, `${UUID_A}/${M.a1}`), []);
    assert.ok(
      c.plan.ops.every((o) => o.dev !== "vnet1" && o.dev !== interfaceIfbName(UUID_A, M.a1)),
      "neither the tap nor its IFB is touched",
    );
    assert.ok(opsFor(c.plan, `${UUID_A}/${M.a2}`).length > 0);
    assert.deepEqual(
      c.plan.records.flatMap((r) => r.interfaces.map((i) => i.mac)),
      [M.a2],
      "only the shaped interface is recorded",
    );
    assertGolden("foreign-root", c.rendered);
  });
});

describe("golden: changes", () => {
  test("change-leaf-kind: 10 -> 100 Mbit/s swaps the tbf leaf for a bfifo under a new handle", () => {
    const small = desired(
      domainXml("web1", UUID_A, [
        bridge(M.a1, "vnet1", { inbound: { average: 1250 }, outbound: { average: 1250 } }),
      ]),
    );
    const c = runCase(small, THIS_KERNEL);
    c.kernel.apply(c.plan.ops);
    const big = desired(
      domainXml("web1", UUID_A, [
        bridge(M.a1, "vnet1", { inbound: { average: 12_500 }, outbound: { average: 12_500 } }),
      ]),
    );
    const p = plan(big.interfaces, c.kernel.observe(c.plan.records), THIS_KERNEL, options(big));
    assertGolden("change-leaf-kind", render(p.ops));
    assert.deepEqual(
      p.ops.map((o) => o.op),
      ["class-replace", "leaf-replace", "class-replace", "leaf-replace"],
    );
    c.kernel.apply(p.ops);
    assert.deepEqual(plan(big.interfaces, c.kernel.observe(p.records), THIS_KERNEL, options(big)).ops, []);
  });

  test("change-remove-direction: dropping the upload limit removes the redirect and the IFB", () => {
    const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]));
    const c = runCase(d, THIS_KERNEL);
    c.kernel.apply(c.plan.ops);
    const d2 = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", { inbound: { average: 3750 } })]));
    const p = plan(d2.interfaces, c.kernel.observe(c.plan.records), THIS_KERNEL, options(d2));
    assertGolden("change-remove-direction", render(p.ops));
    assert.deepEqual(
      p.ops.map((o) => o.op),
      ["filter-del", "hook-del", "ifb-del"],
    );
    c.kernel.apply(p.ops);
    assert.deepEqual(plan(d2.interfaces, c.kernel.observe(p.records), THIS_KERNEL, options(d2)).ops, []);
  });

  test("change-to-police: shaping through an IFB becomes policing", () => {
    const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]));
    const caps = { ...PRODUCTION, classifiers: ["u32"] };
    const c = runCase(d, caps);
    c.kernel.apply(c.plan.ops);
    const d2 = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]), "upload: police\n");
    const p = plan(d2.interfaces, c.kernel.observe(c.plan.records), caps, options(d2));
    assertGolden("change-to-police", render(p.ops));
    c.kernel.apply(p.ops);
    assert.deepEqual(plan(d2.interfaces, c.kernel.observe(p.records), caps, options(d2)).ops, []);
  });
});

describe("idempotence", () => {
  test("re-planning over exactly the desired state yields zero ops (several recipes)", () => {
    const cases: [string, Capabilities][] = [
      ["", THIS_KERNEL],
      ["", PRODUCTION],
      ["leaf: sfq\n", PRODUCTION],
      ["leaf: fifo\n", PRODUCTION],
      ["upload: police\n", PRODUCTION],
      ["", NO_CLSACT],
    ];
    for (const [policy, caps] of cases) {
      for (const bw of [
        IN_OUT,
        { inbound: { average: 125, peak: 250, burst: 32 }, outbound: { average: 1_250_000 } },
      ]) {
        const d = desired(
          domainXml("web1", UUID_A, [
            bridge(M.a1, "vnet1", bw),
            { type: "direct", mac: M.a2, dev: "macvtap0", ...bw },
          ]),
          policy,
        );
        const c = runCase(d, caps);
        assert.ok(c.plan.ops.length > 0);
        assertIdempotent(c, d, caps);
      }
    }
  });

  test("the record keeps createdHook across re-applies", () => {
    const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]));
    const c = runCase(d, THIS_KERNEL);
    assert.equal(c.plan.records[0].interfaces[0].createdHook, true);
    c.kernel.apply(c.plan.ops);
    const again = plan(d.interfaces, c.kernel.observe(c.plan.records), THIS_KERNEL, options(d));
    assert.equal(again.records[0].interfaces[0].createdHook, true);
    assert.equal(again.records[0].interfaces[0].ifindex, 11);
    assert.equal(again.records[0].interfaces[0].ifb, interfaceIfbName(UUID_A, M.a1));
  });

  test("a changed rate replaces only the class", () => {
    const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]));
    const c = runCase(d, THIS_KERNEL);
    c.kernel.apply(c.plan.ops);
    const d2 = desired(
      domainXml("web1", UUID_A, [
        bridge(M.a1, "vnet1", { inbound: { average: 3750 }, outbound: { average: 2500 } }),
      ]),
    );
    const again = plan(d2.interfaces, c.kernel.observe(c.plan.records), THIS_KERNEL, options(d2));
    assertGolden("change-outbound-rate", render(again.ops));
    assert.ok(again.ops.every((o) => o.dev === interfaceIfbName(UUID_A, M.a1)));
    c.kernel.apply(again.ops);
  });
});

// ---------------------------------------------------------------------------------------------------------
// Removal and sweeping

/** A kernel where domain web1 (UUID_A) was shaped on vnet1 by THIS_KERNEL's recipe, plus its record. */
function shapedKernel(createdHook: boolean): { kernel: FakeKernel; records: DomainRecord[] } {
  const d = desired(domainXml("web1", UUID_A, [bridge(M.a1, "vnet1", IN_OUT)]));
  const c = runCase(d, THIS_KERNEL);
  c.kernel.apply(c.plan.ops);
  const records = c.plan.records.map((r) => ({
    ...r,
    interfaces: r.interfaces.map((i) => ({ ...i, createdHook })),
  }));
  return { kernel: c.kernel, records };
}

describe("golden: removal", () => {
  const scope = { policy: emptyPolicy(), uuid: UUID_A };

  test("the shaped state looks as expected before removal", () => {
    const { kernel } = shapedKernel(true);
    const ifb = kernel.devs.get(interfaceIfbName(UUID_A, M.a1));
    assert.equal(ifb?.alias, formatIfbAlias({ role: "iface", domainUuid: UUID_A, mac: M.a1, dev: "vnet1" }));
    assert.deepEqual(
      kernel.devs
        .get("vnet1")
        ?.qdiscs.map((q) => `${q.kind} ${q.handle}`)
        .sort(),
      ["clsact ffff:", "htb 7651:", "tbf 7655:"],
    );
  });

  test("remove-created-hook: root-del, filter-del, hook-del, ifb-del", () => {
    const { kernel, records } = shapedKernel(true);
    const p = plan([], kernel.observe(records), THIS_KERNEL, options(scope));
    assert.deepEqual(
      p.ops.map((o) => o.op),
      ["root-del", "filter-del", "hook-del", "ifb-del"],
    );
    assert.deepEqual(p.records, []);
    assert.deepEqual(p.forget, [UUID_A]);
    assertGolden("remove-created-hook", render(p.ops));
    kernel.apply(p.ops);
    assert.deepEqual(
      kernel.devs.get("vnet1")?.qdiscs.map((q) => q.kind),
      ["noqueue"],
    );
    assert.ok(!kernel.devs.has(interfaceIfbName(UUID_A, M.a1)));
  });

  test("remove-kept-hook: the hook qdisc stays when virtqos did not create it", () => {
    const { kernel, records } = shapedKernel(false);
    const p = plan([], kernel.observe(records), THIS_KERNEL, options(scope));
    assert.deepEqual(
      p.ops.map((o) => o.op),
      ["root-del", "filter-del", "ifb-del"],
    );
    assertGolden("remove-kept-hook", render(p.ops));
    kernel.apply(p.ops);
  });

  test("remove-foreign-filter: a filter at prio 10 survives and keeps the hook qdisc", () => {
    const { kernel, records } = shapedKernel(true);
    kernel.devs.get("vnet1")?.filters.push({ hook: "ingress", prio: 10, kind: "u32", protocol: "ip" });
    const p = plan([], kernel.observe(records), THIS_KERNEL, options(scope));
    assert.deepEqual(
      p.ops.map((o) => o.op),
      ["root-del", "filter-del", "ifb-del"],
    );
    for (const o of p.ops) if (o.op === "filter-del") assert.equal(o.prio, 64000);
    assert.ok(!lines(render(p.ops)).some((l) => /prio 10\b/.test(l)));
    assertGolden("remove-foreign-filter", render(p.ops));
    kernel.apply(p.ops);
    assert.deepEqual(
      kernel.devs.get("vnet1")?.filters.map((f) => f.prio),
      [10],
    );
  });

  // Without a record (lost or never written), the domain's IFB is still found by its alias and deleted, but the
  // tap's redirect filter to it is left behind: mirred then drops every packet (guest upload blackholed).
  test("removing an IFB never leaves a redirect to it behind", () => {
    const { kernel } = shapedKernel(true);
    const p = plan([], kernel.observe([]), THIS_KERNEL, options(scope));
    kernel.apply(p.ops);
    const dangling =
      kernel.devs.get("vnet1")?.filters.filter((f) => f.redirectDev?.startsWith("(gone:")) ?? [];
    assert.deepEqual(dangling, [], `ops were: ${lines(render(p.ops)).join(" | ")}`);
  });

  test("another domain's scope touches nothing of web1", () => {
    const { kernel, records } = shapedKernel(true);
    const p = plan(
      [],
      kernel.observe(records),
      THIS_KERNEL,
      options({ policy: emptyPolicy(), uuid: UUID_B }),
    );
    assert.deepEqual(p.ops, []);
  });

  test("a reused tap name (different ifindex) is not cleaned on the record's word", () => {
    const { kernel, records } = shapedKernel(true);
    const stale = records.map((r) => ({
      ...r,
      interfaces: r.interfaces.map((i) => ({ ...i, ifindex: 999 })),
    }));
    const p = plan([], kernel.observe(stale), THIS_KERNEL, options(scope));
    // Only the redirect to the IFB being deleted may go (a dangling redirect drops traffic); the tap's tree
    // and hook qdisc are left to whoever uses vnet1 now.
    assert.deepEqual(
      p.ops.filter((o) => o.dev === "vnet1").map((o) => o.op),
      ["filter-del"],
      JSON.stringify(p.ops),
    );
  });

  test("scope all finds virtqos objects without records", () => {
    const { kernel } = shapedKernel(true);
    const ifb = interfaceIfbName(UUID_A, M.a1);
    const p = plan([], kernel.observe([]), THIS_KERNEL, options(scope, { scope: "all" }));
    const got = p.ops.map((o) => `${o.op} ${o.dev}`);
    for (const want of ["root-del vnet1", "filter-del vnet1", `ifb-del ${ifb}`])
      assert.ok(got.includes(want), `${want} in ${got}`);
    assert.ok(!got.includes("hook-del vnet1"), "without a record virtqos cannot know it created the clsact");
    kernel.apply(p.ops);
    assert.ok(!kernel.devs.has(ifb));
  });
});

describe("golden: sweep", () => {
  function orphanKernel(): FakeKernel {
    const k = new FakeKernel();
    k.addLink("vnet1", { ifindex: 11, kind: "tun" });
    const orphan = interfaceIfbName(UUID_B, M.b1);
    k.addLink(orphan, {
      kind: "ifb",
      alias: formatIfbAlias({ role: "iface", domainUuid: UUID_B, mac: M.b1, dev: "vnet7" }),
    });
    // An IFB of a live tap, another domain's, and someone else's IFB without our alias.
    k.addLink(interfaceIfbName(UUID_B, "52:54:00:0f:00:02"), {
      kind: "ifb",
      alias: formatIfbAlias({ role: "iface", domainUuid: UUID_B, mac: "52:54:00:0f:00:02", dev: "vnet1" }),
    });
    k.addLink("ifb0", { kind: "ifb" });
    return k;
  }

  test("sweep-on: an IFB aliased to a tap that no longer exists is deleted", () => {
    const p = plan([], orphanKernel().observe(), THIS_KERNEL, { leaf: "auto", scope: [UUID_A], sweep: true });
    assert.deepEqual(
      p.ops.map((o) => `${o.op} ${o.dev}`),
      [`ifb-del ${interfaceIfbName(UUID_B, M.b1)}`],
    );
    assert.equal(p.ops[0].iface, `${UUID_B}/${M.b1}`);
    assertGolden("sweep-on", render(p.ops));
  });

  test("sweep-off: the orphan is kept", () => {
    const p = plan([], orphanKernel().observe(), THIS_KERNEL, {
      leaf: "auto",
      scope: [UUID_A],
      sweep: false,
    });
    assert.deepEqual(p.ops, []);
    assertGolden("sweep-off", render(p.ops));
  });

  test("an alias that is not ours is never swept", () => {
    const k = orphanKernel();
    const observed = k.observe();
    assert.equal(parseIfbAlias(observed.links.get("ifb0")?.alias), undefined);
    const p = plan([], observed, THIS_KERNEL, { leaf: "auto", scope: "all", sweep: true });
    assert.ok(p.ops.every((o) => o.dev !== "ifb0"));
  });
});

test("every golden file belongs to a case", () => {
  if (UPDATE) return;
  const onDisk = readdirSync(fileURLToPath(EXPECTED))
    // group-*.txt belong to test/golden/groups.test.ts, which checks them itself.
    .filter((f) => f.endsWith(".txt") && !f.startsWith("group-"))
    .map((f) => f.slice(0, -4));
  const stale = onDisk.filter((n) => !usedGoldens.has(n));
  assert.deepEqual(stale, [], "golden files no test uses (renamed or removed cases?)");
});
