// A small fake kernel for the golden tests (test/golden/*.test.ts): state as tc keeps it, read back through the
// same parsers observe() uses (tc JSON for links, qdiscs and filters, `tc -d class show` text for HTB classes),
// with tc's rounding of rates and sizes. It knows the per-interface recipes (HTB, tbf/bfifo/sfq/fq_codel leaves,
// fq_codel as a tbf's child, clsact/ingress hooks, u32/matchall redirects and police) and the group trees' u32
// classification filters on the root qdisc, with the kernel's rules (kernel 6.18, checked): a hash table linked
// from a node cannot be deleted, deleting the last node of a priority removes the whole priority, HTB refuses to
// delete a class a filter points to, a qdisc replaced under another handle goes with the qdiscs under it.
// Everything it changes is journaled, so a sequence can be replayed on the real kernel.
//
// Also here: the golden-file helpers both golden test files use (expected output in test/golden/expected/).

import assert from "node:assert/strict";
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import type { DomainRecord } from "../../src/core/model.js";
import type { Observed, Op } from "../../src/core/plan/index.js";
import type { Capabilities } from "../../src/core/recipe.js";
import {
  filtersFromJson,
  linksFromJson,
  type ObservedDevice,
  type ObservedLink,
  parseClasses,
  parseTcJson,
  printTcRate,
  qdiscsFromJson,
} from "../../src/core/tc/normalise.js";
import { type Rendered, render } from "../../src/core/tc/render.js";
import { renderTreeFilter, u32HandleKey } from "../../src/core/tc/tree.js";
import { tcRejects } from "./tc-limits.js";

export interface KQdisc {
  kind: string;
  handle: string;
  parent: string;
  options: Record<string, unknown>;
}
export interface KClass {
  classid: string;
  parent: string;
  rate: number;
  ceil: number;
  burst: number;
  cburst: number;
  quantum: number;
}
/** A filter on a hook qdisc (ingress/clsact). */
export interface KFilter {
  hook: "ingress" | "egress";
  prio: number;
  kind: string;
  protocol: string;
  redirectDev?: string;
  police?: { rate: number; burst: number };
}
/**
 * A u32 object on the root qdisc 7651: (a group tree): a hash table ("100:") or a node ("100:a:1f3", "800::800"),
 * its handle spelled as tc prints it (bucket 0 as nothing: "100::1f3").
 */
export interface KTreeFilter {
  prio: number;
  handle: string;
  divisor?: number;
  link?: string;
  /** A link node's hash key: `hashkey mask M at OFFSET`. */
  hashKey?: { mask: number; offsetBytes: number };
  flowid?: string;
  /** A member node's `match ether dst|src MAC`. */
  ether?: { field: "dst" | "src"; mac: string };
  /** What was added: the text after `protocol all`. */
  spec: string;
}
/** A link (what `ip -j link` reports of it) and the tc state on it. */
export interface KDev extends ObservedLink {
  qdiscs: KQdisc[];
  classes: KClass[];
  filters: KFilter[];
  tree: KTreeFilter[];
}

export type JournalEntry =
  | { kind: "link-add"; name: string; ifindex: number }
  | { kind: "link-del"; name: string }
  | { kind: "batch"; rendered: Rendered };

export interface FakeKernelOptions {
  /** The ifindex of the first link added without an explicit one (default 100). */
  firstIfindex?: number;
  /** What this kernel has: when given, ops needing a qdisc, classifier or action it lacks fail. */
  caps?: Capabilities;
}

const NOQUEUE: KQdisc = { kind: "noqueue", handle: "0:", parent: "root", options: {} };
const HOOK_PARENT = "ffff:fff1";

export class FakeKernel {
  devs = new Map<string, KDev>();
  journal: JournalEntry[] = [];
  private nextIfindex: number;
  private readonly caps?: Capabilities;

  constructor(opts: FakeKernelOptions = {}) {
    this.nextIfindex = opts.firstIfindex ?? 100;
    this.caps = opts.caps;
  }

  /** A link that exists before virtqos runs (a tap, someone's IFB, ...). */
  addLink(name: string, opts: Partial<KDev> = {}): KDev {
    const dev = this.newDev(name, opts);
    this.journal.push({ kind: "link-add", name, ifindex: dev.ifindex });
    return dev;
  }

