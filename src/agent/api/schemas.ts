import { type Static, type TSchema, Type } from "@sinclair/typebox";
import { TypeCompiler } from "@sinclair/typebox/compiler";
import { type ValueError, ValueErrorType } from "@sinclair/typebox/errors";
import { ERRORS, type ErrorCode } from "../../core/errors.js";
import type { LimitSource } from "../../core/model.js";
import {
  LIBVIRT_BURST_UNIT_BYTES,
  LIBVIRT_MAX_VALUE,
  MAX_RATE_BITS_PER_SEC,
  parseRate,
  parseSize,
  UnitError,
} from "../../core/units.js";
import type {
  AuditEntry,
  AuditQuery,
  ContestedObjectView,
  DirectionView,
  DomainSummary,
  Health,
  InterfaceView,
  LimitView,
  LiveChange,
  Persist,
  RateInput,
} from "../types.js";
import { RequestProblem } from "./errors.js";

// The one description of what the API accepts and answers: the routes validate with these schemas, the
// OpenAPI document is printed from them, and the tests re-check what reached the service against them.
// Validation is ours (TypeCompiler), not fastify's, so every refusal has our error body and a JSON pointer.

/** Marks a schema the OpenAPI document lists under components.schemas; copies (Type.Optional) keep it. */
export const COMPONENT: unique symbol = Symbol("virtqos.openapi.component");
/** What to tell a client whose value this schema refused, instead of TypeBox's wording. */
const HINT: unique symbol = Symbol("virtqos.schema.hint");

type Tagged = { [COMPONENT]?: string; [HINT]?: string };

function named<T extends TSchema>(name: string, schema: T): T {
  (schema as T & Tagged)[COMPONENT] = name;
  return schema;
}

function hint<T extends TSchema>(text: string, schema: T): T {
  (schema as T & Tagged)[HINT] = text;
  return schema;
}

export function componentName(schema: unknown): string | undefined {
  return (schema as Tagged | null)?.[COMPONENT];
}

// C0, DEL and C1: nothing libvirt names contains them, and they would forge lines in logs and audit entries.
const NO_CONTROL_CHARS = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$";

export const DOMAIN_MAX_CHARS = 255;
export const IFACE_MAX_CHARS = 64;
export const AUDIT_LIMIT_MAX = 10_000;
/** The longest text a rate or size may be, as the service takes it: "2.5Gbit/s" needs 9 characters. */
const UNIT_TEXT_MAX_CHARS = 32;

export const DomainName = hint(
  `must be a domain name or UUID of 1 to ${DOMAIN_MAX_CHARS} characters, without control characters`,
  Type.String({
    minLength: 1,
    maxLength: DOMAIN_MAX_CHARS,
    pattern: NO_CONTROL_CHARS,
    description: "The domain's name or UUID, as libvirt knows it.",
  }),
);

export const IfaceName = hint(
  `must be 1 to ${IFACE_MAX_CHARS} characters without control characters: a target dev, MAC, alias or 1-based index`,
  Type.String({
    minLength: 1,
    maxLength: IFACE_MAX_CHARS,
    pattern: NO_CONTROL_CHARS,
    description: "The interface: its target dev (`vnet0`), MAC address, alias or 1-based index.",
  }),
);

const RATE_HINT =
  `must be a whole number of kB/s from 0 to ${LIBVIRT_MAX_VALUE} (1 kB/s = 8 kbit/s), ` +
  'or a string with a unit such as "20mbit", "2.5MB/s" or "512KiB/s"';
const BURST_HINT =
  `must be a whole number of KiB from 0 to ${LIBVIRT_MAX_VALUE}, ` +
  'or a string with a unit such as "64KiB", "1.5MB" or "1514B"';

