import { type TSchema, Type } from "@sinclair/typebox";
import { Value, ValueErrorType } from "@sinclair/typebox/value";

// The policy file's structure: which keys exist where and what kind of value each takes. Values themselves
// (units, ranges, cross-field rules) are checked by hand in parse.ts and check.ts, where the messages can
// name the fix.

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
    hookTimeout: Type.Optional(Scalar),
    upload: Type.Optional(Type.Union([Type.Literal("shape"), Type.Literal("police")])),
    leaf: Type.Optional(
      Type.Union([Type.Literal("auto"), Type.Literal("fq_codel"), Type.Literal("sfq"), Type.Literal("fifo")]),
    ),
    ovs: Type.Optional(Type.Union([Type.Literal("tc"), Type.Literal("native")])),
    defaults: Type.Optional(Type.Object(Directions, { additionalProperties: false })),
    domains: Type.Optional(Type.Array(DomainSchema)),
    groups: Type.Optional(Type.Array(GroupSchema)),
  },
  { additionalProperties: false },
);

export interface SchemaProblem {
  /** JSON pointer of the value, e.g. /groups/0/inbound. */
  path: string;
  message: string;
  fix: string;
  /** An unknown key: reported where the key is, not where its value is. */
  unknownField: boolean;
}

/** Where the parsed YAML does not have the policy file's structure, one problem per place. */
export function schemaProblems(value: unknown): SchemaProblem[] {
  return bestErrors(PolicySchema, value);
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
        } else if (key === "/ovs") {
          message = `has an unsupported value ${JSON.stringify(e.value)}; it must be "tc" or "native"`;
          fix =
            "write `ovs: tc` (virtqos's own tc objects on Open vSwitch ports, the default) or `ovs: native` (Open vSwitch enforces the limits: QoS rows and ingress policing)";
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
