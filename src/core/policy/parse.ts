import { isMap, LineCounter, parseDocument, type Node as YamlNode } from "yaml";
import type { GroupLimit } from "../admission.js";
import { normaliseMac } from "../domain-xml.js";
import type { UploadMode } from "../model.js";
import {
  formatRate,
  formatSize,
  MAX_RATE_BITS_PER_SEC,
  MIN_RATE_BITS_PER_SEC,
  parseRate,
  parseSize,
  TC_SIZE_MAX_BYTES,
  UnitError,
} from "../units.js";
import {
  checkDirection,
  checkDomainRule,
  checkGroupName,
  checkInterfaceRule,
  needsAverage,
  type Path,
  type Report,
} from "./check.js";
import { schemaProblems } from "./schema.js";
import {
  emptyPolicy,
  type LeafChoice,
  type LogLevel,
  type OvsMode,
  type Policy,
  type PolicyDirection,
  type PolicyProblem,
} from "./types.js";

// From YAML text to a Policy: the document with every node's line and column, so that each problem names its
// place; then the values, converted to base units. Problems are collected, not thrown, so the operator sees
// all of them at once (index.ts throws them together).

export interface PolicySource {
  file: string;
  /** Problems so far. Once the structure has any, the values cannot be read: the caller stops there. */
  problems: PolicyProblem[];
  /** Records a problem at a place in this document. */
  report: Report;
  /** The line a place in this document starts on. */
  lineOf: (path: Path) => number;
  /** The document as plain data, once its structure is valid; undefined for an empty document. */
  raw?: Record<string, unknown>;
}

/** Read the YAML and check its structure against the schema. */
export function readPolicyYaml(text: string, file: string): PolicySource {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  const problems: PolicyProblem[] = [];
  const at = (path: Path, atKey = false): { line: number; column: number } => {
    // An unknown field is wrong where its key is ("defualts:"), not on the line of its value.
    const parent =
      atKey && path.length
        ? path.length === 1
          ? doc.contents
          : doc.getIn(path.slice(0, -1), true)
        : undefined;
    if (isMap(parent)) {
      const pair = parent.items.find(
        (p) => (p.key as { value?: unknown } | null)?.value === path[path.length - 1],
      );
      const keyRange = (pair?.key as YamlNode | null)?.range;
      if (keyRange) {
        const pos = lineCounter.linePos(keyRange[0]);
        return { line: pos.line, column: pos.col };
      }
    }
    let node: unknown = path.length ? doc.getIn(path, true) : doc.contents;
    // A missing key has no node: point at the closest existing parent.
    for (let n = path.length - 1; (node === undefined || node === null) && n >= 0; n--) {
      node = n === 0 ? doc.contents : doc.getIn(path.slice(0, n), true);
    }
    const range = (node as YamlNode | null)?.range;
    const pos = lineCounter.linePos(range ? range[0] : 0);
    return { line: pos.line, column: pos.col };
  };
  const report: Report = (path, message, fix, atKey = false) =>
    problems.push({ file, ...at(path, atKey), field: fieldName(path), message, fix });
  const source: PolicySource = { file, problems, report, lineOf: (path) => at(path).line };

  for (const err of doc.errors) {
    const pos = lineCounter.linePos(err.pos[0]);
    problems.push({
      file,
      line: pos.line,
      column: pos.col,
      field: "(yaml)",
      message: err.message.split("\n")[0],
      fix: "correct the YAML syntax (indentation, quotes, colons)",
    });
  }
  if (problems.length || doc.contents === null) return source;
  if (!isMap(doc.contents)) {
    report(
      [],
      "the policy file must be a mapping",
      "start with keys such as `defaults:`, `domains:`, `groups:`",
    );
    return source;
  }

  const raw = doc.toJS() as unknown;
  for (const e of schemaProblems(raw)) {
    const path = e.path
      .split("/")
      .slice(1)
      .map((s) => (/^\d+$/.test(s) ? Number(s) : s.replace(/~1/g, "/").replace(/~0/g, "~")));
    report(path, e.message, e.fix, e.unknownField);
  }
  if (!problems.length) source.raw = raw as Record<string, unknown>;
  return source;
}

/**
 * The values of a structurally valid document, in base units, with the problems of each value reported as it
 * is read. The line of each rule is where its entry starts, for messages about it later.
 */