export const RateValue = named(
  "Rate",
  hint(
    RATE_HINT,
    Type.Union(
      [
        Type.Integer({
          minimum: 0,
          maximum: LIBVIRT_MAX_VALUE,
          description: "kB/s, libvirt's unit: 1 = 1000 bytes/s = 8 kbit/s.",
        }),
        Type.String({
          minLength: 1,
          maxLength: UNIT_TEXT_MAX_CHARS,
          description:
            "A rate with its unit: bit, kbit, mbit, gbit, tbit (bits/s, case-insensitive, optional /s), " +
            'B/s, kB/s, MB/s, GB/s, KiB/s, MiB/s, GiB/s (bytes/s). "mbps", "kbps", "Mb/s" are refused as ambiguous.',
        }),
      ],
      {
        description: `A rate: kB/s as a number (at most ${LIBVIRT_MAX_VALUE}), or a string with a unit. An average of 0 means no limit.`,
      },
    ),
  ),
);

export const BurstValue = named(
  "Burst",
  hint(
    BURST_HINT,
    Type.Union(
      [
        Type.Integer({
          minimum: 0,
          maximum: LIBVIRT_MAX_VALUE,
          description: "KiB, libvirt's unit: 1 = 1024 bytes.",
        }),
        Type.String({
          minLength: 1,
          maxLength: UNIT_TEXT_MAX_CHARS,
          description:
            "A size with its unit: B, kB, MB, GB (powers of 1000), KiB, MiB, GiB (powers of 1024).",
        }),
      ],
      {
        description: `A bucket size: KiB as a number (at most ${LIBVIRT_MAX_VALUE}), or a string with a unit.`,
      },
    ),
  ),
);

export const RateInputSchema = named(
  "RateInput",
  Type.Object(
    {
      average: RateValue,
      peak: Type.Optional(RateValue),
      burst: Type.Optional(BurstValue),
      floor: Type.Optional(RateValue),
    },
    {
      additionalProperties: false,
      description:
        "One direction's live limit. average: the rate (0 clears the direction's live limit: no limit); " +
        "peak: the rate while the burst lasts; burst: the bucket; floor: the guarantee inside a group.",
    },
  ),
);

export const DEFAULT_PERSIST: Persist = "live";

export const PersistSchema = named(
  "Persist",
  hint(
    'must be "live", "config" or "both"',
    Type.Union([Type.Literal("live"), Type.Literal("config"), Type.Literal("both")], {
      default: DEFAULT_PERSIST,
      description:
        "live: the running domain only (default); config: its persistent definition only, from its next start; both.",
    }),
  ),
);

export const SetInterfaceBody = named(
  "SetInterfaceRequest",
  Type.Object(
    {
      inbound: Type.Optional(RateInputSchema),
      outbound: Type.Optional(RateInputSchema),
      persist: Type.Optional(PersistSchema),
    },
    {
      additionalProperties: false,
      // Not checked by TypeBox (it compiles by kind); the route checks it, and the document states it.
      anyOf: [{ required: ["inbound"] }, { required: ["outbound"] }],
      description:
        "A live change of one interface: inbound (the guest's download), outbound (its upload) or both; " +
        `persist defaults to "${DEFAULT_PERSIST}".`,
    },
  ),
);

export const DomainParams = Type.Object({ domain: DomainName }, { additionalProperties: false });
export const InterfaceParams = Type.Object(
  { domain: DomainName, iface: IfaceName },
  { additionalProperties: false },
);

export const NoQuery = Type.Object({}, { additionalProperties: false });
export const ClearQuery = Type.Object(
  { persist: Type.Optional(PersistSchema) },
  { additionalProperties: false },
);

const ISO_TIME = "^\\d{4}-\\d{2}-\\d{2}(T\\d{2}:\\d{2}(:\\d{2}(\\.\\d{1,9})?)?(Z|[+-]\\d{2}:\\d{2}))?$";