  /** A guest's tap (or macvtap): on the real kernel, one end of a veth pair. */
  addTap(name: string): KDev {
    return this.addLink(name, { kind: "tun" });
  }

  /** The guest is gone without its release hook: the tap and everything on it vanish. */
  delTap(name: string): void {
    this.removeDev(name);
    this.journal.push({ kind: "link-del", name });
  }

  private newDev(name: string, opts: Partial<KDev>): KDev {
    const dev: KDev = {
      name,
      ifindex: opts.ifindex ?? this.nextIfindex++,
      up: true,
      qdiscs: [{ ...NOQUEUE, options: {} }],
      classes: [],
      filters: [],
      tree: [],
      ...opts,
    };
    this.devs.set(name, dev);
    return dev;
  }

  private removeDev(name: string): void {
    this.dev(name);
    this.devs.delete(name);
    for (const d of this.devs.values()) {
      // mirred forgets a deleted target; keep the filter (as the kernel does) so tests can see it dangle.
      for (const f of d.filters) if (f.redirectDev === name) f.redirectDev = `(gone:${name})`;
    }
  }

  private dev(name: string): KDev {
    const d = this.devs.get(name);
    if (!d) throw new Error(`Cannot find device "${name}"`);
    return d;
  }

  /** Fail like a kernel without `what` would. */
  private need(list: "qdiscs" | "classifiers" | "actions", what: string): void {
    if (this.caps && !this.caps[list].includes(what))
      throw new Error(`${what} is not in this kernel (${list}: ${this.caps[list].join(", ")})`);
  }

  /** Apply ops in order, failing like tc/ip would on an impossible step. */
  apply(ops: Op[]): void {
    this.journal.push({ kind: "batch", rendered: render(ops) });
    for (const op of ops) this.applyOne(op);
  }

