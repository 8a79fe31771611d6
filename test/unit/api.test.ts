import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { TSchema } from "@sinclair/typebox";
import { TypeCompiler } from "@sinclair/typebox/compiler";
import type { FastifyInstance, InjectOptions } from "fastify";
import { inScope, roleAllows } from "../../src/agent/api/authz.js";
import { interfaceParameters } from "../../src/agent/api/nova.js";
import { openApiPath } from "../../src/agent/api/openapi.js";
import {
  AuditResponse,
  DomainsResponse,
  ErrorBodySchema,
  HealthSchema,
  InterfaceResponse,
  InterfacesResponse,
  NovaAcceptedResponse,
  NovaFaultSchema,
} from "../../src/agent/api/schemas.js";
import { apiRoutes, buildApi, registeredRoutes } from "../../src/agent/api/server.js";
import { globMatch } from "../../src/agent/auth.js";
import type { Action, InterfaceView, LiveChange, Principal, Role } from "../../src/agent/types.js";
import { ERRORS, isErrorCode, VirtqosError } from "../../src/core/errors.js";
import { FAKE_UUIDS, FakeAgentService, fakeAuthenticator } from "../helpers/fake-agent.js";

// biome-ignore lint/suspicious/noExplicitAny: answers are JSON, probed field by field (after a schema check)
type Json = any;

// The API through fastify's inject(): every route's success, every refusal's status and body, Nova's action,
// and the OpenAPI document against what is really registered. The service is the in-memory fake.

interface Setup {
  app: FastifyInstance;
  service: FakeAgentService;
  logged: { warning: string[]; error: string[] };
}

function setup(opts: { bodyLimitBytes?: number } = {}): Setup {
  const service = new FakeAgentService();
  const logged = { warning: [] as string[], error: [] as string[] };
  const app = buildApi({
    service,
    auth: fakeAuthenticator(),
    log: { warning: (m) => logged.warning.push(m), error: (m) => logged.error.push(m) },
    ...opts,
  });
  return { app, service, logged };
}

interface Answer {
  status: number;
  body: unknown;
  json: Record<string, Json>;
  headers: Record<string, unknown>;
}

async function call(
  app: FastifyInstance,
  method: InjectOptions["method"],
  url: string,
  opts: { token?: string; xAuthToken?: string; body?: unknown; headers?: Record<string, string> } = {},
): Promise<Answer> {
  const headers: Record<string, string> = { ...opts.headers };
  if (opts.token !== undefined) headers.authorization = `Bearer ${opts.token}`;
  if (opts.xAuthToken !== undefined) headers["x-auth-token"] = opts.xAuthToken;
  const r = await app.inject({
    method,
    url,
    headers,
    ...(opts.body !== undefined ? { payload: opts.body as InjectOptions["payload"] } : {}),
  });
  let json: Record<string, Json> = {};
  try {
    json = JSON.parse(r.body);
  } catch {
    assert.fail(`${method} ${url}: the answer is not JSON: ${r.body.slice(0, 200)}`);
  }
  return { status: r.statusCode, body: json, json, headers: r.headers };
}

function conforms(schema: TSchema, value: unknown, what: string): void {
  const c = TypeCompiler.Compile(schema);
  if (!c.Check(value)) {
    const e = c.Errors(value).First();
    assert.fail(`${what} does not match its schema: ${e?.path} ${e?.message}: ${JSON.stringify(value)}`);
  }
}

/** An error answer in our shape with the catalogue's status and fix. */
function assertError(a: Answer, code: keyof typeof ERRORS, field?: string): void {
  assert.equal(a.status, ERRORS[code].httpStatus, JSON.stringify(a.json));
  conforms(ErrorBodySchema, a.json, "error body");
  assert.equal(a.json.error.code, code, JSON.stringify(a.json));
  assert.equal(a.json.error.fix, ERRORS[code].fix);
  assert.equal(typeof a.json.error.message, "string");
  if (field !== undefined) assert.equal(a.json.error.field, field, JSON.stringify(a.json));
}

/** A Nova fault: one key named by the status, virtqos's code inside. */
function assertFault(a: Answer, name: string, code: keyof typeof ERRORS, field?: string): void {
  assert.equal(a.status, ERRORS[code].httpStatus, JSON.stringify(a.json));
  conforms(NovaFaultSchema, a.json, "Nova fault");
  assert.deepEqual(Object.keys(a.json), [name], JSON.stringify(a.json));
  const f = a.json[name];
  assert.equal(f.code, a.status);
  assert.equal(typeof f.message, "string");
  assert.equal(f.virtqos.code, code);
  assert.equal(f.virtqos.fix, ERRORS[code].fix);
  if (field !== undefined) assert.equal(f.virtqos.field, field);
}

const mutations = (s: FakeAgentService) =>
  s.calls.filter((c) => c.method === "setInterface" || c.method === "clearInterface");

const IFACE = "/v1/domains/web-1/interfaces/vnet0";
const NOVA = `/v2.1/proj-1/servers/${FAKE_UUIDS.web1}/action`;
const NOVA_SHORT = `/v2.1/servers/${FAKE_UUIDS.web1}/action`;

