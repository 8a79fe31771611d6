import { type TSchema, Type } from "@sinclair/typebox";
import { Value, ValueErrorType } from "@sinclair/typebox/value";
import { isMap, LineCounter, parseDocument, type Node as YamlNode } from "yaml";
import { normaliseMac } from "./domain-xml.js";
import type { UploadMode } from "./model.js";
import { emptyPolicy } from "./policy-empty.js";
import { parseRate, parseSize, UnitError } from "./units.js";

export { emptyPolicy };

// The policy file. Structure is checked with a TypeBox schema, values (units, cross-field rules) by hand,
// and every problem is reported with file:line:column, the field path and the fix, all at once.

export type LogLevel = "debug" | "info" | "warning" | "error";
export type LeafChoice = "auto" | "fq_codel" | "sfq" | "fifo";

/** A direction's limit in a policy file, converted to base units. `unlimited` overrides lower sources. */
export type PolicyDirection =
  | { unlimited: true }
  | {
      unlimited?: false;
      rateBitsPerSec?: number;
      peakBitsPerSec?: number;
      burstBytes?: number;
      floorBitsPerSec?: number;
      mode?: UploadMode;
    };

export interface PolicyInterfaceRule {
  mac?: string;
  target?: string;
  alias?: string;
  inbound?: PolicyDirection;
  outbound?: PolicyDirection;
  group?: string;
  line: number;
}

export interface PolicyDomainRule {
  name?: string;
  uuid?: string;
  inbound?: PolicyDirection;
  outbound?: PolicyDirection;
  group?: string;
  interfaces: PolicyInterfaceRule[];
  line: number;
}

export interface PolicyGroupMember {
  domain: string;
  mac?: string;
  inbound?: PolicyDirection;
  outbound?: PolicyDirection;
  line: number;
}

export interface PolicyGroup {
  name: string;
  parent?: string;
  inbound?: PolicyDirection;
  outbound?: PolicyDirection;
  /** Floor and ceiling given to members that do not set their own. */
  memberDefaults: { inbound?: PolicyDirection; outbound?: PolicyDirection };
  members: PolicyGroupMember[];
  select: { domains?: string[]; networks?: string[]; bridges?: string[] };
  line: number;
}

export interface Policy {
  file: string;
  logLevel: LogLevel;
  strict: boolean;
  upload: UploadMode;
  leaf: LeafChoice;
  defaults: { inbound?: PolicyDirection; outbound?: PolicyDirection };
  domains: PolicyDomainRule[];
  groups: PolicyGroup[];
}

export interface PolicyProblem {
  file: string;
  line: number;
  column: number;
  field: string;
  message: string;
  fix: string;
}

export class PolicyError extends Error {
  readonly code = "POLICY_INVALID";
  constructor(readonly problems: PolicyProblem[]) {
    super(problems.map(formatProblem).join("\n"));
  }
}

export function formatProblem(p: PolicyProblem): string {
  return `${p.file}:${p.line}:${p.column}: ${p.field}: ${p.message}; fix: ${p.fix}`;
}