  private applyOne(op: Op): void {
    switch (op.op) {
      case "ifb-add":
        if (this.caps && !this.caps.ifb) throw new Error(`ifb-add ${op.dev}: Unknown device type`);
        if (this.devs.has(op.dev)) throw new Error(`ifb-add ${op.dev}: File exists`);
        this.newDev(op.dev, { kind: "ifb", alias: op.alias, up: false });
        return;
      case "link-up":
        this.dev(op.dev).up = true;
        return;
      case "ifb-del":
        this.removeDev(op.dev);
        return;
      case "root-replace": {
        const d = this.dev(op.dev);
        const root = d.qdiscs.find((q) => q.parent === "root");
        const defaultHex = `0x${op.defaultMinor.toString(16)}`;
        if (root?.handle === "7651:" && root.kind === "htb") {
          root.options.default = defaultHex;
        } else {
          this.need("qdiscs", "htb");
          d.qdiscs = [
            {
              kind: "htb",
              handle: "7651:",
              parent: "root",
              options: { r2q: 10, default: defaultHex, direct_packets_stat: 0, direct_qlen: 1000 },
            },
            ...d.qdiscs.filter((q) => q.parent === HOOK_PARENT),
          ];
          d.classes = [];
          d.tree = [];
        }
        return;
      }
      case "root-del": {
        const d = this.dev(op.dev);
        if (!d.qdiscs.some((q) => q.parent === "root" && q.handle !== "0:"))
          throw new Error(`root-del ${op.dev}: Cannot delete qdisc with handle of zero`);
        d.qdiscs = [{ ...NOQUEUE, options: {} }, ...d.qdiscs.filter((q) => q.parent === HOOK_PARENT)];
        d.classes = [];
        d.tree = [];
        return;
      }
      case "class-replace": {
        const d = this.dev(op.dev);
        const parentOk =
          d.qdiscs.some((q) => q.kind === "htb" && q.handle === op.parent) ||
          d.classes.some((c) => c.classid === op.parent);
        if (!parentOk)
          throw new Error(`class-replace ${op.dev} ${op.classid}: parent ${op.parent} does not exist`);
        // The kernel (6.18, checked) accepts `class replace` of an existing class under another parent and keeps
        // the old parent: only the rates change.
        const old = d.classes.find((c) => c.classid === op.classid);
        const k: KClass = {
          classid: op.classid,
          parent: old?.parent ?? op.parent,
          rate: op.htb.rateBytesPerSec,
          ceil: op.htb.ceilBytesPerSec,
          burst: op.htb.burstBytes,
          cburst: op.htb.cburstBytes,
          quantum: op.htb.quantumBytes,
        };
        d.classes = [...d.classes.filter((c) => c.classid !== op.classid), k];
        return;
      }
      case "class-del": {
        const d = this.dev(op.dev);
        if (!d.classes.some((c) => c.classid === op.classid))
          throw new Error(`class-del ${op.classid}: no class`);
        if (d.classes.some((c) => c.parent === op.classid))
          throw new Error(`class-del ${op.classid}: class has children`);
        if (d.tree.some((f) => f.flowid === op.classid))
          throw new Error(`class-del ${op.classid}: HTB class in use`);
        d.classes = d.classes.filter((c) => c.classid !== op.classid);
        const leaf = d.qdiscs.find((q) => q.parent === op.classid);
        d.qdiscs = d.qdiscs.filter((q) => q !== leaf && !(leaf && isUnder(d.qdiscs, q, leaf)));
        return;
      }
      case "leaf-replace": {
        const d = this.dev(op.dev);
        // An HTB class, or the one class of a TBF (`<tbf handle>1`), which takes a child qdisc.
        const tbfClass = d.qdiscs.some((q) => q.kind === "tbf" && `${q.handle}1` === op.parent);
        if (!d.classes.some((c) => c.classid === op.parent) && !tbfClass)
          throw new Error(`leaf-replace: class ${op.parent} missing`);
        const l = op.leaf;
        this.need("qdiscs", l.kind);
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
        const clash = d.qdiscs.find((q) => q.handle === op.handle && q.parent !== op.parent);
        if (clash)
          throw new Error(`leaf-replace ${op.dev} ${op.handle}: handle in use under ${clash.parent}`);
        const old = d.qdiscs.find((q) => q.parent === op.parent);
        // The same handle is a change in place (tc_modify_qdisc): the kind must match ("Invalid argument"), and
        // the qdisc keeps its children (a TBF's child stays; the kernel passes a new limit to FIFO children only).
        if (old?.handle === op.handle) {
          if (old.kind !== l.kind)
            throw new Error(`leaf-replace ${op.dev} ${op.handle}: Specified qdisc kind is different`);
          old.options = options;
          return;
        }
        // Another handle grafts a new qdisc: the old one goes with everything under it. A new TBF gets the
        // default bfifo child, which the kernel does not list.
        d.qdiscs = [
          ...d.qdiscs.filter((q) => q !== old && !(old && isUnder(d.qdiscs, q, old))),
          { kind: l.kind, handle: op.handle, parent: op.parent, options },
        ];
        return;
      }
      case "hook-add": {
        const d = this.dev(op.dev);
        this.need("qdiscs", op.kind);
        if (d.qdiscs.some((q) => q.parent === HOOK_PARENT))
          throw new Error(`hook-add ${op.dev}: Exclusivity flag on, cannot modify`);
        d.qdiscs.push({ kind: op.kind, handle: "ffff:", parent: HOOK_PARENT, options: {} });
        return;
      }
      case "hook-del": {
        const d = this.dev(op.dev);
        if (!d.qdiscs.some((q) => q.parent === HOOK_PARENT && q.kind === op.kind))
          throw new Error(`hook-del ${op.dev}: no ${op.kind}`);
        d.qdiscs = d.qdiscs.filter((q) => q.parent !== HOOK_PARENT);
        d.filters = [];
        return;
      }
      case "filter-add":
      case "filter-replace": {
        const d = this.dev(op.dev);
        const hookQ = d.qdiscs.find((q) => q.parent === HOOK_PARENT);
        if (!hookQ) throw new Error(`filter ${op.dev}: Parent Qdisc doesn't exists`);
        if (op.hook === "egress" && hookQ.kind !== "clsact")
          throw new Error(`filter ${op.dev} egress needs clsact`);
        this.need("classifiers", op.classifier);
        this.need("actions", op.filter.action === "redirect" ? "mirred" : "police");
        const same = d.filters.find((f) => f.hook === op.hook && f.prio === op.prio);
        if (same && same.kind !== op.classifier)
          throw new Error(`filter ${op.dev}: prio ${op.prio} has another kind`);
        if (same && op.op === "filter-add" && op.classifier === "matchall")
          throw new Error("matchall: File exists");
        if (op.filter.action === "redirect" && !this.devs.has(op.filter.toDev))
          throw new Error(`mirred: Cannot find device "${op.filter.toDev}"`);
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
        return;
      }
      case "filter-del": {
        const d = this.dev(op.dev);
        if (!d.filters.some((f) => f.hook === op.hook && f.prio === op.prio))
          throw new Error(
            `filter-del ${op.dev} ${op.hook} prio ${op.prio}: Filter with specified priority/protocol not found`,
          );
        d.filters = d.filters.filter((f) => !(f.hook === op.hook && f.prio === op.prio));
        return;
      }
      case "tree-filter-add":
        // Taken as tc takes it, as text: the fake kernel checks what render() writes, not the planner's data.
        this.treeFilterAdd(this.dev(op.dev), op.prio, renderTreeFilter(op.filter));
        return;
      case "tree-filter-del":
        this.treeFilterDel(this.dev(op.dev), op.prio, op.handle);
        return;
      default:
        throw new Error(`fake kernel: unknown op ${JSON.stringify(op)}`);
    }
  }

