import assert from "node:assert/strict";
import { test } from "node:test";
import { type TSchema, Type } from "@sinclair/typebox";
import { TypeCompiler } from "@sinclair/typebox/compiler";
import type { InjectOptions } from "fastify";
import { inScope, roleAllows } from "../../src/agent/api/authz.js";
import {
  AuditResponse,
  DomainName,
  DomainsResponse,
  ErrorBodySchema,
  HealthSchema,
  IfaceName,
  InterfaceResponse,
  InterfacesResponse,
  NovaAcceptedResponse,
  NovaFaultSchema,
  PersistSchema,
  SetInterfacePart,
} from "../../src/agent/api/schemas.js";
import { buildApi } from "../../src/agent/api/server.js";
import type { LiveChange, Principal } from "../../src/agent/types.js";
import { ERRORS, isErrorCode, VirtqosError } from "../../src/core/errors.js";
import { FAKE_TOKENS, FAKE_UUIDS, FakeAgentService, fakeAuthenticator } from "../helpers/fake-agent.js";

// 10,000 generated requests, valid and mangled, against the API with the fake service. Whatever comes in:
// no 500, no thrown error, an error body in the catalogue's shape with the code's status, and the service
// only ever sees arguments the schemas accept, from principals allowed to send them, for domains in their
// scope; a change reaches it only when the answer is 2xx or the service itself refused.

const REQUESTS = 10_000;
const SEED = 0x5eed_cafe;

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const rnd = mulberry32(SEED);
const chance = (p: number) => rnd() < p;
const int = (n: number) => Math.floor(rnd() * n);
const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)];

function randomUnicode(len: number): string {
  let s = "";
  for (let i = 0; i < len; i++) {
    const r = rnd();
    if (r < 0.4) s += String.fromCharCode(0x20 + int(0x5f));
    else if (r < 0.55) s += String.fromCharCode(int(0x20));
    else if (r < 0.8) s += String.fromCodePoint(0xa0 + int(0x2000));
    else if (r < 0.9) s += String.fromCodePoint(0x1f300 + int(0x300));
    else s += String.fromCharCode(0xd800 + int(0x800)); // lone surrogates
  }
  return s;
}

function encodeSegment(s: string): string {
  try {
    return encodeURIComponent(s);
  } catch {
    return "%ED%A0%80"; // a lone surrogate cannot be encoded; send its raw (invalid) UTF-8
  }
}

// web-1 can be changed; the others answer 409, 501, 404: weighted so that enough changes succeed.
const DOMAINS = [
  "web-1",
  "web-1",
  "web-1",
  FAKE_UUIDS.web1,
  "db-1",
  "batch-7",
  FAKE_UUIDS.db1,
  FAKE_UUIDS.batch7,
  "nope",
];
const MANGLED_SEGMENTS = [
  "",
  "..",
  ".",
  "%00",
  "web-1%00",
  "%2F",
  "web-1%2F..",
  "%2e%2e",
  "%zz",
  "%",
  "%C2%85",
  "%0A",
  "web-*",
  "web-?",
  "%F0%9F%98%80",
  "\u00fc\u00f1\u00ee",
  "a".repeat(255),
  "a".repeat(256),
  "a".repeat(5000),
  "%41".repeat(300),
  "%E2%82%AC".repeat(100),
];

function segment(valid: readonly string[]): string {
  const r = rnd();
  if (r < 0.75) return encodeSegment(pick(valid));
  if (r < 0.92) return pick(MANGLED_SEGMENTS);
  return encodeSegment(randomUnicode(1 + int(20)));
}

const IFACES = [
  "vnet0",
  "vnet0",
  "vnet1",
  "1",
  "1",
  "2",
  "net0",
  "52:54:00:00:00:01",
  "vnet2",
  "9",
  "0",
  "52:54:00:00:01:01",
];
const SERVER_IDS = [
  FAKE_UUIDS.web1,
  FAKE_UUIDS.web1,
  FAKE_UUIDS.web1,
  FAKE_UUIDS.db1,
  FAKE_UUIDS.batch7,
  FAKE_UUIDS.web1.toUpperCase(),
  "99999999-9999-4999-8999-999999999999",
  "not-a-uuid",
  `${FAKE_UUIDS.web1}0`,
  FAKE_UUIDS.web1.replace(/-/g, ""),
];

