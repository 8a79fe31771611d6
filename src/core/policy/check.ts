import { admit, groupRate } from "../admission.js";
import type { Policy, PolicyGroup } from "./types.js";

// The rules a value must satisfy given other values: within a direction (peak and floor against average),
// within a rule (what it matches), and across groups (parents, membership, admission). parse.ts applies the
// per-value rules as it reads each value, so that problems come out in file order; checkGroups needs the whole
// file and runs last.

/** A place in the policy file: keys and list indexes from the top. */
export type Path = (string | number)[];

/** Records a problem at a place in the file; `atKey` for one that is about the key, not its value. */
export type Report = (path: Path, message: string, fix: string, atKey?: boolean) => void;

/** Peak and floor against average, in one direction (after its values were converted). */
export function checkDirection(
  dir: { rateBitsPerSec?: number; peakBitsPerSec?: number; floorBitsPerSec?: number },
  path: Path,
  report: Report,
): void {
  if (dir.peakBitsPerSec !== undefined && dir.rateBitsPerSec === undefined) {
    report(path, "peak is set without average", "add `average`, the long-term rate the peak falls back to");
  }
  if (
    dir.peakBitsPerSec !== undefined &&
    dir.rateBitsPerSec !== undefined &&
    dir.peakBitsPerSec < dir.rateBitsPerSec
  ) {
    report([...path, "peak"], "is lower than average", "set peak >= average, or remove peak");
  }
  if (
    dir.floorBitsPerSec !== undefined &&
    dir.rateBitsPerSec !== undefined &&
    dir.floorBitsPerSec > dir.rateBitsPerSec
  ) {
    report(
      [...path, "floor"],
      "is higher than average",
      "a guarantee cannot exceed the member's own ceiling",
    );
  }
}

/**
 * Where a direction is the interface's own limit, it needs an average; a lone `mode` or `burst` would
 * otherwise silently replace the XML's limit with nothing. (Group members may give only a floor.)
 */
export function needsAverage(raw: unknown, path: Path, report: Report): void {
  const dir = raw as Record<string, unknown> | string | undefined;
  // A lone peak has its own, more precise message.
  if (dir && typeof dir === "object" && dir.average === undefined && dir.peak === undefined) {
    report(path, "has no average", "add `average: <rate>` (the limit), or write `unlimited`");
  }
}

/** A domain rule must say which domain it is for. */
export function checkDomainRule(raw: Record<string, unknown>, path: Path, report: Report): void {
  if (!raw.name && !raw.uuid)
    report(path, "has neither name nor uuid", "add `name: <domain name>` or `uuid: <uuid>`");
  if (raw.uuid !== undefined && !isUuid(raw.uuid as string)) {
    report([...path, "uuid"], `"${raw.uuid}" is not a UUID`, "copy it from `virsh domuuid <domain>`");
  }
}

/** An interface rule must say which interface it is for. */
export function checkInterfaceRule(raw: Record<string, unknown>, path: Path, report: Report): void {
  if (raw.mac === undefined && raw.target === undefined && raw.alias === undefined) {
    report(path, "matches no interface", "add one of `mac`, `target` (host device) or `alias` (e.g. net0)");
  }
}

/** A group's name becomes part of device aliases, and names a group unambiguously. */
export function checkGroupName(name: string, earlier: readonly string[], path: Path, report: Report): void {
  if (!/^[A-Za-z0-9_.-]{1,64}$/.test(name)) {
    report(
      [...path, "name"],
      `"${name}" is not a valid group name`,
      "use 1-64 letters, digits, '.', '_' or '-'",
    );
  }
  const previous = earlier.lastIndexOf(name);
  if (previous >= 0) {
    report(
      [...path, "name"],
      `group "${name}" is defined twice`,
      `rename it or merge it with groups[${previous}]`,
    );
  }
}