  /** `tc filter add dev D parent 7651: prio P protocol all <spec>` for the three u32 forms group trees use. */
  private treeFilterAdd(d: KDev, prio: number, spec: string): void {
    if (!d.qdiscs.some((q) => q.parent === "root" && q.kind === "htb" && q.handle === "7651:"))
      throw new Error(`tree filter on ${d.name}: no root 7651:`);
    this.need("classifiers", "u32");
    const atPrio = d.tree.filter((f) => f.prio === prio);
    const table = /^handle ([0-9a-f]+:) u32 divisor (\d+)$/.exec(spec);
    const link =
      /^u32 ht 800:: match u32 0 0 hashkey mask (0x[0-9a-f]{8}) at (-?\d+) link ([0-9a-f]+:)$/.exec(spec);
    const node =
      /^handle ([0-9a-f]+):([0-9a-f]+):([0-9a-f]+) u32 ht ([0-9a-f]+):([0-9a-f]+): match ether (dst|src) ([0-9a-f:]{17}) flowid (7651:[0-9a-f]+)$/.exec(
        spec,
      );
    if (table) {
      if (atPrio.some((f) => f.handle === table[1])) throw new Error(`u32 ${table[1]}: File exists`);
      d.tree.push({ prio, handle: table[1], divisor: Number(table[2]), spec });
    } else if (link) {
      const target = atPrio.find((f) => f.handle === link[3] && f.divisor !== undefined);
      if (!target) throw new Error(`u32 link ${link[3]}: Link hash table not found`);
      // The kernel numbers nodes of 800: from 800 up.
      let n = 0x800;
      while (atPrio.some((f) => f.handle === `800::${n.toString(16)}`)) n++;
      d.tree.push({
        prio,
        handle: `800::${n.toString(16)}`,
        link: link[3],
        hashKey: { mask: Number.parseInt(link[1], 16), offsetBytes: Number(link[2]) },
        spec,
      });
    } else if (node) {
      const [, ht, bucket, , inHt, inBucket] = node;
      const handle = u32Print(ht, bucket, node[3]);
      const table = atPrio.find((f) => f.handle === `${ht}:` && f.divisor !== undefined);
      if (!table) throw new Error(`u32 ${handle}: hash table ${ht}: not found`);
      if (ht !== inHt || bucket !== inBucket)
        throw new Error(`u32 ${handle}: handle not in ht ${inHt}:${inBucket}:`);
      if (Number.parseInt(bucket, 16) >= (table.divisor ?? 1))
        throw new Error(`u32 ${handle}: bucket beyond divisor`);
      if (Number.parseInt(node[3], 16) > 0xfff) throw new Error(`u32 ${handle}: node id over 12 bits`);
      if (atPrio.some((f) => u32HandleKey(f.handle) === u32HandleKey(handle)))
        throw new Error(`u32 ${handle}: File exists`);
      // Stricter than the kernel (which binds later): the class must exist before a filter points to it.
      if (!d.classes.some((c) => c.classid === node[8]))
        throw new Error(`u32 ${handle}: class ${node[8]} missing`);
      d.tree.push({
        prio,
        handle,
        flowid: node[8],
        ether: { field: node[6] as "dst" | "src", mac: node[7] },
        spec,
      });
    } else {
      throw new Error(`fake kernel: unexpected tree filter spec "${spec}"`);
    }
  }

