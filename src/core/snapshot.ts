import { parseIfbAlias } from "./names.js";
import type { ObservedDevice, ObservedLink } from "./normalise.js";
import type { Observed } from "./plan.js";
import { isOurPrio, isOurRoot } from "./tc/handles.js";

// The kernel state a transaction restores, as data: every link and the qdiscs, classes and filters of every
// device, without counters, and a fingerprint of each device so a rollback can prove the kernel is back
// where it was (a normalised `tc -j` dump, counters aside).

export interface KernelState {
  links: ObservedLink[];
  devices: ObservedDevice[];
}

export function kernelState(observed: Observed): KernelState {
  return {
    links: [...observed.links.values()],
    devices: [...observed.devices.values()].map(withoutCounters),
  };
}

export function observedFrom(state: KernelState, records: Observed["records"]): Observed {
  return {
    links: new Map(state.links.map((l) => [l.name, l])),
    devices: new Map(state.devices.map((d) => [d.dev, d])),
    records,
  };
}

/** Whether virtqos has anything on this device (its root HTB, a filter in its priority range, its alias). */
export function holdsVirtqos(d: ObservedDevice | undefined, link: ObservedLink | undefined): boolean {
  if (parseIfbAlias(link?.alias)) return true;
  if (!d) return false;
  return d.qdiscs.some(isOurRoot) || d.filters.some((f) => f.hook !== "class" && isOurPrio(f.prio));
}

function withoutCounters(d: ObservedDevice): ObservedDevice {
  return {
    dev: d.dev,
    qdiscs: d.qdiscs.map(({ stats: _s, ...q }) => q),
    classes: d.classes.map(({ stats: _s, ...c }) => c),
    filters: d.filters.map(({ stats: _s, ...f }) => f),
  };
}

/** One line per kernel object, in a stable order: two devices are equal when their fingerprints are. */
export function fingerprint(d: ObservedDevice | undefined, link?: ObservedLink): string[] {
  if (!d) return link ? [`link ${link.name} alias=${link.alias ?? ""}`] : [];
  const lines: string[] = [];
  if (link) lines.push(`link ${link.name} alias=${link.alias ?? ""}`);
  for (const q of d.qdiscs) lines.push(`qdisc ${q.kind} ${q.handle} parent ${q.parent} ${stable(q.options)}`);
  for (const c of d.classes) {
    lines.push(
      `class ${c.classid} parent ${c.parent} rate ${c.rateText} ceil ${c.ceilText} burst ${c.burstBytes} cburst ${c.cburstBytes} quantum ${c.quantumBytes ?? "-"}`,
    );
  }
  for (const f of d.filters) {
    // A hook filter is known by its priority; the u32 node handle (800::800, 803::800) is the kernel's pick
    // and changes when the filter is re-created. Group tree handles are virtqos's own and stay.
    const handle = f.hook === "class" ? (f.handle ?? "-") : "-";
    lines.push(
      `filter ${f.hook} ${f.parent ?? ""} prio ${f.prio} ${f.protocol} ${f.kind} handle ${handle} flowid ${f.flowid ?? "-"} redirect ${f.redirectDev ?? "-"} police ${f.police ? `${f.police.rateBitsPerSec}/${f.police.burstBytes}` : "-"} link ${f.link ?? "-"} divisor ${f.divisor ?? "-"} ${f.matches.join(",")}`,
    );
  }
  return lines.sort();
}

/** Qdisc options that are counters, not configuration (HTB counts packets sent past its classes). */
const COUNTER_OPTIONS = new Set(["direct_packets_stat"]);

function stable(o: Record<string, unknown>): string {
  return JSON.stringify(
    Object.fromEntries(
      Object.entries(o)
        .filter(([k]) => !COUNTER_OPTIONS.has(k))
        .sort(([a], [b]) => a.localeCompare(b)),
    ),
  );
}

/**
 * Differences between the snapshot and now for the given devices: each line names the device and the object
 * that is missing ("-") or extra ("+"). Empty when the kernel is back where it was.
 */
export function compareDevices(before: KernelState, now: Observed, devs: Iterable<string>): string[] {
  const out: string[] = [];
  const beforeDev = new Map(before.devices.map((d) => [d.dev, d]));
  const beforeLink = new Map(before.links.map((l) => [l.name, l]));
  for (const dev of [...new Set(devs)].sort()) {
    const a = fingerprint(beforeDev.get(dev), beforeLink.get(dev));
    const nowLink = now.links.get(dev);
    const b = nowLink ? fingerprint(now.devices.get(dev), nowLink) : [];
    const setB = new Set(b);
    const setA = new Set(a);
    for (const l of a) if (!setB.has(l)) out.push(`${dev}: - ${l}`);
    for (const l of b) if (!setA.has(l)) out.push(`${dev}: + ${l}`);
  }
  return out;
}
