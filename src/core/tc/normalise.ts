import { ROOT_HANDLE } from "./handles.js";

// What the kernel reports, reduced to what the planner compares. tc prints rates rounded ("30Mbit"),
// sizes re-derived from time ticks ("62493b" for 62500), and HTB classes only as text; this module owns
// those quirks so the planner can compare desired and observed state without false differences.

export interface ObservedLink {
  name: string;
  ifindex: number;
  kind?: string;
  alias?: string;
  up: boolean;
  master?: string;
  /** The device's MTU in bytes (layer 3), where ip reports it. */
  mtu?: number;
}

export interface ObservedQdisc {
  kind: string;
  handle: string;
  /** "root", HOOK_PARENT (ingress/clsact) or the parent class id. */
  parent: string;
  options: Record<string, unknown>;
  stats?: QueueStats;
}

export interface QueueStats {
  bytes: number;
  packets: number;
  drops: number;
  overlimits: number;
  backlogBytes?: number;
}

export interface ObservedClass {
  classid: string;
  /** Parent class id, or the root qdisc handle for a root class. */
  parent: string;
  leaf?: string;
  rateText: string;
  ceilText: string;
  rateBitsPerSec: number;
  ceilBitsPerSec: number;
  burstBytes: number;
  cburstBytes: number;
  quantumBytes?: number;
  stats?: QueueStats;
}

export interface ObservedFilter {
  hook: "ingress" | "egress" | "class";
  /** For hook "class": the qdisc the filter hangs on (virtqos's root, ROOT_HANDLE). */
  parent?: string;
  prio: number;
  protocol: string;
  kind: string;
  handle?: string;
  flowid?: string;
  redirectDev?: string;
  police?: { rateBitsPerSec: number; burstBytes: number };
  /** u32 keys as `value/mask@offset` (hex, bytes from the network header), in the order tc lists them. */
  matches: string[];
  /** For u32 hash-table nodes ("ht divisor 256"). */
  divisor?: number;
  link?: string;
  /** A u32 node that hashes into the table it links to: which bits of which word pick the bucket. */
  hashKey?: { mask: number; offsetBytes: number };
  stats?: { bytes: number; packets: number };
}

export interface ObservedDevice {
  dev: string;
  qdiscs: ObservedQdisc[];
  classes: ObservedClass[];
  filters: ObservedFilter[];
}

/** Exactly how iproute2 6.1 prints a rate (tc_util.c print_rate), so a desired rate compares as tc shows it. */
export function printTcRate(bitsPerSec: number): string {
  const units = ["", "K", "M", "G", "T"];
  let rate = Math.round(bitsPerSec);
  let i = 0;
  for (; i < units.length - 1; i++) {
    if (rate < 1000) break;
    if (rate % 1000 !== 0 && rate < 1000 * 1000) break;
    rate = Math.floor(rate / 1000);
  }
  return `${rate}${units[i]}bit`;
}

export function parseTcRate(text: string): number {
  const m = /^(\d+(?:\.\d+)?)([KMGT]?)(i?)bit$/.exec(text);
  if (!m) return Number.NaN;
  const base = m[3] ? 1024 : 1000;
  const power = ["", "K", "M", "G", "T"].indexOf(m[2]);
  return Number(m[1]) * base ** power;
}

/** tc's print_size: "62493b", "64Kb" (KiB), "1Mb" (MiB). */
export function parseTcSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)(b|Kb|Mb|Gb)$/.exec(text);
  if (!m) return Number.NaN;
  return Number(m[1]) * { b: 1, Kb: 1024, Mb: 1024 ** 2, Gb: 1024 ** 3 }[m[2] as "b"];
}

/**
 * Exactly how iproute2 6.1 prints a size (tc_util.c print_size): MiB or KiB when within 1024 or 16 bytes of
 * a multiple, else bytes.
 */
export function printTcSize(bytes: number): string {
  const MiB = 1024 * 1024;
  if (bytes >= MiB && Math.abs(MiB * Math.round(bytes / MiB) - bytes) < 1024)
    return `${Math.round(bytes / MiB)}Mb`;
  if (bytes >= 1024 && Math.abs(1024 * Math.round(bytes / 1024) - bytes) < 16)
    return `${Math.round(bytes / 1024)}Kb`;
  return `${bytes}b`;
}

/** Sizes tc reports are re-derived from kernel time ticks; a few bytes (or a rounded KiB) of drift is noise. */
export function sameSize(observedBytes: number, desiredBytes: number): boolean {
  return Math.abs(observedBytes - desiredBytes) <= Math.max(64, desiredBytes * 0.02);
}