  private treeFilterDel(d: KDev, prio: number, handle: string): void {
    const atPrio = d.tree.filter((f) => f.prio === prio);
    const f = atPrio.find((x) => u32HandleKey(x.handle) === u32HandleKey(handle));
    if (!f) throw new Error(`tree-filter-del ${d.name} ${handle}: Cannot find specified filter chain`);
    if (f.divisor !== undefined) {
      if (atPrio.some((x) => x.link === f.handle))
        throw new Error(`u32 ${handle}: Can not delete in-use filter`);
      d.tree = d.tree.filter(
        (x) => !(x.prio === prio && (x.handle === f.handle || x.handle.startsWith(f.handle))),
      );
      return;
    }
    d.tree = d.tree.filter((x) => x !== f);
    // The last node of a priority gone: the kernel destroys the priority with its hash tables.
    if (!d.tree.some((x) => x.prio === prio && x.divisor === undefined))
      d.tree = d.tree.filter((x) => x.prio !== prio);
  }

  /** What observe() would produce: everything passes through the real parsers in src/core/tc/normalise.ts. */
  observe(records: DomainRecord[] = []): Observed {
    const linkJson = [...this.devs.values()].map((d) => ({
      ifindex: d.ifindex,
      ifname: d.name,
      flags: d.up ? ["BROADCAST", "NOARP", "UP", "LOWER_UP"] : ["BROADCAST", "NOARP"],
      ...(d.alias ? { ifalias: d.alias } : {}),
      ...(d.master ? { master: d.master } : {}),
      ...(d.kind ? { linkinfo: { info_kind: d.kind } } : {}),
    }));
    const links = new Map(linksFromJson(roundTrip(linkJson)).map((l) => [l.name, l]));
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
    const qdiscs = qdiscsFromJson(roundTrip(qdiscJson));
    const devices = new Map<string, ObservedDevice>();
    for (const d of this.devs.values()) {
      const ours = d.qdiscs.some((q) => q.parent === "root" && q.kind === "htb" && q.handle === "7651:");
      const filters = [
        ...(["ingress", "egress"] as const).flatMap((hook) =>
          filtersFromJson(roundTrip(hookFilterJson(d.filters.filter((f) => f.hook === hook))), hook),
        ),
        ...(ours ? filtersFromJson(parseTcJson(tcJsonText(treeFilterJson(d.tree))), "class", "7651:") : []),
      ];
      devices.set(d.name, {
        dev: d.name,
        qdiscs: qdiscs.get(d.name) ?? [],
        classes: parseClasses(
          [...d.classes.map((c) => classLine(c, d)), ...d.qdiscs.flatMap((q) => tbfClassLine(q, d))].join(
            "\n",
          ),
        ),
        filters,
      });
    }
    return { links, devices, records };
  }
}

/** Whether `q` hangs, directly or further down, on a class of `top` (a TBF's child hangs on `<tbf handle>1`). */
function isUnder(all: KQdisc[], q: KQdisc, top: KQdisc): boolean {
  let major = `${q.parent.split(":")[0]}:`;
  for (let n = 0; n < 8; n++) {
    if (major === top.handle) return true;
    const up = all.find((x) => x.handle === major);
    if (!up) return false;
    major = `${up.parent.split(":")[0]}:`;
  }
  return false;
}

/** Through JSON text and back, as the real output is parsed. */
const roundTrip = (x: unknown): unknown => JSON.parse(JSON.stringify(x));

/**
 * JSON text as `tc -j` writes it: a u32 node's keys are repeated `"match"` members of one object (written here
 * from an array), which only parseTcJson reads back whole.
 */