export const AuditQuerySchema = Type.Object(
  {
    domain: Type.Optional(DomainName),
    since: Type.Optional(
      hint(
        'must be an ISO 8601 date or time with a zone, e.g. "2025-01-31" or "2025-01-31T12:00:00Z"',
        Type.String({
          pattern: ISO_TIME,
          maxLength: 40,
          description: "Entries at or after this time: an ISO 8601 date (UTC) or date-time with a zone.",
        }),
      ),
    ),
    limit: Type.Optional(
      hint(
        `must be a whole number from 1 to ${AUDIT_LIMIT_MAX}`,
        Type.Integer({ minimum: 1, maximum: AUDIT_LIMIT_MAX, description: "At most this many entries." }),
      ),
    ),
  },
  { additionalProperties: false },
);

const UUID = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";

export const ServerId = hint(
  "must be the instance's UUID (8-4-4-4-12 hexadecimal digits)",
  Type.String({
    pattern: UUID,
    maxLength: 36,
    description: "The instance's UUID: the libvirt domain's UUID.",
  }),
);
export const ProjectId = hint(
  "must be 1 to 255 characters without control characters or slashes",
  Type.String({
    minLength: 1,
    maxLength: 255,
    pattern: "^[^\\u0000-\\u001F\\u007F-\\u009F/]*$",
    description: "The project (tenant); accepted as Nova's URLs carry it, not checked.",
  }),
);

export const NovaParams = Type.Object(
  { project_id: ProjectId, server_id: ServerId },
  { additionalProperties: false },
);
export const NovaServerParams = Type.Object({ server_id: ServerId }, { additionalProperties: false });

/** Nova's interface index: libvirt allows far fewer interfaces per domain than this. */
export const NOVA_INTERFACE_MAX = 65_535;

export const NovaActionBody = named(
  "NovaSetInterfaceAction",
  Type.Object(
    {
      setInterface: Type.Object(
        {
          interface: hint(
            `must be a whole number from 1 to ${NOVA_INTERFACE_MAX}: the interface's 1-based index`,
            Type.Integer({
              minimum: 1,
              maximum: NOVA_INTERFACE_MAX,
              description: "The interface's 1-based index, in the domain XML's order.",
            }),
          ),
          rate: hint(
            `must be a whole number of kB/s from 0 to ${LIBVIRT_MAX_VALUE}`,
            Type.Integer({
              minimum: 0,
              maximum: LIBVIRT_MAX_VALUE,
              description:
                "kB/s (libvirt's unit, 1 = 8 kbit/s): average and peak of both directions, and their burst in KiB. 0 removes the limits.",
            }),
          ),
        },
        { additionalProperties: false },
      ),
    },
    { additionalProperties: false },
  ),
);

// ---- Responses. Documentation, and what the tests hold the service's answers to. ----

const LimitSourceSchema = Type.Union([
  Type.Literal("live"),
  Type.Literal("policy"),
  Type.Literal("metadata"),
  Type.Literal("bandwidth"),
  Type.Literal("defaults"),
]);

export const LimitViewSchema = named(
  "LimitView",
  Type.Object(
    {
      rateBitsPerSec: Type.Number({ minimum: 0 }),
      ceilBitsPerSec: Type.Number({ minimum: 0 }),
      burstBytes: Type.Optional(Type.Number({ minimum: 0 })),
      floorBitsPerSec: Type.Optional(Type.Number({ minimum: 0 })),
      source: LimitSourceSchema,
    },
    { additionalProperties: false, description: "One direction's limit in base units (bits/s, bytes)." },
  ),
);

export const DirectionViewSchema = named(
  "DirectionView",
  Type.Object(
    {
      configured: Type.Optional(LimitViewSchema),
      live: Type.Optional(Type.Union([LimitViewSchema, Type.Null()])),
      inForce: Type.Optional(LimitViewSchema),
    },
    {
      additionalProperties: false,
      description:
        "configured: from the policy, metadata, <bandwidth> or defaults; live: set through the API or `virtqos set` " +
        "(null: cleared live, no limit); inForce: what the kernel has (absent: unshaped).",
    },
  ),
);