function query(): string {
  const parts = [
    `persist=${pick(["live", "config", "both", "forever", "", "LIVE"])}`,
    `limit=${pick(["1", "10", "10000", "10001", "0", "-1", "1e3", "1.5", "abc", "99999999999999999999", ""])}`,
    `since=${pick(["2025-01-01", "2025-01-01T00:00:00Z", "2025-13-45", "yesterday", "2025-01-01T00:00:00", "%00"])}`,
    `domain=${encodeSegment(pick(DOMAINS))}`,
    "persist[]=live",
    "__proto__=x",
    "constructor=1",
    `x=${encodeSegment(randomUnicode(5))}`,
    "%zz=1",
    "a".repeat(3000),
  ];
  const n = 1 + int(3);
  const chosen = Array.from({ length: n }, () => pick(parts));
  return `?${chosen.join("&")}`;
}

type Method = "GET" | "PATCH" | "DELETE" | "POST";
type Kind = "read" | "patch" | "delete" | "nova";

/** A path and the method and body that would make sense for it; the caller mangles any of the three. */
function target(): { url: string; method: Method; kind: Kind } {
  const d = () => segment(DOMAINS);
  const i = () => segment(IFACES);
  const s = () => (chance(0.8) ? encodeSegment(pick(SERVER_IDS)) : segment(SERVER_IDS));
  const templates: (() => { url: string; method: Method; kind: Kind })[] = [
    () => ({ url: "/v1/health", method: "GET", kind: "read" }),
    () => ({ url: "/v1/domains", method: "GET", kind: "read" }),
    () => ({ url: `/v1/domains/${d()}/interfaces`, method: "GET", kind: "read" }),
    () => ({ url: `/v1/domains/${d()}/interfaces/${i()}`, method: "PATCH", kind: "patch" }),
    () => ({ url: `/v1/domains/${d()}/interfaces/${i()}`, method: "PATCH", kind: "patch" }),
    () => ({ url: `/v1/domains/${d()}/interfaces/${i()}`, method: "DELETE", kind: "delete" }),
    () => ({ url: "/v1/audit", method: "GET", kind: "read" }),
    () => ({ url: "/v1/openapi.json", method: "GET", kind: "read" }),
    () => ({
      url: `/v2.1/${segment(["proj-1", "0123456789abcdef0123456789abcdef"])}/servers/${s()}/action`,
      method: "POST",
      kind: "nova",
    }),
    () => ({ url: `/v2.1/servers/${s()}/action`, method: "POST", kind: "nova" }),
    () => ({ url: `/v2.1/servers/${s()}/action`, method: "POST", kind: "nova" }),
  ];
  const t = pick(templates)();
  let p = t.url;
  const r = rnd();
  if (r < 0.03) p = p.replace("/v1/", "/v1//");
  else if (r < 0.06) p += "/";
  else if (r < 0.08) p = p.replace("/interfaces", "/../interfaces");
  else if (r < 0.09) p = p.toUpperCase();
  else if (r < 0.1) p = `/${encodeSegment(randomUnicode(10))}`;
  else if (r < 0.11) p = `/v1/${"x/".repeat(2000)}`;
  else if (r < 0.115) p = "/";
  const method = chance(0.8) ? t.method : pick(["GET", "PATCH", "DELETE", "POST"] as const);
  const withQuery = chance(t.kind === "read" || t.kind === "delete" ? 0.5 : 0.1);
  return { url: p + (withQuery ? query() : ""), method, kind: t.kind };
}

const RATE_VALUES: unknown[] = [
  0,
  1,
  1250,
  4_294_967_295,
  4_294_967_296,
  -1,
  1.5,
  -0,
  1e300,
  Number.MAX_SAFE_INTEGER,
  "20mbit",
  "2.5MB/s",
  "512KiB/s",
  "0mbit",
  "20",
  "20mbps",
  "NaN",
  "Infinity",
  "1e999",
  "-5mbit",
  "",
  " 20 mbit ",
  "100bit",
  "x".repeat(33),
  "99999tbit",
  "64KiB",
  "1.5MB",
  "\u0000",
  null,
  true,
  [],
  {},
  [1],
  { average: 1 },
];