const Str = Type.String();
const Scalar = Type.Union([Type.String(), Type.Number()]);
const DirectionSchema = Type.Union([
  Type.Literal("unlimited"),
  Type.Object(
    {
      average: Type.Optional(Scalar),
      peak: Type.Optional(Scalar),
      burst: Type.Optional(Scalar),
      floor: Type.Optional(Scalar),
      mode: Type.Optional(Type.Union([Type.Literal("shape"), Type.Literal("police")])),
    },
    { additionalProperties: false },
  ),
]);
const Directions = {
  inbound: Type.Optional(DirectionSchema),
  outbound: Type.Optional(DirectionSchema),
};
const InterfaceSchema = Type.Object(
  {
    mac: Type.Optional(Str),
    target: Type.Optional(Str),
    alias: Type.Optional(Str),
    group: Type.Optional(Str),
    ...Directions,
  },
  { additionalProperties: false },
);
const DomainSchema = Type.Object(
  {
    name: Type.Optional(Str),
    uuid: Type.Optional(Str),
    group: Type.Optional(Str),
    interfaces: Type.Optional(Type.Array(InterfaceSchema)),
    ...Directions,
  },
  { additionalProperties: false },
);
const StrList = Type.Union([Str, Type.Array(Str)]);
const GroupSchema = Type.Object(
  {
    name: Str,
    parent: Type.Optional(Str),
    ...Directions,
    memberDefaults: Type.Optional(Type.Object(Directions, { additionalProperties: false })),
    members: Type.Optional(
      Type.Array(
        Type.Object({ domain: Str, mac: Type.Optional(Str), ...Directions }, { additionalProperties: false }),
      ),
    ),
    select: Type.Optional(
      Type.Object(
        {
          domains: Type.Optional(StrList),
          networks: Type.Optional(StrList),
          bridges: Type.Optional(StrList),
        },
        { additionalProperties: false },
      ),
    ),
  },
  { additionalProperties: false },
);
const PolicySchema = Type.Object(
  {
    version: Type.Optional(Type.Literal(1)),
    logLevel: Type.Optional(
      Type.Union([
        Type.Literal("debug"),
        Type.Literal("info"),
        Type.Literal("warning"),
        Type.Literal("error"),
      ]),
    ),
    strict: Type.Optional(Type.Boolean()),
    upload: Type.Optional(Type.Union([Type.Literal("shape"), Type.Literal("police")])),
    leaf: Type.Optional(
      Type.Union([Type.Literal("auto"), Type.Literal("fq_codel"), Type.Literal("sfq"), Type.Literal("fifo")]),
    ),
    defaults: Type.Optional(Type.Object(Directions, { additionalProperties: false })),
    domains: Type.Optional(Type.Array(DomainSchema)),
    groups: Type.Optional(Type.Array(GroupSchema)),
  },
  { additionalProperties: false },
);

type Path = (string | number)[];