export function policyFromYaml(source: PolicySource & { raw: Record<string, unknown> }): Policy {
  const { file, report, raw: obj } = source;
  const line = source.lineOf;
  const direction = (value: unknown, path: Path, allowMode: boolean): PolicyDirection | undefined => {
    if (value === undefined) return undefined;
    if (value === "unlimited") return { unlimited: true };
    const v = value as Record<string, unknown>;
    const out: PolicyDirection = {};
    const rate = (key: string): number | undefined => {
      if (v[key] === undefined) return undefined;
      try {
        const bits = parseRate(v[key] as string | number);
        if (bits <= 0)
          report([...path, key], "must be greater than zero", "write a positive rate, e.g. 10mbit");
        else if (bits < MIN_RATE_BITS_PER_SEC)
          report(
            [...path, key],
            `is ${formatRate(bits)}, below the smallest rate virtqos shapes (8 kbit/s = 1 kB/s, libvirt's smallest)`,
            'write at least "8kbit"; did you mean mbit?',
          );
        else if (bits > MAX_RATE_BITS_PER_SEC)
          report(
            [...path, key],
            `is ${formatRate(bits)}, above the largest rate tc and libvirt express (${formatRate(MAX_RATE_BITS_PER_SEC)})`,
            "write a smaller rate, or `unlimited` for no limit",
          );
        return bits;
      } catch (e) {
        if (e instanceof UnitError) report([...path, key], e.message, e.fix);
        else throw e;
        return undefined;
      }
    };
    out.rateBitsPerSec = rate("average");
    out.peakBitsPerSec = rate("peak");
    out.floorBitsPerSec = rate("floor");
    if (v.burst !== undefined) {
      try {
        out.burstBytes = parseSize(v.burst as string | number);
        if (out.burstBytes < 1514) {
          report([...path, "burst"], "is smaller than one full-size frame (1514 B)", "use at least 2KiB");
        } else if (out.burstBytes > TC_SIZE_MAX_BYTES) {
          report(
            [...path, "burst"],
            `is ${formatSize(out.burstBytes)}, above the largest size tc accepts (4 GiB - 1 B)`,
            "use at most 4GiB; a bucket that deep lets the first minutes run unlimited anyway",
          );
        }
      } catch (e) {
        if (e instanceof UnitError) report([...path, "burst"], e.message, e.fix);
        else throw e;
      }
    }
    if (v.mode !== undefined) {
      if (!allowMode) {
        report(
          [...path, "mode"],
          "only guest upload (outbound) has a mode",
          "remove `mode` here; inbound is always shaped",
        );
      }
      out.mode = v.mode as UploadMode;
    }
    checkDirection(out, path, report);
    return out;
  };
  const directions = (v: Record<string, unknown> | undefined, path: Path) => ({
    inbound: direction(v?.inbound, [...path, "inbound"], false),
    outbound: direction(v?.outbound, [...path, "outbound"], true),
  });

  const policy: Policy = {
    ...emptyPolicy(file),
    logLevel: (obj.logLevel as LogLevel | undefined) ?? "info",
    strict: (obj.strict as boolean | undefined) ?? false,
    upload: (obj.upload as UploadMode | undefined) ?? "shape",
    leaf: (obj.leaf as LeafChoice | undefined) ?? "auto",
    ovs: (obj.ovs as OvsMode | undefined) ?? "tc",
    defaults: directions(obj.defaults as Record<string, unknown> | undefined, ["defaults"]),
  };
  if (obj.hookTimeout !== undefined) {
    const ms = durationMs(obj.hookTimeout, report);
    if (ms !== undefined) policy.hookTimeoutMs = ms;
  }
  const defaultsRaw = obj.defaults as Record<string, unknown> | undefined;
  for (const d of ["inbound", "outbound"] as const) needsAverage(defaultsRaw?.[d], ["defaults", d], report);

  const domains = (obj.domains as Record<string, unknown>[] | undefined) ?? [];
  domains.forEach((d, i) => {
    const path: Path = ["domains", i];
    checkDomainRule(d, path, report);
    for (const dir of ["inbound", "outbound"] as const) needsAverage(d[dir], [...path, dir], report);
    const interfaces = ((d.interfaces as Record<string, unknown>[] | undefined) ?? []).map((ifr, j) => {
      const ipath: Path = [...path, "interfaces", j];
      for (const dir of ["inbound", "outbound"] as const) needsAverage(ifr[dir], [...ipath, dir], report);
      const mac = macOf(ifr.mac, [...ipath, "mac"], report);
      checkInterfaceRule(ifr, ipath, report);
      return {
        mac,
        target: ifr.target as string | undefined,
        alias: ifr.alias as string | undefined,
        group: ifr.group as string | undefined,
        ...directions(ifr, ipath),
        line: line(ipath),
      };
    });
    policy.domains.push({
      name: d.name as string | undefined,
      uuid: (d.uuid as string | undefined)?.toLowerCase(),
      group: d.group as string | undefined,
      ...directions(d, path),
      interfaces,
      line: line(path),
    });
  });

  const groups = (obj.groups as Record<string, unknown>[] | undefined) ?? [];
  groups.forEach((g, i) => {
    const path: Path = ["groups", i];
    const name = g.name as string;
    checkGroupName(
      name,
      groups.slice(0, i).map((e) => e.name as string),
      path,
      report,
    );
    const members = ((g.members as Record<string, unknown>[] | undefined) ?? []).map((m, j) => {
      const mpath: Path = [...path, "members", j];
      const mac = macOf(m.mac, [...mpath, "mac"], report);
      return { domain: m.domain as string, mac, ...directions(m, mpath), line: line(mpath) };
    });
    const sel = (g.select as Record<string, unknown> | undefined) ?? {};
    const strList = (v: unknown) =>
      v === undefined ? undefined : Array.isArray(v) ? (v as string[]) : [v as string];
    const md = g.memberDefaults as Record<string, unknown> | undefined;
    const own = directions(g, path);
    policy.groups.push({
      name,
      parent: g.parent as string | undefined,
      ...own,
      memberDefaults: directions(md, [...path, "memberDefaults"]),
      members,
      select: {
        domains: strList(sel.domains),
        networks: strList(sel.networks),
        bridges: strList(sel.bridges),
      },
      line: line(path),
      limits: { inbound: groupLimit(own.inbound), outbound: groupLimit(own.outbound) },
    });
  });
  return policy;
}