/** Cross-group rules: parents exist, one level of nesting, ceilings present, floors fit (admission). */
export function checkGroups(policy: Policy, report: Report): void {
  const byName = new Map(policy.groups.map((g, i) => [g.name, { g, i }]));
  policy.groups.forEach((g, i) => {
    const path: Path = ["groups", i];
    for (const d of ["inbound", "outbound"] as const) {
      const dir = g[d];
      if (dir && !dir.unlimited && dir.rateBitsPerSec === undefined) {
        report([...path, d], "has no average (the group's shared ceiling)", "add `average: <rate>`");
      }
    }
    if (!g.inbound && !g.outbound) {
      report(
        path,
        `group "${g.name}" has no ceiling in either direction`,
        "add `inbound:` and/or `outbound:` with an average",
      );
    }
    if (g.parent !== undefined) {
      const parent = byName.get(g.parent);
      if (!parent) {
        report(
          [...path, "parent"],
          `group "${g.parent}" is not defined`,
          "define it under `groups:` or remove `parent`",
        );
      } else if (parent.g.parent !== undefined) {
        report(
          [...path, "parent"],
          `"${g.parent}" is itself a child of "${parent.g.parent}"; groups nest one level only`,
          `make "${g.name}" a child of "${parent.g.parent}" or remove the parent of "${g.parent}"`,
        );
      } else if (
        (["inbound", "outbound"] as const).some(
          (d) => g[d] && !g[d].unlimited && (!parent.g[d] || parent.g[d]?.unlimited),
        )
      ) {
        const d = (["inbound", "outbound"] as const).find(
          (x) => g[x] && (!parent.g[x] || parent.g[x]?.unlimited),
        )!;
        report(
          [...path, d],
          `group "${g.name}" shapes ${d} but its parent "${g.parent}" has no ${d} ceiling`,
          `add \`${d}: { average: <rate> }\` to "${g.parent}", or remove ${d} from "${g.name}"`,
        );
      } else if (parent.g.members.length || hasSelector(parent.g)) {
        report(
          [...path, "parent"],
          `"${g.parent}" has members of its own; a parent group holds only child groups`,
          `move the members of "${g.parent}" into a child group`,
        );
      }
    }
  });
  // An explicitly listed interface may belong to one group only (a member without mac means all interfaces).
  const seenMembers: { group: string; domain: string; mac?: string }[] = [];
  policy.groups.forEach((g, gi) => {
    g.members.forEach((m, mi) => {
      const clash = seenMembers.find(
        (o) =>
          o.group !== g.name &&
          o.domain === m.domain &&
          (o.mac === undefined || m.mac === undefined || o.mac === m.mac),
      );
      if (clash) {
        report(
          ["groups", gi, "members", mi],
          `${m.domain}${m.mac ? ` ${m.mac}` : ""} is also a member of group "${clash.group}"; an interface belongs to one group`,
          `remove it from "${g.name}" or from "${clash.group}"`,
        );
      }
      seenMembers.push({ group: g.name, domain: m.domain, mac: m.mac });
    });
  });
  // Admission: the floors the file promises inside a group must all fit under its average, per direction,
  // before any guest asks for them.
  for (const g of policy.groups) {
    const i = byName.get(g.name)!.i;
    for (const d of ["inbound", "outbound"] as const) {
      const limit = g.limits[d];
      if (!limit) continue;
      const claims: { label: string; bitsPerSec: number }[] = [];
      for (const m of g.members) {
        const md = m[d] ?? g.memberDefaults[d];
        const floor = md && !md.unlimited ? md.floorBitsPerSec : undefined;
        if (floor) claims.push({ label: `${m.domain}${m.mac ? ` ${m.mac}` : ""}`, bitsPerSec: floor });
      }
      for (const child of policy.groups.filter((c) => c.parent === g.name)) {
        const guaranteed = groupRate(child, d);
        if (guaranteed) claims.push({ label: `group ${child.name}`, bitsPerSec: guaranteed });
      }
      const verdict = admit(limit.rateBitsPerSec, 0, claims, (c) => c.bitsPerSec);
      if (verdict.refused.length) {
        const parts = claims.map((c) => `${c.label} ${c.bitsPerSec / 1e6} Mbit/s`);
        report(
          ["groups", i, d, "average"],
          `floors add up to ${verdict.totalBitsPerSec / 1e6} Mbit/s (${parts.join(" + ")}), more than the group's ${d} ceiling of ${limit.rateBitsPerSec / 1e6} Mbit/s`,
          "lower the floors or raise the group's average",
        );
      }
    }
  }
}

function hasSelector(g: PolicyGroup): boolean {
  return !!(g.select.domains || g.select.networks || g.select.bridges);
}

function isUuid(s: string): boolean {
  return /^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$/.test(s);
}