/** Parse and validate policy text. Throws PolicyError listing every problem with its line. */
export function parsePolicy(text: string, file: string): Policy {
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
  const problem = (path: Path, message: string, fix: string, atKey = false) =>
    problems.push({ file, ...at(path, atKey), field: fieldName(path), message, fix });

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
  if (problems.length) throw new PolicyError(problems);
  if (doc.contents === null) return emptyPolicy(file);
  if (!isMap(doc.contents)) {
    problem(
      [],
      "the policy file must be a mapping",
      "start with keys such as `defaults:`, `domains:`, `groups:`",
    );
    throw new PolicyError(problems);
  }

  const raw = doc.toJS() as unknown;
  for (const e of bestErrors(PolicySchema, raw)) {
    const path = e.path
      .split("/")
      .slice(1)
      .map((s) => (/^\d+$/.test(s) ? Number(s) : s.replace(/~1/g, "/").replace(/~0/g, "~")));
    problem(path, e.message, e.fix, e.unknownField);
  }
  if (problems.length) throw new PolicyError(problems);

  const obj = raw as Record<string, unknown>;
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
          problem([...path, key], "must be greater than zero", "write a positive rate, e.g. 10mbit");
        return bits;
      } catch (e) {
        if (e instanceof UnitError) problem([...path, key], e.message, e.fix);
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
          problem([...path, "burst"], "is smaller than one full-size frame (1514 B)", "use at least 2KiB");
        }
      } catch (e) {
        if (e instanceof UnitError) problem([...path, "burst"], e.message, e.fix);
        else throw e;
      }
    }
    if (v.mode !== undefined) {
      if (!allowMode) {
        problem(
          [...path, "mode"],
          "only guest upload (outbound) has a mode",
          "remove `mode` here; inbound is always shaped",
        );
      }
      out.mode = v.mode as UploadMode;
    }
    if (out.peakBitsPerSec !== undefined && out.rateBitsPerSec === undefined) {
      problem(
        path,
        "peak is set without average",
        "add `average`, the long-term rate the peak falls back to",
      );
    }
    if (
      out.peakBitsPerSec !== undefined &&
      out.rateBitsPerSec !== undefined &&
      out.peakBitsPerSec < out.rateBitsPerSec
    ) {
      problem([...path, "peak"], "is lower than average", "set peak >= average, or remove peak");
    }
    if (
      out.floorBitsPerSec !== undefined &&
      out.rateBitsPerSec !== undefined &&
      out.floorBitsPerSec > out.rateBitsPerSec
    ) {
      problem(
        [...path, "floor"],
        "is higher than average",
        "a guarantee cannot exceed the member's own ceiling",
      );
    }
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
    defaults: directions(obj.defaults as Record<string, unknown> | undefined, ["defaults"]),
  };
  // Where a direction is the interface's own limit, it needs an average; a lone `mode` or `burst` would
  // otherwise silently replace the XML's limit with nothing. (Group members may give only a floor.)
  const needsAverage = (v: unknown, path: Path) => {
    const dir = v as Record<string, unknown> | string | undefined;
    // A lone peak has its own, more precise message.
    if (dir && typeof dir === "object" && dir.average === undefined && dir.peak === undefined) {
      problem(path, "has no average", "add `average: <rate>` (the limit), or write `unlimited`");
    }
  };
  const defaultsRaw = obj.defaults as Record<string, unknown> | undefined;
  for (const d of ["inbound", "outbound"] as const) needsAverage(defaultsRaw?.[d], ["defaults", d]);

  const domains = (obj.domains as Record<string, unknown>[] | undefined) ?? [];
  domains.forEach((d, i) => {
    const path: Path = ["domains", i];
    if (!d.name && !d.uuid)
      problem(path, "has neither name nor uuid", "add `name: <domain name>` or `uuid: <uuid>`");
    if (d.uuid !== undefined && !isUuid(d.uuid as string)) {
      problem([...path, "uuid"], `"${d.uuid}" is not a UUID`, "copy it from `virsh domuuid <domain>`");
    }
    for (const dir of ["inbound", "outbound"] as const) needsAverage(d[dir], [...path, dir]);
    const interfaces = ((d.interfaces as Record<string, unknown>[] | undefined) ?? []).map((ifr, j) => {
      const ipath: Path = [...path, "interfaces", j];
      for (const dir of ["inbound", "outbound"] as const) needsAverage(ifr[dir], [...ipath, dir]);
      const mac = ifr.mac === undefined ? undefined : normaliseMac(ifr.mac as string);
      if (ifr.mac !== undefined && !mac) {
        problem([...ipath, "mac"], `"${ifr.mac}" is not a MAC address`, 'write it as "52:54:00:12:34:56"');
      }
      if (ifr.mac === undefined && ifr.target === undefined && ifr.alias === undefined) {
        problem(
          ipath,
          "matches no interface",
          "add one of `mac`, `target` (host device) or `alias` (e.g. net0)",
        );
      }
      return {
        mac,
        target: ifr.target as string | undefined,
        alias: ifr.alias as string | undefined,
        group: ifr.group as string | undefined,
        ...directions(ifr, ipath),
        line: at(ipath).line,
      };
    });
    policy.domains.push({
      name: d.name as string | undefined,
      uuid: (d.uuid as string | undefined)?.toLowerCase(),
      group: d.group as string | undefined,
      ...directions(d, path),
      interfaces,
      line: at(path).line,
    });
  });

  const groups = (obj.groups as Record<string, unknown>[] | undefined) ?? [];
  const seen = new Map<string, number>();
  groups.forEach((g, i) => {
    const path: Path = ["groups", i];
    const name = g.name as string;
    if (!/^[A-Za-z0-9_.-]{1,64}$/.test(name)) {
      problem(
        [...path, "name"],
        `"${name}" is not a valid group name`,
        "use 1-64 letters, digits, '.', '_' or '-'",
      );
    }
    if (seen.has(name)) {
      problem(
        [...path, "name"],
        `group "${name}" is defined twice`,
        `rename it or merge it with groups[${seen.get(name)}]`,
      );
    }
    seen.set(name, i);
    const members = ((g.members as Record<string, unknown>[] | undefined) ?? []).map((m, j) => {
      const mpath: Path = [...path, "members", j];
      const mac = m.mac === undefined ? undefined : normaliseMac(m.mac as string);
      if (m.mac !== undefined && !mac) {
        problem([...mpath, "mac"], `"${m.mac}" is not a MAC address`, 'write it as "52:54:00:12:34:56"');
      }
      return { domain: m.domain as string, mac, ...directions(m, mpath), line: at(mpath).line };
    });
    const sel = (g.select as Record<string, unknown> | undefined) ?? {};
    const strList = (v: unknown) =>
      v === undefined ? undefined : Array.isArray(v) ? (v as string[]) : [v as string];
    const md = g.memberDefaults as Record<string, unknown> | undefined;
    policy.groups.push({
      name,
      parent: g.parent as string | undefined,
      ...directions(g, path),
      memberDefaults: directions(md, [...path, "memberDefaults"]),
      members,
      select: {
        domains: strList(sel.domains),
        networks: strList(sel.networks),
        bridges: strList(sel.bridges),
      },
      line: at(path).line,
    });
  });
  checkGroups(policy, problem);
  if (problems.length) throw new PolicyError(problems);
  return policy;
}