describe("authorization rules", () => {
  test("roles: reader reads, operator reads and writes, admin does everything", () => {
    const table: [Role, Action, boolean][] = [
      ["reader", "read", true],
      ["reader", "write", false],
      ["reader", "admin", false],
      ["operator", "read", true],
      ["operator", "write", true],
      ["operator", "admin", false],
      ["admin", "read", true],
      ["admin", "write", true],
      ["admin", "admin", true],
    ];
    for (const [role, action, allowed] of table)
      assert.equal(roleAllows(role, action), allowed, `${role} ${action}`);
    assert.equal(roleAllows("root" as Role, "read"), false, "an unknown role grants nothing");
  });

  test("scope globs match the whole name, * and ? only, everything else literally", () => {
    const m = (glob: string, name: string) => globMatch(glob, name);
    assert.ok(m("web-*", "web-1"));
    assert.ok(m("web-*", "web-"));
    assert.ok(!m("web-*", "xweb-1"), "anchored at the start");
    assert.ok(!m("web", "web-1"), "anchored at the end");
    assert.ok(m("db?", "db1"));
    assert.ok(!m("db?", "db12"));
    assert.ok(m("d?", "dé"), "? is one character, not one byte");
    assert.ok(!m("a.b", "axb"), ". is literal");
    assert.ok(m("a.b", "a.b"));
    assert.ok(m("(x)+[y]{2}|^$\\/", "(x)+[y]{2}|^$\\/"), "regex metacharacters are literal");
    assert.ok(!m("(x)+", "xx"));
    assert.ok(m("*", ""));
    assert.ok(m("*", "any\nthing"), "* crosses newlines too");
    const p: Principal = { name: "t", role: "operator", domains: ["web-*", "db-1"], via: "token" };
    assert.ok(inScope(p, "db-1"));
    assert.ok(!inScope(p, "db-10"));
    assert.ok(inScope({ ...p, domains: undefined }, "anything"));
    assert.ok(!inScope({ ...p, domains: [] }, "web-1"), "an empty scope allows nothing");
  });
});

describe("v1 routes: success", () => {
  test("GET /v1/health", async () => {
    const { app, service } = setup();
    const a = await call(app, "GET", "/v1/health", { token: "tok-reader" });
    assert.equal(a.status, 200);
    conforms(HealthSchema, a.json, "health");
    assert.equal(a.json.libvirt.connected, true);
    assert.deepEqual(
      service.calls.map((c) => c.method),
      ["health"],
    );
  });

  test("GET /v1/domains: all for an unscoped token, the scope's for a scoped one", async () => {
    const { app } = setup();
    const all = await call(app, "GET", "/v1/domains", { token: "tok-reader" });
    assert.equal(all.status, 200);
    conforms(DomainsResponse, all.json, "domains");
    assert.deepEqual(
      all.json.domains.map((d: { name: string }) => d.name),
      ["web-1", "db-1", "batch-7"],
    );
    const scoped = await call(app, "GET", "/v1/domains", { token: "tok-scoped" });
    assert.deepEqual(
      scoped.json.domains.map((d: { name: string }) => d.name),
      ["web-1"],
    );
  });

  test("GET /v1/domains/:domain/interfaces, by name and by UUID", async () => {
    const { app } = setup();
    for (const d of ["web-1", FAKE_UUIDS.web1, FAKE_UUIDS.web1.toUpperCase()]) {
      const a = await call(app, "GET", `/v1/domains/${d}/interfaces`, { token: "tok-reader" });
      assert.equal(a.status, 200, JSON.stringify(a.json));
      conforms(InterfacesResponse, a.json, "interfaces");
      assert.equal(a.json.domain.name, "web-1");
      assert.deepEqual(
        a.json.interfaces.map((i: InterfaceView) => i.dev),
        ["vnet0", "vnet1"],
      );
    }
  });

  test("PATCH: numbers and unit strings, persist defaults to live, the service gets the principal", async () => {
    const { app, service } = setup();
    const a = await call(app, "PATCH", IFACE, {
      token: "tok-operator",
      body: {
        inbound: { average: 1250, peak: "20mbit", burst: "256KiB", floor: 125 },
        outbound: { average: "1MB/s" },
      },
    });
    assert.equal(a.status, 200, JSON.stringify(a.json));
    conforms(InterfaceResponse, a.json, "interface");
    assert.equal(a.json.interface.inbound.inForce.rateBitsPerSec, 10_000_000);
    assert.equal(a.json.interface.inbound.inForce.ceilBitsPerSec, 20_000_000);
    assert.equal(a.json.interface.inbound.inForce.burstBytes, 262_144);
    assert.equal(a.json.interface.outbound.inForce.rateBitsPerSec, 8_000_000);
    const [m] = mutations(service);
    assert.equal(m.method, "setInterface");
    const [domain, iface, change, who] = m.args as [string, string, LiveChange, Principal];
    assert.equal(domain, "web-1", "an unscoped token's domain goes to the service as given");
    assert.equal(iface, "vnet0");
    assert.deepEqual(change, {
      persist: "live",
      door: "api",
      inbound: { average: 1250, peak: "20mbit", burst: "256KiB", floor: 125 },
      outbound: { average: "1MB/s" },
    });
    assert.equal(who.name, "operator");
  });

  test("PATCH: persist config on a domain that is shut off; one direction only; admin may write", async () => {
    const { app, service } = setup();
    const a = await call(app, "PATCH", "/v1/domains/batch-7/interfaces/1", {
      token: "tok-admin",
      body: { outbound: { average: 0 }, persist: "config" },
    });
    assert.equal(a.status, 200, JSON.stringify(a.json));
    assert.deepEqual((mutations(service)[0].args[2] as LiveChange).persist, "config");
  });

  test("PATCH by a scoped token: the service gets the UUID of the domain whose name was checked", async () => {
    const { app, service } = setup();
    const a = await call(app, "PATCH", IFACE, { token: "tok-scoped", body: { inbound: { average: 100 } } });
    assert.equal(a.status, 200, JSON.stringify(a.json));
    assert.equal(mutations(service)[0].args[0], FAKE_UUIDS.web1);
  });

  test("DELETE: persist live by default, or as asked", async () => {
    const { app, service } = setup();
    let a = await call(app, "DELETE", IFACE, { token: "tok-operator" });
    assert.equal(a.status, 200, JSON.stringify(a.json));
    conforms(InterfaceResponse, a.json, "interface");
    assert.equal(a.json.interface.inbound.inForce.source, "policy", "the configured limit applies again");
    a = await call(app, "DELETE", `${IFACE}?persist=both`, { token: "tok-operator" });
    assert.equal(a.status, 200);
    assert.deepEqual(
      mutations(service).map((c) => c.args[2]),
      ["live", "both"],
    );
  });

  test("GET /v1/audit: the query reaches the service typed and normalised", async () => {
    const { app, service } = setup();
    const a = await call(app, "GET", "/v1/audit?domain=web-1&since=2024-12-31T23:00:00-01:00&limit=5", {
      token: "tok-admin",
    });
    assert.equal(a.status, 200, JSON.stringify(a.json));
    conforms(AuditResponse, a.json, "audit");
    assert.deepEqual(service.calls.at(-1)?.args[0], {
      domain: "web-1",
      since: "2025-01-01T00:00:00.000Z",
      limit: 5,
    });
    assert.equal(a.json.entries.length, 1);
    const none = await call(app, "GET", "/v1/audit", { token: "tok-admin" });
    assert.equal(none.json.entries.length, 3);
    assert.deepEqual(service.calls.at(-1)?.args[0], {});
  });

  test("GET /v1/audit by a scoped admin: only the scope's entries", async () => {
    const { app } = setup();
    const a = await call(app, "GET", "/v1/audit", { token: "tok-scoped-admin" });
    assert.equal(a.status, 200);
    assert.deepEqual(
      a.json.entries.map((e: { domainName?: string }) => e.domainName),
      ["web-1"],
    );
  });
});