function tcJsonText(x: unknown): string {
  return JSON.stringify(x).replace(/"match":\[((?:\{[^{}]*\},?)*)\]/g, (_all, inner: string) =>
    inner
      .split(/,(?=\{)/)
      .map((k) => `"match":${k}`)
      .join(","),
  );
}

/** A u32 handle as tc prints it: bucket 0 as nothing ("100::1f3"). */
function u32Print(ht: string, bucket: string, node: string): string {
  return `${ht}:${Number.parseInt(bucket, 16) === 0 ? "" : bucket}:${node}`;
}

/**
 * `match ether dst|src MAC` as tc packs it: one 4-byte key per aligned word the MAC touches (offsets from the
 * network header: destination MAC at -14, source at -8), value and mask printed in hex without leading zeros.
 */
function etherKeys(
  field: "dst" | "src",
  mac: string,
): { value: string; mask: string; offmask: ""; off: number }[] {
  const start = field === "dst" ? -14 : -8;
  const words = new Map<number, { value: number; mask: number }>();
  mac.split(":").forEach((b, i) => {
    const at = start + i;
    const word = at - (((at % 4) + 4) % 4);
    const shift = 8 * (3 - (at - word));
    const w = words.get(word) ?? { value: 0, mask: 0 };
    w.value = (w.value | (Number.parseInt(b, 16) << shift)) >>> 0;
    w.mask = (w.mask | (0xff << shift)) >>> 0;
    words.set(word, w);
  });
  return [...words.entries()]
    .sort(([a], [b]) => a - b)
    .map(([off, w]) => ({ value: w.value.toString(16), mask: w.mask.toString(16), offmask: "", off }));
}

// ---------------------------------------------------------------------------------------------------------
// tc's rounding

/** tc's sprint_size (tc_util.c): "62493b", "64Kb" near a KiB multiple, "1Mb" near a MiB multiple. */
export function tcSizeText(bytes: number): string {
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
export function ticksRoundTrip(bytesPerSec: number, bytes: number): number {
  // tc_calc_xmittime in tc's double arithmetic: 1e6 * (size / rate), truncated.
  const ticks = Math.floor(Math.floor(1e6 * (bytes / bytesPerSec)) * TICKS_PER_US);
  return Math.floor((bytesPerSec * tick2time(ticks)) / 1e6);
}

/** TBF gets the burst in bytes (TCA_TBF_BURST); the kernel keeps ns and dumps ticks: 3028 at 60 Mbit/s -> 3022. */
function tbfTicks(bytesPerSec: number, bytes: number): number {
  return Math.floor(Math.floor((bytes * 1e9) / bytesPerSec) / 64);
}
export function tbfBurstRoundTrip(bytesPerSec: number, bytes: number): number {
  return Math.floor((bytesPerSec * tick2time(tbfTicks(bytesPerSec, bytes))) / 1e6);
}
/** q_tbf.c: latency = limit / rate - tick2time(buffer), in µs. */
export function tbfLatency(bytesPerSec: number, limitBytes: number, burstBytes: number): number {
  return Math.floor((1e6 * limitBytes) / bytesPerSec - tick2time(tbfTicks(bytesPerSec, burstBytes)));
}

// ---------------------------------------------------------------------------------------------------------
// What tc prints

/** One class as `tc -d class show` prints it. */
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

/** A TBF's one class as `tc -d -s class show` lists it among the HTB classes (kernel 6.18, checked). */
function tbfClassLine(q: KQdisc, d: KDev): string[] {
  if (q.kind !== "tbf") return [];
  const child = d.qdiscs.find((x) => x.parent === `${q.handle}1`);
  return [
    `class tbf ${q.handle}1 parent ${q.handle} ${child ? `leaf ${child.handle} ` : ""}\n` +
      " Sent 0 bytes 0 pkt (dropped 0, overlimits 0 requeues 0) \n backlog 0b 0p requeues 0",
  ];
}

/** `tc -j filter show dev X ingress|egress` as iproute2 6.1 prints it for u32/matchall with mirred or police. */
function hookFilterJson(filters: KFilter[]): unknown[] {
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

/** `tc -j filter show dev X parent 7651:` for a group tree, shaped like iproute2 6.1's output on kernel 6.18. */
function treeFilterJson(tree: KTreeFilter[]): unknown[] {
  const out: unknown[] = [];
  for (const prio of new Set(tree.map((f) => f.prio))) {
    const head = { protocol: "all", pref: prio, kind: "u32", chain: 0 };
    out.push(head);
    const here = tree.filter((f) => f.prio === prio);
    for (const t of here.filter((f) => f.divisor !== undefined)) {
      out.push({ ...head, options: { fh: t.handle, ht_divisor: t.divisor } });
      for (const n of here.filter((f) => f.flowid && f.handle.startsWith(t.handle))) {
        const [ht, bkt, id] = n.handle.split(":");
        out.push({
          ...head,
          options: {
            fh: n.handle,
            order: Number.parseInt(id, 16),
            key_ht: ht,
            bkt: bkt || "0",
            flowid: n.flowid,
            not_in_hw: true,
            ...(n.ether ? { match: etherKeys(n.ether.field, n.ether.mac) } : {}),
          },
        });
      }
    }
    out.push({ ...head, options: { fh: "800:", ht_divisor: 1 } });
    for (const n of here.filter((f) => f.handle.startsWith("800::"))) {
      out.push({
        ...head,
        options: {
          fh: n.handle,
          order: 2048,
          key_ht: "800",
          bkt: "0",
          link: n.link,
          not_in_hw: true,
          match: { value: "0", mask: "0", offmask: "", off: 0 },
          ...(n.hashKey ? { hash_mask: n.hashKey.mask.toString(16), hash_off: n.hashKey.offsetBytes } : {}),
        },
      });
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Golden files

/** UPDATE_GOLDEN=1 rewrites the expected files; review every diff by eye before accepting it. */
export const UPDATE_GOLDEN = process.env.UPDATE_GOLDEN === "1";

/** A rendered batch as the lines of a golden file: `ip ...` before, `tc ...`, `ip ...` after. */
export function lines(r: Rendered): string[] {
  return [...r.ipPre.map((l) => `ip ${l}`), ...r.tc.map((l) => `tc ${l}`), ...r.ipPost.map((l) => `ip ${l}`)];
}

/** The golden files of one test file: `<dir>/<name>.txt`, each used by one case, each batch checked by `invariants`. */
export class Goldens {
  /** The names the cases compared with so far. */
  readonly used = new Set<string>();

  constructor(
    private readonly dir: URL,
    private readonly invariants: (name: string, got: string[]) => void,
  ) {}

  /** Compare with <dir>/<name>.txt (or write it, with UPDATE_GOLDEN=1). */
  check(name: string, r: Rendered): void {
    assert.ok(!this.used.has(name), `golden name ${name} used twice`);
    this.used.add(name);
    const got = lines(r);
    this.invariants(name, got);
    const text = got.map((l) => `${l}\n`).join("");
    const url = new URL(`${name}.txt`, this.dir);
    const path = fileURLToPath(url);
    if (UPDATE_GOLDEN) {
      mkdirSync(fileURLToPath(this.dir), { recursive: true });
      writeFileSync(url, text);
      return;
    }
    if (!existsSync(path)) {
      assert.fail(
        `golden file ${path} is missing: run with UPDATE_GOLDEN=1 to create it, then review it.\nGot:\n${text}`,
      );
    }
    assert.equal(
      text,
      readFileSync(url, "utf8"),
      `output differs from ${path} (UPDATE_GOLDEN=1 rewrites it)`,
    );
  }

  /** Golden files on disk (names without .txt) that `mine` selects and no case used. */
  unused(mine: (name: string) => boolean): string[] {
    return readdirSync(fileURLToPath(this.dir))
      .filter((f) => f.endsWith(".txt"))
      .map((f) => f.slice(0, -4))
      .filter((n) => mine(n) && !this.used.has(n));
  }
}

/**
 * Rules every rendered line follows, whatever the case: device names fit IFNAMSIZ, virtqos's own device names
 * match `ourDevice`, bursts hold two full frames, rates are whole bytes, no ceiling below its rate, a sane quantum.
 */
export function checkLineBasics(ctx: string, line: string, ourDevice: RegExp): void {
  for (const m of line.matchAll(/\bdev (\S+)/g))
    assert.ok(m[1].length <= 15, `${ctx}: device name over 15 characters`);
  for (const m of line.matchAll(/\b(vq[a-z][0-9a-f]*)\b/g)) assert.match(m[1], ourDevice, ctx);
  for (const m of line.matchAll(/\bc?burst (\d+)b\b/g))
    assert.ok(Number(m[1]) >= 2 * 1514, `${ctx}: burst below two frames`);
  for (const m of line.matchAll(/\b(?:rate|ceil) (\d+)bit\b/g))
    assert.equal(Number(m[1]) % 8, 0, `${ctx}: rate not whole bytes`);
  const rate = /\brate (\d+)bit ceil (\d+)bit/.exec(line);
  if (rate) assert.ok(Number(rate[2]) >= Number(rate[1]), `${ctx}: ceil below rate`);
  const quantum = /\bquantum (\d+)\b/.exec(line);
  if (quantum) assert.ok(Number(quantum[1]) >= 1514 && Number(quantum[1]) <= 200_000, `${ctx}: quantum`);
  if (line.startsWith("tc ")) assert.deepEqual(tcRejects(line), [], `${ctx}: tc would not take this line`);
}