export const InterfaceViewSchema = named(
  "InterfaceView",
  Type.Object(
    {
      index: Type.Integer({ minimum: 1, description: "1-based, in the domain XML's order." }),
      mac: Type.Optional(Type.String()),
      dev: Type.Optional(Type.String()),
      alias: Type.Optional(Type.String()),
      type: Type.String({ description: "libvirt's <interface type>." }),
      inbound: DirectionViewSchema,
      outbound: DirectionViewSchema,
      matches: Type.Optional(Type.Boolean()),
      counters: Type.Optional(
        Type.Object(
          { txBytes: Type.Number({ minimum: 0 }), rxBytes: Type.Number({ minimum: 0 }) },
          { additionalProperties: false, description: "The tap's counters: tx = towards the guest." },
        ),
      ),
    },
    { additionalProperties: false, description: "Directions are the guest's: inbound = its download." },
  ),
);

export const DomainSummarySchema = named(
  "DomainSummary",
  Type.Object(
    {
      name: Type.String(),
      uuid: Type.String(),
      state: Type.String({ description: 'libvirt\'s state: "running", "shut off", "paused", ...' }),
      interfaces: Type.Integer({ minimum: 0 }),
    },
    { additionalProperties: false },
  ),
);

export const AuditEntrySchema = named(
  "AuditEntry",
  Type.Object(
    {
      id: Type.Optional(Type.Integer()),
      at: Type.String({ description: "ISO 8601, milliseconds, UTC." }),
      who: Type.String(),
      door: Type.Union([
        Type.Literal("cli"),
        Type.Literal("api"),
        Type.Literal("nova"),
        Type.Literal("metadata"),
        Type.Literal("hook"),
        Type.Literal("agent"),
      ]),
      domainUuid: Type.Optional(Type.String()),
      domainName: Type.Optional(Type.String()),
      iface: Type.Optional(Type.String()),
      before: Type.Optional(Type.Unknown()),
      after: Type.Optional(Type.Unknown()),
      result: Type.Union([Type.Literal("ok"), Type.Literal("failed"), Type.Literal("refused")]),
      code: Type.Optional(Type.String()),
      message: Type.Optional(Type.String()),
      txId: Type.Optional(Type.String()),
    },
    { additionalProperties: false },
  ),
);

export const ContestedObjectSchema = named(
  "ContestedObject",
  Type.Object(
    {
      dev: Type.String({ description: "The device: a guest's tap, an interface's IFB or a group's IFB." }),
      object: Type.String({ description: 'What on it: "root qdisc", "ingress redirect", "ifb", ...' }),
      domains: Type.Array(
        Type.Object({ name: Type.String(), uuid: Type.String() }, { additionalProperties: false }),
        {
          description: "The guests whose shaping it is.",
        },
      ),
      since: Type.String({ description: "When it became contested (ISO 8601, UTC)." }),
      lastDriftAt: Type.String({ description: "When a check last found it changed." }),
      drifts: Type.Integer({
        minimum: 0,
        description: "Times found changed again since it became contested.",
      }),
      backoffMs: Type.Integer({ minimum: 0, description: "How long the agent now waits between repairs." }),
      nextRepairAt: Type.Optional(Type.String({ description: "When the next repair is due, if one waits." })),
      until: Type.String({ description: "When it stops being contested unless it is changed again." }),
      reasons: Type.Array(Type.String(), { description: "What the checks said, most recent last." }),
    },
    {
      additionalProperties: false,
      description:
        "A kernel object another tool keeps changing back after the agent's drift repair; repairs back off.",
    },
  ),
);