describe("v1 routes: refusals", () => {
  test("400 body: each wrong value names its field", async () => {
    const { app, service } = setup();
    const cases: [unknown, string | undefined][] = [
      [{ inbound: { average: 1.5 } }, "/inbound/average"],
      [{ inbound: { average: -1 } }, "/inbound/average"],
      [{ inbound: { average: 4_294_967_296 } }, "/inbound/average"],
      [{ inbound: { average: true } }, "/inbound/average"],
      [{ inbound: { average: null } }, "/inbound/average"],
      [{ inbound: { average: "20" } }, "/inbound/average"],
      [{ inbound: { average: "20mbps" } }, "/inbound/average"],
      [{ inbound: { average: "NaN" } }, "/inbound/average"],
      [{ inbound: { average: "1e999" } }, "/inbound/average"],
      [{ inbound: { average: "Infinitymbit" } }, "/inbound/average"],
      [{ inbound: { average: "99999tbit" } }, "/inbound/average"],
      [{ inbound: { average: "x".repeat(33) } }, "/inbound/average"],
      [{ inbound: { average: 1, peak: "fast" } }, "/inbound/peak"],
      [{ outbound: { average: 1, burst: "64kbit" } }, "/outbound/burst"],
      [{ outbound: { average: 1, burst: "5000000GiB" } }, "/outbound/burst"],
      [{ outbound: { average: 1, burst: 1.5 } }, "/outbound/burst"],
      [{ outbound: { average: 1, floor: -5 } }, "/outbound/floor"],
      [{ inbound: {} }, "/inbound/average"],
      [{ inbound: { average: 1, ceil: 2 } }, "/inbound/ceil"],
      [{ inbound: { average: 1 }, sideways: {} }, "/sideways"],
      [{ inbound: { average: 1 }, door: "nova" }, "/door"],
      [{ inbound: { average: 1 }, persist: "forever" }, "/persist"],
      [{ inbound: [1] }, "/inbound"],
      [{ persist: "live" }, undefined],
      [{}, undefined],
    ];
    for (const [body, field] of cases) {
      const a = await call(app, "PATCH", IFACE, { token: "tok-operator", body });
      assertError(a, "REQUEST_INVALID", field);
      if (field === undefined) assert.equal(a.json.error.field, undefined, JSON.stringify(a.json));
    }
    // 1e999 as a JSON number is Infinity once parsed: not an integer.
    const inf = await call(app, "PATCH", IFACE, {
      token: "tok-operator",
      body: '{"inbound":{"average":1e999}}',
      headers: { "content-type": "application/json" },
    });
    assertError(inf, "REQUEST_INVALID", "/inbound/average");
    assert.deepEqual(mutations(service), []);
  });

  test("400 body: the unit parser's reason and fix are in the message", async () => {
    const { app } = setup();
    const a = await call(app, "PATCH", IFACE, {
      token: "tok-operator",
      body: { inbound: { average: "20" } },
    });
    assert.match(a.json.error.message, /^\/inbound\/average: "20" has no unit; write "20mbit"/);
    const b = await call(app, "PATCH", IFACE, {
      token: "tok-operator",
      body: { inbound: { average: "20kbps" } },
    });
    assert.match(b.json.error.message, /ambiguous/);
  });

  test("400 body: malformed JSON, wrong content type, empty, missing, null, an array, poisoned", async () => {
    const { app, service } = setup();
    const json = { "content-type": "application/json" };
    const cases: { body?: string; headers?: Record<string, string> }[] = [
      { body: "{", headers: json },
      { body: "", headers: json },
      { body: "null", headers: json },
      { body: "[]", headers: json },
      { body: '"inbound"', headers: json },
      { body: "42", headers: json },
      { body: '{"inbound":{"average":1}}', headers: { "content-type": "text/plain" } },
      { body: '{"inbound":{"average":1}}', headers: { "content-type": "application/x-www-form-urlencoded" } },
      { body: '{"__proto__":{"inbound":{"average":1}}}', headers: json },
      { body: '{"constructor":{"prototype":{"x":1}},"inbound":{"average":1}}', headers: json },
      {},
    ];
    for (const c of cases) {
      const a = await call(app, "PATCH", IFACE, { token: "tok-operator", ...c });
      assertError(a, "REQUEST_INVALID");
    }
    assert.deepEqual(mutations(service), []);
  });

  test("400 path parameters and query", async () => {
    const { app, service } = setup();
    const cases: [string, string, string][] = [
      ["GET", "/v1/domains/web%01x/interfaces", "/domain"],
      ["GET", "/v1/domains/web%00/interfaces", "/domain"],
      ["GET", "/v1/domains/web%C2%85/interfaces", "/domain"],
      ["GET", `/v1/domains/${"d".repeat(256)}/interfaces`, "/domain"],
      ["PATCH", `/v1/domains/web-1/interfaces/${"i".repeat(65)}`, "/iface"],
      ["DELETE", "/v1/domains/web-1/interfaces/vnet0?persist=forever", "/persist"],
      ["DELETE", "/v1/domains/web-1/interfaces/vnet0?persist=live&persist=both", "/persist"],
      ["GET", "/v1/domains?x=1", "/x"],
      ["GET", "/v1/health?verbose", "/verbose"],
      ["GET", "/v1/audit?limit=0", "/limit"],
      ["GET", "/v1/audit?limit=10001", "/limit"],
      ["GET", "/v1/audit?limit=abc", "/limit"],
      ["GET", "/v1/audit?limit=-1", "/limit"],
      ["GET", "/v1/audit?limit=1.5", "/limit"],
      ["GET", "/v1/audit?since=yesterday", "/since"],
      ["GET", "/v1/audit?since=2025-13-45", "/since"],
      ["GET", "/v1/audit?since=2025-01-01T10:00:00", "/since"],
    ];
    for (const [method, url, field] of cases) {
      const a = await call(app, method as InjectOptions["method"], url, {
        token: "tok-admin",
        ...(method === "PATCH" ? { body: { inbound: { average: 1 } } } : {}),
      });
      assertError(a, "REQUEST_INVALID", field);
    }
    // A malformed %-escape never reaches a route.
    assertError(
      await call(app, "GET", "/v1/domains/%zz/interfaces", { token: "tok-admin" }),
      "REQUEST_INVALID",
    );
    assert.deepEqual(mutations(service), []);
  });

  test("401: no token, an unknown token, a malformed header; WWW-Authenticate says Bearer", async () => {
    const { app, service } = setup();
    const cases: Parameters<typeof call>[3][] = [
      {},
      { token: "nope" },
      { headers: { authorization: "Basic dG9rLWFkbWluOg==" } },
      { headers: { authorization: "Bearer" } },
      { xAuthToken: "nope" },
    ];
    for (const c of cases) {
      for (const [method, url] of [
        ["GET", "/v1/health"],
        ["GET", "/v1/domains"],
        ["PATCH", IFACE],
        ["DELETE", IFACE],
        ["GET", "/v1/audit"],
      ] as const) {
        const a = await call(app, method, url, { ...c, ...(method === "PATCH" ? { body: "{" } : {}) });
        assertError(a, "AUTH_REQUIRED");
        assert.match(String(a.headers["www-authenticate"]), /^Bearer/);
      }
    }
    assert.deepEqual(service.calls, [], "nothing reaches the service, not even a malformed body's parse");
  });

  test("X-Auth-Token works on the v1 routes too", async () => {
    const { app } = setup();
    const a = await call(app, "GET", "/v1/health", { xAuthToken: "tok-reader" });
    assert.equal(a.status, 200);
  });

  test("403 by role: reader cannot write, operator cannot read the audit log", async () => {
    const { app, service } = setup();
    assertError(
      await call(app, "PATCH", IFACE, { token: "tok-reader", body: { inbound: { average: 1 } } }),
      "FORBIDDEN",
    );
    assertError(await call(app, "DELETE", IFACE, { token: "tok-reader" }), "FORBIDDEN");
    assertError(await call(app, "GET", "/v1/audit", { token: "tok-operator" }), "FORBIDDEN");
    assertError(await call(app, "GET", "/v1/audit", { token: "tok-scoped" }), "FORBIDDEN");
    assert.deepEqual(service.calls, []);
  });

  test("403 by scope, identical for a domain outside the scope and one that does not exist", async () => {
    const { app, service } = setup();
    const body = { inbound: { average: 1 } };
    const outside = await call(app, "PATCH", "/v1/domains/db-1/interfaces/vnet2", {
      token: "tok-scoped",
      body,
    });
    const missing = await call(app, "PATCH", "/v1/domains/web-404/interfaces/vnet2", {
      token: "tok-scoped",
      body,
    });
    assertError(outside, "FORBIDDEN");
    assertError(missing, "FORBIDDEN");
    assert.equal(
      outside.json.error.message.replace("db-1", "X"),
      missing.json.error.message.replace("web-404", "X"),
      "the words do not tell the two apart",
    );
    for (const [method, url] of [
      ["GET", "/v1/domains/db-1/interfaces"],
      ["GET", "/v1/domains/nope/interfaces"],
      ["DELETE", "/v1/domains/db-1/interfaces/vnet2"],
      ["DELETE", "/v1/domains/nope/interfaces/vnet2"],
      ["GET", `/v1/domains/${FAKE_UUIDS.db1}/interfaces`],
    ] as const) {
      assertError(await call(app, method, url, { token: "tok-scoped" }), "FORBIDDEN");
    }
    assert.deepEqual(mutations(service), []);
  });

  test("403 for a scoped token when the domain vanishes between the scope check and the change", async () => {
    const { app, service } = setup();
    service.failNext("setInterface", new VirtqosError("DOMAIN_NOT_FOUND", "gone"));
    const a = await call(app, "PATCH", IFACE, { token: "tok-scoped", body: { inbound: { average: 1 } } });
    assertError(a, "FORBIDDEN");
  });

  test("404: domain and interface for an unscoped token; unknown routes and methods", async () => {
    const { app } = setup();
    assertError(
      await call(app, "GET", "/v1/domains/nope/interfaces", { token: "tok-reader" }),
      "DOMAIN_NOT_FOUND",
    );
    assertError(
      await call(app, "PATCH", "/v1/domains/nope/interfaces/vnet0", {
        token: "tok-operator",
        body: { inbound: { average: 1 } },
      }),
      "DOMAIN_NOT_FOUND",
    );
    assertError(
      await call(app, "PATCH", "/v1/domains/web-1/interfaces/vnet9", {
        token: "tok-operator",
        body: { inbound: { average: 1 } },
      }),
      "INTERFACE_NOT_FOUND",
    );
    assertError(
      await call(app, "DELETE", "/v1/domains/web-1/interfaces/9", { token: "tok-operator" }),
      "INTERFACE_NOT_FOUND",
    );
    for (const [method, url] of [
      ["GET", "/v2/health"],
      ["GET", "/"],
      ["GET", "/v1/health/"],
      ["PUT", "/v1/health"],
      ["POST", "/v1/domains"],
      ["HEAD", "/v1/health"],
      ["OPTIONS", "/v1/health"],
      ["GET", "/v1/domains/web-1/interfaces/vnet0"],
    ] as const) {
      const r = await app.inject({ method, url });
      assert.equal(r.statusCode, 404, `${method} ${url}`);
      if (method !== "HEAD") assert.equal(JSON.parse(r.body).error.code, "ROUTE_NOT_FOUND");
    }
  });

  test("409: a live change to a domain that is not running", async () => {
    const { app } = setup();
    const a = await call(app, "PATCH", "/v1/domains/batch-7/interfaces/1", {
      token: "tok-operator",
      body: { inbound: { average: 1 } },
    });
    assertError(a, "DOMAIN_NOT_RUNNING");
  });

  test("413: a body over the limit, whatever it holds; the limit is configurable", async () => {
    const { app, service } = setup();
    const big = JSON.stringify({ inbound: { average: 1 }, pad: "x".repeat(64 * 1024) });
    const a = await call(app, "PATCH", IFACE, {
      token: "tok-operator",
      body: big,
      headers: { "content-type": "application/json" },
    });
    assertError(a, "BODY_TOO_LARGE");
    const small = setup({ bodyLimitBytes: 16 });
    const b = await call(small.app, "PATCH", IFACE, {
      token: "tok-operator",
      body: { inbound: { average: 1, peak: 2 } },
    });
    assertError(b, "BODY_TOO_LARGE");
    assert.match(b.json.error.message, /16 bytes/);
    assert.deepEqual(mutations(service), []);
  });

  test("422, 501, 503 and other catalogue codes keep their status; detail and field pass through", async () => {
    const { app, service } = setup();
    service.failNext(
      "setInterface",
      new VirtqosError("GROUP_ADMISSION", "floors 40 Mbit/s > ceiling 30 Mbit/s", {
        groupCeilingBitsPerSec: 3e7,
      }),
    );
    const g = await call(app, "PATCH", IFACE, { token: "tok-operator", body: { inbound: { average: 1 } } });
    assertError(g, "GROUP_ADMISSION");
    assert.equal(g.json.error.message, "floors 40 Mbit/s > ceiling 30 Mbit/s");
    assert.deepEqual(g.json.error.detail, { groupCeilingBitsPerSec: 3e7 });

    const n = await call(app, "PATCH", "/v1/domains/db-1/interfaces/1", {
      token: "tok-operator",
      body: { inbound: { average: 1 } },
    });
    assertError(n, "NOT_SHAPEABLE");

    service.failNext("listDomains", new VirtqosError("LIBVIRT_UNAVAILABLE", "virsh: connection refused"));
    assertError(await call(app, "GET", "/v1/domains", { token: "tok-reader" }), "LIBVIRT_UNAVAILABLE");

    service.failNext("clearInterface", new VirtqosError("LOCK_TIMEOUT", "held"));
    assertError(await call(app, "DELETE", IFACE, { token: "tok-operator" }), "LOCK_TIMEOUT");

    service.failNext(
      "setInterface",
      new VirtqosError("REQUEST_INVALID", "peak below average", { field: "/inbound/peak" }),
    );
    assertError(
      await call(app, "PATCH", IFACE, { token: "tok-operator", body: { inbound: { average: 2, peak: 1 } } }),
      "REQUEST_INVALID",
      "/inbound/peak",
    );
    // The service's own validation error carries the pointer as a property.
    service.failNext(
      "setInterface",
      Object.assign(new VirtqosError("REQUEST_INVALID", "/outbound/floor: is above the limit"), {
        field: "/outbound/floor",
      }),
    );
    assertError(
      await call(app, "PATCH", IFACE, { token: "tok-operator", body: { inbound: { average: 2, peak: 1 } } }),
      "REQUEST_INVALID",
      "/outbound/floor",
    );

    service.failNext("audit", new VirtqosError("AUDIT_FAILED", "disk full"));
    assertError(await call(app, "GET", "/v1/audit", { token: "tok-admin" }), "AUDIT_FAILED");
  });

  test("500: an error without a code is INTERNAL with a generic message; the real one is logged", async () => {
    const { app, service, logged } = setup();
    service.failNext("health", new Error("secret path /var/lib/x exploded"));
    const a = await call(app, "GET", "/v1/health", { token: "tok-reader" });
    assertError(a, "INTERNAL");
    assert.doesNotMatch(a.json.error.message, /secret/);
    assert.match(logged.error.join("\n"), /secret path \/var\/lib\/x exploded/);

    // A code that is only ever a warning is no refusal: a bug, answered the same way.
    service.failNext("setInterface", new VirtqosError("NO_LIMITS", "odd"));
    assertError(
      await call(app, "PATCH", IFACE, { token: "tok-operator", body: { inbound: { average: 1 } } }),
      "INTERNAL",
    );
    service.failNext("listDomains", "a string thrown");
    assertError(await call(app, "GET", "/v1/domains", { token: "tok-reader" }), "INTERNAL");
  });

  test("500 when the authenticator itself throws, logged", async () => {
    const logged: string[] = [];
    const app = buildApi({
      service: new FakeAgentService(),
      auth: {
        authenticate: () => {
          throw new Error("token file unreadable");
        },
      },
      log: { warning: () => {}, error: (m) => logged.push(m) },
    });
    assertError(await call(app, "GET", "/v1/health", { token: "x" }), "INTERNAL");
    assert.match(logged.join("\n"), /token file unreadable/);
  });
});

