import type { Capabilities } from "../recipe.js";
import { HOOK_PARENT, isOurPrio } from "../tc/handles.js";
import { type ObservedDevice, type ObservedFilter, printTcRate, sameSize } from "../tc/normalise.js";
import { formatRate } from "../units.js";
import type { Diagnostic, Hook, HookFilter, HookWant, Op } from "./types.js";

// The hook diff: virtqos's filters on a device's ingress/egress hooks (redirects into IFBs, the police filter),
// on a hook qdisc it shares with other tools. It adds the hook qdisc only where there is none and removes it
// only if it added it and nobody else's filter is left on it.

export interface HookDiff {
  before: Op[];
  ops: Op[];
  after: Op[];
  created: boolean;
}

/** Bring virtqos's filters on the ingress/egress hooks of `dev` to `want`, sharing the hook qdisc with others. */
export function diffHooks(
  dev: string,
  want: HookWant[],
  obs: ObservedDevice,
  caps: Capabilities,
  createdHookEarlier: boolean,
  /** Refuse when a foreign filter would take the traffic first (off when restoring what was there). */
  checkIntercept = true,
): HookDiff | { problem: Diagnostic } {
  const hookQ = obs.qdiscs.find((q) => q.parent === HOOK_PARENT);
  const ours = obs.filters.filter((f) => f.hook !== "class" && isOurPrio(f.prio));
  const foreign = obs.filters.filter((f) => f.hook !== "class" && !isOurPrio(f.prio));
  if (checkIntercept) {
    const intercepted = interceptingFilter(dev, want, foreign);
    if (intercepted) return { problem: intercepted };
  }
  const result: HookDiff = { before: [], ops: [], after: [], created: false };
  const needsEgress = want.some((w) => w.hook === "egress");
  if (want.length && !hookQ) {
    const kind = caps.qdiscs.includes("clsact") ? "clsact" : "ingress";
    if (needsEgress && kind !== "clsact") {
      return {
        problem: {
          code: "CLSACT_UNAVAILABLE",
          level: "error",
          dev,
          message: `${dev}: redirecting egress traffic needs the clsact qdisc, which this kernel lacks`,
        },
      };
    }
    result.before.push({ op: "hook-add", dev, kind, ...want[0].tag });
    result.created = true;
  } else if (needsEgress && hookQ?.kind === "ingress") {
    return {
      problem: {
        code: "INGRESS_QDISC_FOREIGN",
        level: "error",
        dev,
        message: `${dev} has an "ingress" qdisc, but shaping here needs "clsact" (ingress and egress hooks); to remove it: tc qdisc del dev ${dev} ingress`,
      },
    };
  }
  const classifier = caps.classifiers.includes("matchall") ? "matchall" : "u32";
  for (const w of want) {
    const o = ours.find((f) => f.hook === w.hook && f.prio === w.prio);
    if (o && sameHookFilter(o, w.filter, classifier)) continue;
    const spec = { dev, hook: w.hook, prio: w.prio, classifier, filter: w.filter, ...w.tag } as const;
    if (!o) {
      result.ops.push({ op: "filter-add", ...spec });
    } else if (classifier === "matchall" && o.kind === "matchall") {
      result.ops.push({ op: "filter-replace", ...spec });
    } else {
      // u32 node handles (800::800) live in hash tables shared by every u32 filter on the hook, whatever
      // their priority: replacing "by handle" could rewrite someone else's filter. Delete ours by priority.
      result.ops.push(
        { op: "filter-del", dev, hook: w.hook, prio: w.prio, ...w.tag },
        { op: "filter-add", ...spec },
      );
    }
  }
  const seen = new Set<string>();
  for (const f of ours) {
    const id = `${f.hook}/${f.prio}`;
    if (seen.has(id) || want.some((w) => w.hook === f.hook && w.prio === f.prio)) continue;
    seen.add(id);
    result.ops.push({ op: "filter-del", dev, hook: f.hook as Hook, prio: f.prio });
  }
  if (!want.length && hookQ && createdHookEarlier && foreign.length === 0) {
    result.after.push({ op: "hook-del", dev, kind: hookQ.kind === "clsact" ? "clsact" : "ingress" });
  }
  return result;
}

/**
 * The kernel runs a hook's filters in priority order and stops at the first that matches with a verdict, so a
 * foreign filter at a lower number than virtqos's takes the packets it matches before virtqos sees them.
 * libvirt's own `<bandwidth>` does exactly that: an `ingress` qdisc and a match-all u32 police filter at the
 * kernel's default priority 49152; packets within its rate are accepted there and never reach the redirect.
 * virtqos does not delete or outrank another tool's filter; it refuses the interface and says which filter.
 */
function interceptingFilter(
  dev: string,
  want: HookWant[],
  foreign: ObservedFilter[],
): Diagnostic | undefined {
  for (const w of want) {
    const first = foreign
      .filter((f) => f.hook === w.hook && f.prio < w.prio)
      .sort((a, b) => a.prio - b.prio)[0];
    if (!first) continue;
    const what = first.police
      ? `${first.kind} police filter (rate ${formatRate(first.police.rateBitsPerSec)}, libvirt's <bandwidth> installs one like it)`
      : first.redirectDev
        ? `${first.kind} filter redirecting to ${first.redirectDev}`
        : `${first.kind} filter`;
    return {
      code: "INGRESS_FILTER_FOREIGN",
      level: "error",
      dev,
      direction: w.tag.direction,
      message: `${dev}: a ${what} at ${w.hook} prio ${first.prio} runs before virtqos's ${w.filter.action} at prio ${w.prio} and takes the traffic it matches; virtqos does not shape this interface; to remove it: tc filter del dev ${dev} ${w.hook} prio ${first.prio}`,
    };
  }
  return undefined;
}

function sameHookFilter(o: ObservedFilter, f: HookFilter, classifier: string): boolean {
  if (o.kind !== classifier) return false;
  if (f.action === "redirect") return o.redirectDev === f.toDev && !o.police;
  return (
    !!o.police &&
    printTcRate(o.police.rateBitsPerSec) === printTcRate(f.rateBytesPerSec * 8) &&
    sameSize(o.police.burstBytes, f.burstBytes)
  );
}