export const HealthSchema = named(
  "Health",
  Type.Object(
    {
      libvirt: Type.Object(
        {
          connected: Type.Boolean(),
          uri: Type.String(),
          since: Type.Optional(Type.String()),
          error: Type.Optional(Type.String()),
        },
        { additionalProperties: false },
      ),
      lastReconcile: Type.Optional(
        Type.Object(
          { at: Type.String(), domain: Type.Optional(Type.String()), ok: Type.Boolean() },
          { additionalProperties: false },
        ),
      ),
      queueDepth: Type.Integer({ minimum: 0 }),
      uptimeSeconds: Type.Number({ minimum: 0 }),
      contested: Type.Optional(
        Type.Array(ContestedObjectSchema, {
          description: "Objects the drift repair finds contested; [] for none.",
        }),
      ),
    },
    { additionalProperties: false },
  ),
);

export const DomainsResponse = Type.Object(
  { domains: Type.Array(DomainSummarySchema) },
  { additionalProperties: false },
);
export const InterfacesResponse = Type.Object(
  { domain: DomainSummarySchema, interfaces: Type.Array(InterfaceViewSchema) },
  { additionalProperties: false },
);
export const InterfaceResponse = Type.Object(
  { interface: InterfaceViewSchema },
  { additionalProperties: false },
);
export const AuditResponse = Type.Object(
  { entries: Type.Array(AuditEntrySchema) },
  { additionalProperties: false },
);

const libvirtNumber = (description: string) => Type.Integer({ minimum: 0, description });

export const NovaAcceptedResponse = named(
  "NovaInterfaceParameters",
  Type.Object(
    {
      interfaceParameters: Type.Object(
        {
          "inbound.average": libvirtNumber("kB/s; 0 = no limit"),
          "inbound.peak": libvirtNumber("kB/s"),
          "inbound.burst": libvirtNumber("KiB"),
          "inbound.floor": Type.Optional(libvirtNumber("kB/s; present when a floor is in force")),
          "outbound.average": libvirtNumber("kB/s; 0 = no limit"),
          "outbound.peak": libvirtNumber("kB/s"),
          "outbound.burst": libvirtNumber("KiB"),
        },
        { additionalProperties: false },
      ),
    },
    {
      additionalProperties: false,
      description:
        "The limits in force after the change, in libvirt's units, as `virsh domiftune` reports them.",
    },
  ),
);

const ERROR_CODES = Object.keys(ERRORS) as ErrorCode[];
const ErrorCodeSchema = Type.Union(ERROR_CODES.map((c) => Type.Literal(c)));

export const ErrorBodySchema = named(
  "Error",
  Type.Object(
    {
      error: Type.Object(
        {
          code: ErrorCodeSchema,
          message: Type.String({ description: "What was wrong, with the specifics." }),
          field: Type.Optional(
            Type.String({ description: 'JSON pointer of the field at fault, e.g. "/inbound/average".' }),
          ),
          fix: Type.String({ description: "The catalogue's next step for this code (docs/errors.md)." }),
          detail: Type.Optional(Type.Unknown()),
        },
        { additionalProperties: false },
      ),
    },
    { additionalProperties: false },
  ),
);

const NovaFaultDetail = Type.Object(
  {
    code: Type.Integer({ description: "The HTTP status." }),
    message: Type.String(),
    virtqos: Type.Object(
      { code: ErrorCodeSchema, field: Type.Optional(Type.String()), fix: Type.String() },
      { additionalProperties: false },
    ),
  },
  { additionalProperties: false },
);

export const NOVA_FAULT_KEYS = [
  "badRequest",
  "unauthorized",
  "forbidden",
  "itemNotFound",
  "conflictingRequest",
  "overLimit",
  "notImplemented",
  "serviceUnavailable",
  "computeFault",
] as const;

export const NovaFaultSchema = named(
  "NovaFault",
  Type.Object(Object.fromEntries(NOVA_FAULT_KEYS.map((k) => [k, Type.Optional(NovaFaultDetail)])), {
    additionalProperties: false,
    minProperties: 1,
    maxProperties: 1,
    description: "Nova's fault shape: one key, named by the status (computeFault for 422 and 500).",
  }),
);

// The schemas above restate types.ts; these fail to compile when the two part ways.
type Same<A, B> = [A] extends [B]
  ? [B] extends [A]
    ? [keyof A] extends [keyof B]
      ? [keyof B] extends [keyof A]
        ? true
        : false
      : false
    : false
  : false;