describe("Nova server action", () => {
  const action = (iface: number, rate: number) => ({ setInterface: { interface: iface, rate } });

  test("202 on both URL forms: both directions at the rate, persist both, libvirt's units back", async () => {
    for (const url of [NOVA, NOVA_SHORT]) {
      const { app, service } = setup();
      const a = await call(app, "POST", url, { token: "tok-operator", body: action(1, 1250) });
      assert.equal(a.status, 202, JSON.stringify(a.json));
      conforms(NovaAcceptedResponse, a.json, "Nova answer");
      assert.deepEqual(a.json, {
        interfaceParameters: {
          "inbound.average": 1250,
          "inbound.peak": 1250,
          "inbound.burst": 1250,
          "outbound.average": 1250,
          "outbound.peak": 1250,
          "outbound.burst": 1250,
        },
      });
      const [m] = mutations(service);
      assert.deepEqual(m.args.slice(0, 3), [
        FAKE_UUIDS.web1,
        "1",
        {
          inbound: { average: 1250, peak: 1250, burst: 1250 },
          outbound: { average: 1250, peak: 1250, burst: 1250 },
          persist: "both",
          door: "nova",
        },
      ]);
    }
  });

  test("X-Auth-Token, an upper-case UUID (lower-cased for the service), rate 0 reads back as zeros", async () => {
    const { app, service } = setup();
    const a = await call(
      app,
      "POST",
      NOVA.toUpperCase()
        .replace("/V2.1/PROJ-1/SERVERS/", "/v2.1/proj-1/servers/")
        .replace("/ACTION", "/action"),
      {
        xAuthToken: "tok-operator",
        body: action(1, 0),
      },
    );
    assert.equal(a.status, 202, JSON.stringify(a.json));
    assert.equal(mutations(service)[0].args[0], FAKE_UUIDS.web1);
    assert.deepEqual(Object.values(a.json.interfaceParameters), [0, 0, 0, 0, 0, 0]);
  });

  test("interfaceParameters: rounding, a floor, an unlimited direction", () => {
    const view: InterfaceView = {
      index: 1,
      type: "bridge",
      inbound: {
        inForce: {
          rateBitsPerSec: 10_004_000,
          ceilBitsPerSec: 20_000_000,
          burstBytes: 1_000_000,
          floorBitsPerSec: 4_000_000,
          source: "live",
        },
      },
      outbound: {},
    };
    assert.deepEqual(interfaceParameters(view), {
      "inbound.average": 1251,
      "inbound.peak": 2500,
      "inbound.burst": 977,
      "inbound.floor": 500,
      "outbound.average": 0,
      "outbound.peak": 0,
      "outbound.burst": 0,
    });
  });

  test("the answer is what the service says is in force, not what was asked", async () => {
    const { app, service } = setup();
    service.answerNext("setInterface", {
      index: 2,
      type: "bridge",
      inbound: { inForce: { rateBitsPerSec: 800_000, ceilBitsPerSec: 800_000, source: "live" } },
      outbound: {},
    } satisfies InterfaceView);
    const a = await call(app, "POST", NOVA, { token: "tok-admin", body: action(1, 1000) });
    assert.equal(a.status, 202);
    assert.equal(a.json.interfaceParameters["inbound.average"], 100);
    assert.equal(a.json.interfaceParameters["inbound.burst"], 0);
    assert.equal(a.json.interfaceParameters["outbound.average"], 0);
  });

  test("400 badRequest: the body exactly as the seed sends it, and a UUID", async () => {
    const { app, service } = setup();
    const cases: [unknown, string | undefined][] = [
      [{}, "/setInterface"],
      [{ setInterface: { interface: 1 } }, "/setInterface/rate"],
      [{ setInterface: { interface: 0, rate: 1 } }, "/setInterface/interface"],
      [{ setInterface: { interface: 1.5, rate: 1 } }, "/setInterface/interface"],
      [{ setInterface: { interface: "1", rate: 1 } }, "/setInterface/interface"],
      [{ setInterface: { interface: 1, rate: -1 } }, "/setInterface/rate"],
      [{ setInterface: { interface: 1, rate: "10mbit" } }, "/setInterface/rate"],
      [{ setInterface: { interface: 1, rate: 4_294_967_296 } }, "/setInterface/rate"],
      [{ setInterface: { interface: 1, rate: 1, burst: 2 } }, "/setInterface/burst"],
      [{ setInterface: { interface: 1, rate: 1 }, reboot: {} }, "/reboot"],
      [[], undefined],
    ];
    for (const [body, field] of cases) {
      assertFault(
        await call(app, "POST", NOVA, { token: "tok-operator", body }),
        "badRequest",
        "REQUEST_INVALID",
        field,
      );
    }
    for (const url of [
      "/v2.1/proj/servers/web-1/action",
      "/v2.1/servers/1111111-1111-4111-8111-111111111111/action",
      `/v2.1/servers/${FAKE_UUIDS.web1}x/action`,
    ]) {
      assertFault(
        await call(app, "POST", url, { token: "tok-operator", body: action(1, 1) }),
        "badRequest",
        "REQUEST_INVALID",
        "/server_id",
      );
    }
    assertFault(
      await call(app, "POST", NOVA, {
        token: "tok-operator",
        body: "{",
        headers: { "content-type": "application/json" },
      }),
      "badRequest",
      "REQUEST_INVALID",
    );
    assert.deepEqual(mutations(service), []);
  });

  test("401 unauthorized, 403 forbidden (role and scope), 404 itemNotFound", async () => {
    const { app } = setup();
    const body = action(1, 100);
    const a = await call(app, "POST", NOVA, { body });
    assertFault(a, "unauthorized", "AUTH_REQUIRED");
    assert.match(String(a.headers["www-authenticate"]), /^Bearer/);
    assertFault(await call(app, "POST", NOVA, { xAuthToken: "bad", body }), "unauthorized", "AUTH_REQUIRED");
    assertFault(await call(app, "POST", NOVA, { token: "tok-reader", body }), "forbidden", "FORBIDDEN");
    const other = `/v2.1/p/servers/${FAKE_UUIDS.db1}/action`;
    const missing = "/v2.1/p/servers/99999999-9999-4999-8999-999999999999/action";
    assertFault(await call(app, "POST", other, { token: "tok-scoped", body }), "forbidden", "FORBIDDEN");
    assertFault(await call(app, "POST", missing, { token: "tok-scoped", body }), "forbidden", "FORBIDDEN");
    assertFault(
      await call(app, "POST", missing, { token: "tok-operator", body }),
      "itemNotFound",
      "DOMAIN_NOT_FOUND",
    );
    assertFault(
      await call(app, "POST", NOVA, { token: "tok-operator", body: action(9, 100) }),
      "itemNotFound",
      "INTERFACE_NOT_FOUND",
    );
    assertFault(await call(app, "GET", NOVA, { token: "tok-operator" }), "itemNotFound", "ROUTE_NOT_FOUND");
    assertFault(
      await call(app, "POST", "/v2.1/servers", { token: "tok-operator" }),
      "itemNotFound",
      "ROUTE_NOT_FOUND",
    );
  });

  test("409 conflictingRequest, 501 notImplemented, 413 overLimit, 422 and 500 computeFault, 503", async () => {
    const { app, service, logged } = setup();
    const body = action(1, 100);
    assertFault(
      await call(app, "POST", `/v2.1/servers/${FAKE_UUIDS.batch7}/action`, { token: "tok-operator", body }),
      "conflictingRequest",
      "DOMAIN_NOT_RUNNING",
    );
    assertFault(
      await call(app, "POST", `/v2.1/servers/${FAKE_UUIDS.db1}/action`, { token: "tok-operator", body }),
      "notImplemented",
      "NOT_SHAPEABLE",
    );
    assertFault(
      await call(app, "POST", NOVA, {
        token: "tok-operator",
        body: `{"setInterface":{"interface":1,"rate":1},"x":"${"y".repeat(70_000)}"}`,
        headers: { "content-type": "application/json" },
      }),
      "overLimit",
      "BODY_TOO_LARGE",
    );
    service.failNext("setInterface", new VirtqosError("GROUP_ADMISSION", "no room"));
    assertFault(
      await call(app, "POST", NOVA, { token: "tok-operator", body }),
      "computeFault",
      "GROUP_ADMISSION",
    );
    service.failNext("setInterface", new VirtqosError("LIBVIRT_UNAVAILABLE", "down"));
    assertFault(
      await call(app, "POST", NOVA, { token: "tok-operator", body }),
      "serviceUnavailable",
      "LIBVIRT_UNAVAILABLE",
    );
    service.failNext("setInterface", new TypeError("undefined is not a function"));
    const a = await call(app, "POST", NOVA, { token: "tok-operator", body });
    assertFault(a, "computeFault", "INTERNAL");
    assert.doesNotMatch(a.json.computeFault.message, /undefined is not/);
    assert.match(logged.error.join("\n"), /undefined is not a function/);
  });
});