/** Cross-group rules: parents exist, one level of nesting, ceilings present, floors fit (admission). */
function checkGroups(policy: Policy, problem: (path: Path, message: string, fix: string) => void): void {
  const byName = new Map(policy.groups.map((g, i) => [g.name, { g, i }]));
  policy.groups.forEach((g, i) => {
    const path: Path = ["groups", i];
    for (const d of ["inbound", "outbound"] as const) {
      const dir = g[d];
      if (dir && !dir.unlimited && dir.rateBitsPerSec === undefined) {
        problem([...path, d], "has no average (the group's shared ceiling)", "add `average: <rate>`");
      }
    }
    if (!g.inbound && !g.outbound) {
      problem(
        path,
        `group "${g.name}" has no ceiling in either direction`,
        "add `inbound:` and/or `outbound:` with an average",
      );
    }
    if (g.parent !== undefined) {
      const parent = byName.get(g.parent);
      if (!parent) {
        problem(
          [...path, "parent"],
          `group "${g.parent}" is not defined`,
          "define it under `groups:` or remove `parent`",
        );
      } else if (parent.g.parent !== undefined) {
        problem(
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
        problem(
          [...path, d],
          `group "${g.name}" shapes ${d} but its parent "${g.parent}" has no ${d} ceiling`,
          `add \`${d}: { average: <rate> }\` to "${g.parent}", or remove ${d} from "${g.name}"`,
        );
      } else if (parent.g.members.length || hasSelector(parent.g)) {
        problem(
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
        problem(
          ["groups", gi, "members", mi],
          `${m.domain}${m.mac ? ` ${m.mac}` : ""} is also a member of group "${clash.group}"; an interface belongs to one group`,
          `remove it from "${g.name}" or from "${clash.group}"`,
        );
      }
      seenMembers.push({ group: g.name, domain: m.domain, mac: m.mac });
    });
  });
  // Admission: the floors promised inside a group must fit under its ceiling, per direction.
  for (const g of policy.groups) {
    const i = byName.get(g.name)!.i;
    for (const d of ["inbound", "outbound"] as const) {
      const ceil = g[d];
      if (!ceil || ceil.unlimited || ceil.rateBitsPerSec === undefined) continue;
      let sum = 0;
      const parts: string[] = [];
      for (const m of g.members) {
        const md = m[d] ?? g.memberDefaults[d];
        const floor = md && !md.unlimited ? md.floorBitsPerSec : undefined;
        if (floor) {
          sum += floor;
          parts.push(`${m.domain}${m.mac ? ` ${m.mac}` : ""} ${floor / 1e6} Mbit/s`);
        }
      }
      for (const child of policy.groups.filter((c) => c.parent === g.name)) {
        const cd = child[d];
        if (cd && !cd.unlimited && cd.rateBitsPerSec !== undefined) {
          const guaranteed = cd.floorBitsPerSec ?? cd.rateBitsPerSec;
          if (guaranteed) {
            sum += guaranteed;
            parts.push(`group ${child.name} ${guaranteed / 1e6} Mbit/s`);
          }
        }
      }
      if (sum > ceil.rateBitsPerSec) {
        problem(
          ["groups", i, d, "average"],
          `floors add up to ${sum / 1e6} Mbit/s (${parts.join(" + ")}), more than the group's ${d} ceiling of ${ceil.rateBitsPerSec / 1e6} Mbit/s`,
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

function fieldName(path: Path): string {
  let out = "";
  for (const p of path) out += typeof p === "number" ? `[${p}]` : out ? `.${p}` : p;
  return out || "(top level)";
}

interface SchemaProblem {
  path: string;
  message: string;
  fix: string;
  unknownField: boolean;
}

/**
 * TypeBox reports every branch of a union; keep one error per path and phrase it for an operator.
 * `inbound: "30mbit"` should say "must be `unlimited` or a mapping with average...", not ten lines.
 */
function bestErrors(schema: TSchema, value: unknown): SchemaProblem[] {
  const byPath = new Map<string, SchemaProblem>();
  for (const e of Value.Errors(schema, value)) {
    const key = e.path;
    if (byPath.has(key)) continue;
    const field = key.split("/").pop() ?? "";
    let message = e.message;
    let fix = "see the policy format in the README";
    switch (e.type) {
      case ValueErrorType.ObjectAdditionalProperties:
        message = `unknown field "${field}"`;
        fix = "check the spelling; allowed fields are listed in the README's policy format";
        break;
      case ValueErrorType.ObjectRequiredProperty:
        message = `"${field}" is required`;
        fix = `add \`${field}:\``;
        break;
      case ValueErrorType.Union:
        if (field === "inbound" || field === "outbound") {
          message = "must be `unlimited` or a mapping of average/peak/burst/floor";
          fix = `write e.g. \`${field}: { average: 30mbit }\``;
        } else {
          message = `has an unsupported value ${JSON.stringify(e.value)}`;
          fix = "use one of the values the README lists for this field";
        }
        break;
      case ValueErrorType.Literal:
        message = `has an unsupported value ${JSON.stringify(e.value)}`;
        fix = `use ${JSON.stringify((e.schema as { const?: unknown }).const)}`;
        break;
      case ValueErrorType.Array:
        message = "must be a list";
        fix = "write it as a YAML list (lines starting with `- `)";
        break;
      case ValueErrorType.Object:
        message = "must be a mapping";
        fix = "write it as `key: value` lines";
        break;
      case ValueErrorType.String:
        message = `must be text, got ${JSON.stringify(e.value)}`;
        fix = "quote the value";
        break;
      case ValueErrorType.Boolean:
        message = `must be true or false, got ${JSON.stringify(e.value)}`;
        fix = "write true or false";
        break;
    }
    // A failed union also reports its members' errors at deeper paths; the union's message covers them.
    if ([...byPath.keys()].some((p) => key.startsWith(`${p}/`))) continue;
    byPath.set(key, {
      path: key,
      message,
      fix,
      unknownField: e.type === ValueErrorType.ObjectAdditionalProperties,
    });
  }
  return [...byPath.values()];
}