function junk(depth: number): unknown {
  const r = rnd();
  if (depth > 4 || r < 0.3) return pick(RATE_VALUES);
  if (r < 0.45) return randomUnicode(int(30));
  if (r < 0.6) return Array.from({ length: int(4) }, () => junk(depth + 1));
  const o: Record<string, unknown> = {};
  const keys = [
    "inbound",
    "outbound",
    "persist",
    "average",
    "peak",
    "burst",
    "floor",
    "setInterface",
    "interface",
    "rate",
  ];
  for (let k = int(5); k > 0; k--) o[chance(0.8) ? pick(keys) : randomUnicode(1 + int(8))] = junk(depth + 1);
  return o;
}

const VALID_RATES = [0, 1, 1250, 4_294_967_295, "20mbit", "2.5MB/s", "512KiB/s", "0mbit", " 20 mbit "];

function rateInput(): Record<string, unknown> {
  const o: Record<string, unknown> = { average: chance(0.7) ? pick(VALID_RATES) : pick(RATE_VALUES) };
  if (chance(0.3)) o.peak = chance(0.5) ? pick(VALID_RATES) : pick(RATE_VALUES);
  if (chance(0.3)) o.burst = pick(["64KiB", "1.5MB", 256, 0, "20mbit", -3]);
  if (chance(0.2)) o.floor = chance(0.5) ? pick(VALID_RATES) : pick(RATE_VALUES);
  if (chance(0.05)) o[randomUnicode(3)] = 1;
  return o;
}

function patchBody(): Record<string, unknown> {
  const b: Record<string, unknown> = {};
  if (chance(0.7)) b.inbound = rateInput();
  if (chance(0.5)) b.outbound = rateInput();
  if (chance(0.4)) b.persist = pick(["live", "config", "both", "never", 1]);
  return b;
}

function novaBody(): unknown {
  if (chance(0.5))
    return { setInterface: { interface: pick([1, 2]), rate: pick([0, 1, 1250, 4_294_967_295]) } };
  if (chance(0.6)) {
    return {
      setInterface: {
        interface: pick([1, 2, 3, 0, -1, 1.5, "1", 65_536]),
        rate: pick([0, 1, 1250, -1, 1.5, "1", 4_294_967_296, 1e300]),
      },
    };
  }
  return { setInterface: junk(1) };
}

type Body = { payload?: string | Buffer; contentType?: string };

function body(kind: Kind): Body {
  const r = rnd();
  // Most requests carry the body their route expects, so that some get through; the rest is anything.
  if (kind === "patch" && r < 0.7)
    return { payload: JSON.stringify(patchBody()), contentType: "application/json" };
  if (kind === "nova" && r < 0.7)
    return { payload: JSON.stringify(novaBody()), contentType: "application/json" };
  const ct = () =>
    pick([
      "application/json",
      "application/json",
      "application/json",
      "application/json; charset=utf-8",
      "text/plain",
      "application/x-www-form-urlencoded",
      "multipart/form-data; boundary=x",
      "application/jsonx",
      "",
    ]);
  if (r < 0.12) return {};
  if (r < 0.42) return { payload: JSON.stringify(patchBody()), contentType: ct() };
  if (r < 0.57) return { payload: JSON.stringify(novaBody()), contentType: ct() };
  if (r < 0.72) return { payload: JSON.stringify(junk(0)) ?? "null", contentType: ct() };
  if (r < 0.76)
    return { payload: Buffer.from(Array.from({ length: int(200) }, () => int(256))), contentType: ct() };
  if (r < 0.79) {
    const n = 1 + int(20_000);
    return { payload: `${"[".repeat(n)}${"]".repeat(n)}`, contentType: "application/json" };
  }
  if (r < 0.82) {
    const n = 1 + int(5000);
    return { payload: `${'{"inbound":'.repeat(n)}1${"}".repeat(n)}`, contentType: "application/json" };
  }
  if (r < 0.86) {
    return {
      payload: pick([
        '{"inbound":{"average":1},"inbound":{"average":"x"}}',
        '{"inbound":{"average":"x"},"inbound":{"average":1}}',
        '{"inbound":{"average":1e999}}',
        '{"inbound":{"average":NaN}}',
        '{"inbound":{"average":-0}}',
        '{"setInterface":{"interface":1,"rate":1},"setInterface":{"interface":1,"rate":-1}}',
        '{"__proto__":{"average":1},"inbound":{"average":1}}',
        '{"inbound":{"constructor":{"prototype":{"average":1}}}}',
        '{"inbound":{"average":1}',
        "",
        " ",
        "\u0000",
      ]),
      contentType: "application/json",
    };
  }
  if (r < 0.87) {
    return {
      payload: JSON.stringify({ inbound: { average: 1 }, pad: "x".repeat(70_000) }),
      contentType: "application/json",
    };
  }
  return { payload: randomUnicode(int(100)), contentType: ct() };
}