type Assert<T extends true> = T;
export type SchemaTypeChecks = [
  Assert<Same<Static<typeof LimitSourceSchema>, LimitSource>>,
  Assert<Same<Static<typeof LimitViewSchema>, LimitView>>,
  Assert<Same<Static<typeof DirectionViewSchema>, DirectionView>>,
  Assert<Same<Static<typeof InterfaceViewSchema>, InterfaceView>>,
  Assert<Same<Static<typeof DomainSummarySchema>, DomainSummary>>,
  Assert<Same<Static<typeof AuditEntrySchema>, AuditEntry>>,
  Assert<Same<Static<typeof HealthSchema>, Health>>,
  Assert<Same<Static<typeof ContestedObjectSchema>, ContestedObjectView>>,
  Assert<Same<Static<typeof RateInputSchema>, RateInput>>,
  Assert<Same<Static<typeof PersistSchema>, Persist>>,
  Assert<Same<Required<Static<typeof AuditQuerySchema>>, Required<AuditQuery>>>,
];

// ---- Validation ----

export type Where = "body" | "path" | "query";

/** One part of a request (body, path parameters, query) with its schema and the function that checks it. */
export interface Part<T> {
  schema: TSchema;
  where: Where;
  parse(value: unknown): T;
}

const POINTER_MAX_CHARS = 200;

function explain(err: ValueError, where: Where): string {
  switch (err.type) {
    case ValueErrorType.ObjectRequiredProperty:
      return "is required";
    case ValueErrorType.ObjectAdditionalProperties:
      return where === "body" ? "is not a known field" : "is not a known parameter";
    case ValueErrorType.Object:
      return where === "body" ? "must be a JSON object" : "is malformed";
  }
  return (err.schema as Tagged)[HINT] ?? err.message;
}

function refusal(err: ValueError, where: Where): RequestProblem {
  const pointer = err.path.slice(0, POINTER_MAX_CHARS);
  const text = explain(err, where);
  if (where === "body") {
    return new RequestProblem(
      "REQUEST_INVALID",
      pointer === "" ? `the body ${text}` : `${pointer}: ${text}`,
      pointer === "" ? undefined : pointer,
    );
  }
  // Path and query pointers are one level deep: "/domain" is the parameter's name.
  const name = pointer.slice(1).replace(/~1/g, "/").replace(/~0/g, "~");
  const label = where === "path" ? "path parameter" : "query parameter";
  return new RequestProblem(
    "REQUEST_INVALID",
    pointer === "" ? `the ${where} ${text}` : `${label} ${JSON.stringify(name)} ${text}`,
    pointer === "" ? undefined : pointer,
  );
}

/** Query strings carry text; the integer parameters are converted when they are plain digits, else refused. */
function coerceQuery(schema: TSchema, value: unknown): unknown {
  if (typeof value !== "object" || value === null) return value;
  const props = (schema as { properties?: Record<string, { type?: string }> }).properties ?? {};
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    const integer = Object.hasOwn(props, k) && props[k].type === "integer";
    out[k] = integer && typeof v === "string" && /^[0-9]{1,15}$/.test(v) ? Number(v) : v;
  }
  return out;
}

export function part<S extends TSchema, T = Static<S>>(
  schema: S,
  where: Where,
  refine?: (value: Static<S>) => T,
): Part<T> {
  const compiled = TypeCompiler.Compile(schema);
  return {
    schema,
    where,
    parse(value: unknown): T {
      if (where === "body" && value === undefined) {
        throw new RequestProblem(
          "REQUEST_INVALID",
          "a JSON body is required (Content-Type: application/json)",
        );
      }
      const v = where === "query" ? coerceQuery(schema, value) : value;
      if (!compiled.Check(v)) {
        const first = compiled.Errors(v).First();
        throw first
          ? refusal(first, where)
          : new RequestProblem("REQUEST_INVALID", `the ${where} is not valid`);
      }
      return refine ? refine(v) : (v as T);
    },
  };
}