/** What a group direction of the file means to the planner; undefined where the group does not shape it. */
function groupLimit(dir: PolicyDirection | undefined): GroupLimit | undefined {
  if (!dir || dir.unlimited || dir.rateBitsPerSec === undefined) return undefined;
  const limit: GroupLimit = {
    rateBitsPerSec: dir.rateBitsPerSec,
    ceilBitsPerSec: Math.max(dir.peakBitsPerSec ?? dir.rateBitsPerSec, dir.rateBitsPerSec),
  };
  if (dir.floorBitsPerSec !== undefined) limit.floorBitsPerSec = dir.floorBitsPerSec;
  return limit;
}

/** `hookTimeout` in milliseconds: a duration with its unit, like every other value ("20s", "1500ms", "1min"). */
function durationMs(value: unknown, report: Report): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|min)\s*$/i.exec(String(value));
  const scale: Record<string, number> = { ms: 1, s: 1000, m: 60_000, min: 60_000 };
  const ms = m ? Number(m[1]) * scale[m[2].toLowerCase()] : Number.NaN;
  if (!m) {
    report(
      ["hookTimeout"],
      typeof value === "number" || /^\s*[\d.]+\s*$/.test(String(value))
        ? `"${value}" has no unit`
        : `"${value}" is not a duration`,
      'write a duration with its unit, e.g. "20s" (units: ms, s, min)',
    );
    return undefined;
  }
  if (ms < 1000 || ms > 600_000) {
    report(
      ["hookTimeout"],
      `${value} is outside 1s..10min`,
      "the hook needs at least 1s; every guest start waits for it, so keep it short (default 20s)",
    );
    return undefined;
  }
  return Math.round(ms);
}

/** A MAC address as written in the file, normalised; undefined (and reported) if it is not one. */
function macOf(value: unknown, path: Path, report: Report): string | undefined {
  if (value === undefined) return undefined;
  const mac = normaliseMac(value as string);
  if (!mac) report(path, `"${value}" is not a MAC address`, 'write it as "52:54:00:12:34:56"');
  return mac;
}

function fieldName(path: Path): string {
  let out = "";
  for (const p of path) out += typeof p === "number" ? `[${p}]` : out ? `.${p}` : p;
  return out || "(top level)";
}