function headers(): Record<string, string> {
  const h: Record<string, string> = {};
  const writers = Object.keys(FAKE_TOKENS).filter((k) => roleAllows(FAKE_TOKENS[k].role, "write"));
  const token = chance(0.6) ? pick(writers) : pick([...Object.keys(FAKE_TOKENS), "bad", "", "tok-admin "]);
  const r = rnd();
  if (r < 0.6) h.authorization = `Bearer ${token}`;
  else if (r < 0.92) h["x-auth-token"] = token;
  else if (r < 0.95) h.authorization = `Basic ${token}`;
  return h;
}

// ---- What the service may receive ----

const check = (schema: TSchema) => {
  const c = TypeCompiler.Compile(schema);
  return (v: unknown) => c.Check(v);
};
const validDomain = check(DomainName);
const validIface = check(IfaceName);
const validPersist = check(PersistSchema);
const validAuditQuery = check(
  Type.Object(
    {
      domain: Type.Optional(DomainName),
      since: Type.Optional(Type.String({ pattern: "^\\d{4}-\\d{2}-\\d{2}T\\d{2}:\\d{2}:\\d{2}\\.\\d{3}Z$" })),
      limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 10_000 })),
    },
    { additionalProperties: false },
  ),
);

const SUCCESS_SCHEMAS: [string, (v: unknown) => boolean][] = [
  ["interface", check(InterfaceResponse)],
  ["interfaces", check(InterfacesResponse)],
  ["domains", check(DomainsResponse)],
  ["entries", check(AuditResponse)],
  ["libvirt", check(HealthSchema)],
  ["interfaceParameters", check(NovaAcceptedResponse)],
];
const validError = check(ErrorBodySchema);
const validFault = check(NovaFaultSchema);