describe("OpenAPI document", () => {
  test("served without a token, OpenAPI 3.1.0, listing exactly the registered routes", async () => {
    const { app } = setup();
    const r = await app.inject({ method: "GET", url: "/v1/openapi.json" });
    assert.equal(r.statusCode, 200);
    assert.match(String(r.headers["content-type"]), /^application\/json/);
    const doc = JSON.parse(r.body);
    assert.equal(doc.openapi, "3.1.0");
    await app.ready();
    const registered = registeredRoutes(app)
      .map((x) => `${x.method} ${openApiPath(x.url)}`)
      .sort();
    const documented = Object.entries(doc.paths as Record<string, Record<string, unknown>>)
      .flatMap(([path, ops]) => Object.keys(ops).map((m) => `${m.toUpperCase()} ${path}`))
      .sort();
    assert.deepEqual(documented, registered);
    assert.equal(registered.length, apiRoutes().length);
    // The printed tree agrees: every registered method shows up there.
    const tree = app.printRoutes({ commonPrefix: false });
    const methodsInTree = [...tree.matchAll(/\(([A-Z, ]+)\)/g)].flatMap((m) => m[1].split(", "));
    assert.equal(methodsInTree.length, registered.length, tree);
  });

  test("every operation has parameters for its path, responses with the catalogue's statuses, schemas resolve", async () => {
    const { app } = setup();
    const doc = JSON.parse((await app.inject({ method: "GET", url: "/v1/openapi.json" })).body);
    const refs: string[] = [];
    const walk = (v: unknown): void => {
      if (Array.isArray(v)) v.forEach(walk);
      else if (v && typeof v === "object") {
        for (const [k, x] of Object.entries(v)) {
          if (k === "$ref" && typeof x === "string") refs.push(x);
          else walk(x);
        }
      }
    };
    walk(doc);
    for (const ref of refs) {
      const name = ref.replace("#/components/schemas/", "");
      assert.ok(doc.components.schemas[name], `${ref} resolves`);
    }
    for (const name of ["Error", "NovaFault", "RateInput", "InterfaceView", "SetInterfaceRequest"]) {
      assert.ok(doc.components.schemas[name], name);
    }
    for (const [path, ops] of Object.entries(doc.paths as Record<string, Record<string, Json>>)) {
      const inPath = [...path.matchAll(/\{([^}]+)\}/g)].map((m) => m[1]).sort();
      for (const [method, op] of Object.entries(ops)) {
        const declared = op.parameters
          .filter((p: { in: string }) => p.in === "path")
          .map((p: { name: string }) => p.name)
          .sort();
        assert.deepEqual(declared, inPath, `${method} ${path}`);
        for (const status of Object.keys(op.responses)) {
          assert.ok([200, 202, 400, 401, 403, 404, 409, 413, 422, 500, 501, 503].includes(Number(status)));
        }
        if (op.security.length) {
          assert.ok(op.responses["401"] && op.responses["403"], `${method} ${path} documents 401 and 403`);
        }
        if (method === "patch" || method === "post") assert.ok(op.requestBody, `${method} ${path} body`);
      }
    }
    const patch = doc.paths["/v1/domains/{domain}/interfaces/{iface}"].patch;
    assert.equal(
      patch.requestBody.content["application/json"].schema.$ref,
      "#/components/schemas/SetInterfaceRequest",
    );
    assert.equal(doc.components.schemas.RateInput.additionalProperties, false);
    const del = doc.paths["/v1/domains/{domain}/interfaces/{iface}"].delete;
    assert.deepEqual(
      del.parameters.map((p: { name: string; in: string }) => `${p.in}:${p.name}`),
      ["path:domain", "path:iface", "query:persist"],
    );
    const codes = doc.components.schemas.Error.properties.error.properties.code.anyOf.map(
      (c: { const: string }) => c.const,
    );
    assert.ok(codes.every(isErrorCode));
    assert.equal(codes.length, Object.keys(ERRORS).length);
  });
});