/** A rate or size given as text must parse and stay within what a libvirt number can say. */
function checkUnitText(value: number | string, pointer: string, kind: "rate" | "size"): void {
  if (typeof value === "number") return;
  let base: number;
  try {
    base = kind === "rate" ? parseRate(value) : parseSize(value);
  } catch (e) {
    if (e instanceof UnitError) {
      throw new RequestProblem("REQUEST_INVALID", `${pointer}: ${e.message}; ${e.fix}`, pointer);
    }
    throw e;
  }
  if (kind === "rate") {
    if (!(base <= MAX_RATE_BITS_PER_SEC)) {
      throw new RequestProblem(
        "REQUEST_INVALID",
        `${pointer}: ${JSON.stringify(value)} is above the largest rate libvirt expresses (${LIBVIRT_MAX_VALUE} kB/s, ~34.36 Tbit/s)`,
        pointer,
      );
    }
  } else if (!(base <= LIBVIRT_MAX_VALUE * LIBVIRT_BURST_UNIT_BYTES)) {
    throw new RequestProblem(
      "REQUEST_INVALID",
      `${pointer}: ${JSON.stringify(value)} is above the largest burst libvirt expresses (${LIBVIRT_MAX_VALUE} KiB)`,
      pointer,
    );
  }
}

function checkDirection(r: RateInput, name: "inbound" | "outbound"): void {
  checkUnitText(r.average, `/${name}/average`, "rate");
  if (r.peak !== undefined) checkUnitText(r.peak, `/${name}/peak`, "rate");
  if (r.burst !== undefined) checkUnitText(r.burst, `/${name}/burst`, "size");
  if (r.floor !== undefined) checkUnitText(r.floor, `/${name}/floor`, "rate");
}

export function toLiveChange(b: Static<typeof SetInterfaceBody>): LiveChange {
  if (b.inbound === undefined && b.outbound === undefined) {
    throw new RequestProblem(
      "REQUEST_INVALID",
      "the body must give inbound (the guest's download), outbound (its upload) or both",
    );
  }
  const change: LiveChange = { persist: b.persist ?? DEFAULT_PERSIST };
  if (b.inbound !== undefined) {
    checkDirection(b.inbound, "inbound");
    change.inbound = b.inbound;
  }
  if (b.outbound !== undefined) {
    checkDirection(b.outbound, "outbound");
    change.outbound = b.outbound;
  }
  return change;
}

export function toAuditQuery(q: Static<typeof AuditQuerySchema>): AuditQuery {
  const out: AuditQuery = {};
  if (q.domain !== undefined) out.domain = q.domain;
  if (q.since !== undefined) {
    const ms = Date.parse(q.since);
    if (Number.isNaN(ms)) {
      throw new RequestProblem(
        "REQUEST_INVALID",
        `query parameter "since" is not a valid date: ${q.since}`,
        "/since",
      );
    }
    // One form for the service: its entries are ISO 8601 UTC with milliseconds, comparable as text.
    out.since = new Date(ms).toISOString();
  }
  if (q.limit !== undefined) out.limit = q.limit;
  return out;
}

export const SetInterfacePart = part(SetInterfaceBody, "body", toLiveChange);
export const AuditQueryPart = part(AuditQuerySchema, "query", toAuditQuery);
export const NovaActionPart = part(NovaActionBody, "body");
export const DomainParamsPart = part(DomainParams, "path");
export const InterfaceParamsPart = part(InterfaceParams, "path");
export const NoQueryPart = part(NoQuery, "query");
export const ClearQueryPart = part(ClearQuery, "query", (q) => q.persist ?? DEFAULT_PERSIST);
export const NovaParamsPart = part(NovaParams, "path");
export const NovaServerParamsPart = part(NovaServerParams, "path");