test(`fuzz: ${REQUESTS} generated requests`, async (t) => {
  const service = new FakeAgentService();
  const loggedErrors: string[] = [];
  const app = buildApi({
    service,
    auth: fakeAuthenticator(),
    log: { warning: () => {}, error: (m) => loggedErrors.push(m) },
  });
  await app.ready();
  const statuses = new Map<number, number>();
  const started = Date.now();

  for (let n = 0; n < REQUESTS; n++) {
    const { url, method, kind } = target();
    const b = body(kind);
    const h = headers();
    if (b.contentType) h["content-type"] = b.contentType;
    if (chance(0.02)) {
      service.failNext(
        pick(["setInterface", "clearInterface", "findDomain", "listDomains", "getInterfaces"] as const),
        new VirtqosError(
          pick(["GROUP_ADMISSION", "LIBVIRT_UNAVAILABLE", "LOCK_TIMEOUT"] as const),
          "injected",
        ),
      );
    }
    const what = `#${n} ${method} ${url.slice(0, 120)} ${JSON.stringify(h)} body=${String(b.payload ?? "").slice(0, 120)}`;
    const before = service.calls.length;
    let res: Awaited<ReturnType<typeof app.inject>>;
    try {
      res = await app.inject({
        method,
        url,
        headers: h,
        ...(b.payload !== undefined ? { payload: b.payload } : {}),
      } as InjectOptions);
    } catch (e) {
      assert.fail(`${what}: inject threw ${String(e)}`);
    }
    assert.deepEqual(loggedErrors, [], `${what}: logged an error`);
    const status = res.statusCode;
    statuses.set(status, (statuses.get(status) ?? 0) + 1);
    assert.notEqual(status, 500, `${what}: ${res.body}`);
    assert.ok([200, 202, 400, 401, 403, 404, 409, 413, 422, 503, 501].includes(status), `${what}: ${status}`);

    let json: Record<string, unknown>;
    try {
      json = JSON.parse(res.body);
    } catch {
      assert.fail(`${what}: not JSON: ${res.body.slice(0, 200)}`);
    }
    // inject() resolves dot segments as a URL parser does (a raw HTTP request keeps them); the app sees that.
    const nova = new URL(url, "http://agent").pathname.startsWith("/v2.1/");
    let answeredCode: string | undefined;
    if (status >= 400) {
      if (nova) {
        assert.ok(validFault(json), `${what}: not a Nova fault: ${res.body.slice(0, 300)}`);
        const fault = Object.values(json)[0] as { code: number; virtqos: { code: string } };
        assert.equal(fault.code, status);
        answeredCode = fault.virtqos.code;
      } else {
        assert.ok(validError(json), `${what}: not an error body: ${res.body.slice(0, 300)}`);
        answeredCode = (json.error as { code: string }).code;
      }
      assert.ok(isErrorCode(answeredCode), what);
      assert.equal(ERRORS[answeredCode].httpStatus, status, `${what}: ${answeredCode}`);
      if (status === 401) assert.match(String(res.headers["www-authenticate"]), /^Bearer/, what);
    } else if (!json.openapi) {
      const match = SUCCESS_SCHEMAS.find(([key]) => Object.hasOwn(json, key));
      assert.ok(match, `${what}: an unknown answer ${res.body.slice(0, 200)}`);
      assert.ok(match[1](json), `${what}: the answer does not match its schema: ${res.body.slice(0, 300)}`);
    }

    for (const c of service.calls.slice(before)) {
      const where = `${what}: service.${c.method}(${JSON.stringify(c.args).slice(0, 300)})`;
      const mutation = c.method === "setInterface" || c.method === "clearInterface";
      if (c.method === "findDomain" || c.method === "getInterfaces" || mutation) {
        assert.ok(validDomain(c.args[0]), `${where}: domain`);
      }
      if (c.method === "audit") assert.ok(validAuditQuery(c.args[0]), `${where}: query`);
      if (!mutation) continue;
      const [domain, iface, changeOrPersist, who] = c.args as [
        string,
        string,
        LiveChange | string,
        Principal,
      ];
      assert.ok(validIface(iface), `${where}: iface`);
      if (c.method === "setInterface") {
        // The door is the API's to set, never the body's: it must name the route the change came through.
        const { door, ...fromBody } = changeOrPersist as LiveChange;
        assert.equal(door, nova ? "nova" : "api", where);
        let reparsed: LiveChange | undefined;
        assert.doesNotThrow(() => {
          reparsed = SetInterfacePart.parse(fromBody);
        }, `${where}: change`);
        assert.deepEqual(reparsed, fromBody, where);
        if (nova) assert.match(iface, /^[1-9][0-9]*$/, where);
      } else {
        assert.ok(validPersist(changeOrPersist), `${where}: persist`);
      }
      assert.ok(roleAllows(who.role, "write"), `${where}: a ${who.role} got through`);
      if (who.domains !== undefined) {
        const d = service.lookup(domain);
        assert.ok(d && inScope(who, d.name), `${where}: outside ${who.name}'s scope`);
      }
      if (status >= 300) {
        // The service refused it itself; the API only passed the answer on.
        assert.ok(c.threw !== undefined, `${where}: reached the service but answered ${status}`);
        const expected = c.threw === "DOMAIN_NOT_FOUND" && who.domains !== undefined ? "FORBIDDEN" : c.threw;
        assert.equal(answeredCode, expected, where);
      } else {
        assert.equal(c.threw, undefined, where);
      }
    }
  }

  const took = Date.now() - started;
  const reached = service.calls.filter((c) => c.method === "setInterface" || c.method === "clearInterface");
  t.diagnostic(
    `${took} ms; statuses ${JSON.stringify([...statuses].sort(([a], [b]) => a - b))}; ` +
      `changes reaching the service ${reached.length} (${reached.filter((c) => c.threw).length} refused by it)`,
  );
  // Coverage of the outcomes, so a generator that drifts into "everything is a 404" is noticed.
  for (const s of [200, 202, 400, 401, 403, 404, 409, 413, 501]) {
    assert.ok((statuses.get(s) ?? 0) > 0, `no request answered ${s}: ${JSON.stringify([...statuses])}`);
  }
  assert.ok(took < 60_000, `took ${took} ms`);
  await app.close();
});