export function linksFromJson(json: unknown): ObservedLink[] {
  if (!Array.isArray(json)) return [];
  return json.flatMap((l: Record<string, unknown>) => {
    if (typeof l.ifname !== "string") return [];
    const info = l.linkinfo as Record<string, unknown> | undefined;
    const flags = Array.isArray(l.flags) ? (l.flags as string[]) : [];
    return [
      {
        name: l.ifname,
        ifindex: Number(l.ifindex),
        kind: typeof info?.info_kind === "string" ? info.info_kind : undefined,
        alias: typeof l.ifalias === "string" ? l.ifalias : undefined,
        up: flags.includes("UP"),
        master: typeof l.master === "string" ? l.master : undefined,
        mtu: typeof l.mtu === "number" ? l.mtu : undefined,
      },
    ];
  });
}

/** `tc -j [-s] qdisc show` for all devices, grouped by device. */
export function qdiscsFromJson(json: unknown): Map<string, ObservedQdisc[]> {
  const byDev = new Map<string, ObservedQdisc[]>();
  if (!Array.isArray(json)) return byDev;
  for (const q of json as Record<string, unknown>[]) {
    if (typeof q.dev !== "string" || typeof q.kind !== "string") continue;
    const entry: ObservedQdisc = {
      kind: q.kind,
      handle: String(q.handle ?? ""),
      parent: q.root ? "root" : String(q.parent ?? ""),
      options: (q.options as Record<string, unknown>) ?? {},
    };
    if (typeof q.bytes === "number") {
      entry.stats = {
        bytes: q.bytes,
        packets: Number(q.packets ?? 0),
        drops: Number(q.drops ?? 0),
        overlimits: Number(q.overlimits ?? 0),
        backlogBytes: Number(q.backlog ?? 0),
      };
    }
    const list = byDev.get(q.dev) ?? [];
    list.push(entry);
    byDev.set(q.dev, list);
  }
  return byDev;
}

/** `tc -d [-s] class show dev X` text (HTB classes have no JSON form in iproute2 6.1). */
export function parseClasses(text: string): ObservedClass[] {
  const out: ObservedClass[] = [];
  let current: ObservedClass | undefined;
  for (const line of text.split("\n")) {
    if (line.startsWith("class htb ")) {
      const tok = line.trim().split(/\s+/);
      const get = (key: string) => {
        const i = tok.indexOf(key);
        return i >= 0 ? tok[i + 1] : undefined;
      };
      const classid = tok[2];
      const parent = tok[3] === "root" ? `${classid.split(":")[0]}:` : (get("parent") ?? "");
      const rateText = get("rate") ?? "";
      const ceilText = get("ceil") ?? "";
      current = {
        classid,
        parent,
        leaf: get("leaf"),
        rateText,
        ceilText,
        rateBitsPerSec: parseTcRate(rateText),
        ceilBitsPerSec: parseTcRate(ceilText),
        burstBytes: parseTcSize((get("burst") ?? "").split("/")[0]),
        cburstBytes: parseTcSize((get("cburst") ?? "").split("/")[0]),
        quantumBytes: get("quantum") !== undefined ? Number(get("quantum")) : undefined,
      };
      out.push(current);
    } else if (line.startsWith("class ")) {
      current = undefined;
    } else if (current && /^\s*Sent \d+ bytes/.test(line)) {
      const m = /Sent (\d+) bytes (\d+) pkt \(dropped (\d+), overlimits (\d+)/.exec(line);
      if (m) {
        current.stats = {
          bytes: Number(m[1]),
          packets: Number(m[2]),
          drops: Number(m[3]),
          overlimits: Number(m[4]),
        };
      }
    } else if (current?.stats && /^\s*backlog /.test(line)) {
      const m = /backlog (\d+)b/.exec(line);
      if (m) current.stats.backlogBytes = Number(m[1]);
    }
  }
  return out;
}

/**
 * JSON as `tc -j` prints it. iproute2 prints each key of a u32 node as another `"match"` member of the same
 * object, and JSON.parse keeps only the last one: a MAC match is two keys, so half of the MAC would be lost.
 * Runs of `"match"` members become one array (a key object holds no nested object, so none can hide a brace).
 */
export function parseTcJson(text: string): unknown {
  return JSON.parse(
    text.replace(
      /"match":(\{[^{}]*\})((?:,"match":\{[^{}]*\})+)/g,
      (_all, first: string, rest: string) => `"match":[${first}${rest.replaceAll(',"match":', ",")}]`,
    ),
  );
}

/** One `tc -j filter show` array. Hash-table and per-priority header entries carry no filter and are skipped. */
export function filtersFromJson(
  json: unknown,
  hook: ObservedFilter["hook"],
  parent?: string,
): ObservedFilter[] {
  if (!Array.isArray(json)) return [];
  const out: ObservedFilter[] = [];
  for (const f of json as Record<string, unknown>[]) {
    const o = f.options as Record<string, unknown> | undefined;
    if (!o) continue;
    const handle = o.fh ?? o.handle;
    const actions = (Array.isArray(o.actions) ? o.actions : []) as Record<string, unknown>[];
    const mirred = actions.find((a) => a.kind === "mirred");
    const police =
      actions.find((a) => a.kind === "police") ?? (o.police as Record<string, unknown> | undefined);
    const match = o.match as Record<string, unknown> | Record<string, unknown>[] | undefined;
    const keys = match === undefined ? [] : Array.isArray(match) ? match : [match];
    const entry: ObservedFilter = {
      hook,
      parent,
      prio: Number(f.pref),
      protocol: String(f.protocol ?? "all"),
      kind: String(f.kind ?? ""),
      handle: handle === undefined ? undefined : String(handle),
      flowid: typeof o.flowid === "string" ? o.flowid : typeof o.classid === "string" ? o.classid : undefined,
      redirectDev: typeof mirred?.to_dev === "string" ? mirred.to_dev : undefined,
      matches: keys.map((k) => `${k.value}/${k.mask}@${k.off}`),
    };
    if (typeof o.ht_divisor === "number") entry.divisor = o.ht_divisor;
    if (typeof o.link === "string") entry.link = o.link;
    if (typeof o.hash_mask === "string" && typeof o.hash_off === "number")
      entry.hashKey = { mask: Number.parseInt(o.hash_mask, 16), offsetBytes: o.hash_off };
    if (police) {
      const rate = police.rate;
      const burst = police.burst;
      entry.police = {
        rateBitsPerSec: typeof rate === "number" ? rate * 8 : parseTcRate(String(rate)),
        burstBytes: typeof burst === "number" ? burst : parseTcSize(String(burst)),
      };
    }
    const stats = (mirred?.stats ?? police?.stats) as Record<string, unknown> | undefined;
    if (stats) entry.stats = { bytes: Number(stats.bytes ?? 0), packets: Number(stats.packets ?? 0) };
    // u32 lists a bare hash-table entry ("800:", divisor 1) before its nodes; it is not a filter of anyone's.
    if (entry.kind === "u32" && entry.divisor === 1 && /^[0-9a-f]+:$/.test(entry.handle ?? "")) continue;
    out.push(entry);
  }
  return out;
}

/** What observe() asks `tc -j -s -d -batch -` about one device, chosen from the qdisc dump taken just before. */
export interface DeviceQuery {
  dev: string;
  classes: boolean;
  egress: boolean;
  rootFilters: boolean;
}

export function observeBatchLines(q: DeviceQuery): string[] {
  const lines: string[] = [];
  if (q.classes) lines.push(`class show dev ${q.dev}`);
  // Always asked, even without an ingress qdisc ("[]"): its JSON line also closes the class text before it.
  lines.push(`filter show dev ${q.dev} ingress`);
  if (q.egress) lines.push(`filter show dev ${q.dev} egress`);
  if (q.rootFilters) lines.push(`filter show dev ${q.dev} parent ${ROOT_HANDLE}`);
  return lines;
}

/**
 * Split the batch output back per device. Inside `-j -batch`, every `filter show` prints exactly one JSON
 * array line (even "[]"), while HTB classes print as text lines that never start with "[": so each filter
 * answer is one line, and class text runs until the next "[" line. iproute2 prints no device names here.
 */
export function splitObserveOutput(
  text: string,
  queries: DeviceQuery[],
): Map<string, Omit<ObservedDevice, "qdiscs">> {
  const lines = text.split("\n");
  let i = 0;
  const takeJson = (): unknown => {
    while (i < lines.length && !lines[i].startsWith("[")) i++;
    const line = lines[i++];
    if (line === undefined) throw new Error("tc batch output ended early");
    return parseTcJson(line);
  };
  const out = new Map<string, Omit<ObservedDevice, "qdiscs">>();
  for (const q of queries) {
    let classes: ObservedClass[] = [];
    if (q.classes) {
      const start = i;
      while (i < lines.length && !lines[i].startsWith("[")) i++;
      classes = parseClasses(lines.slice(start, i).join("\n"));
    }
    const filters: ObservedFilter[] = [];
    filters.push(...filtersFromJson(takeJson(), "ingress"));
    if (q.egress) filters.push(...filtersFromJson(takeJson(), "egress"));
    if (q.rootFilters) filters.push(...filtersFromJson(takeJson(), "class", ROOT_HANDLE));
    out.set(q.dev, { dev: q.dev, classes, filters });
  }
  return out;
}

/**
 * iproute2 6.1 prints a police action in JSON without its rate, burst or mtu; its text output has them
 * ("police 0x1 rate 10Mbit burst 1250Kb mtu 64Kb action drop"). Police parameters per filter priority, from
 * `tc filter show dev D ingress|egress` text.
 */
export function policeFromText(text: string): Map<number, { rateBitsPerSec: number; burstBytes: number }> {
  const out = new Map<number, { rateBitsPerSec: number; burstBytes: number }>();
  let prio: number | undefined;
  for (const line of text.split("\n")) {
    const f = /^filter .*\bpref (\d+)\b/.exec(line);
    if (f) prio = Number(f[1]);
    const p = /\bpolice 0x[0-9a-f]+ rate (\S+) burst (\S+)/.exec(line);
    if (p && prio !== undefined)
      out.set(prio, { rateBitsPerSec: parseTcRate(p[1]), burstBytes: parseTcSize(p[2]) });
  }
  return out;
}
