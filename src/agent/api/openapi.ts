import { Type } from "@sinclair/typebox";
import { ERRORS, type ErrorCode } from "../../core/errors.js";
import type { Action } from "../types.js";
import { defineRoute, type Route } from "./route.js";
import { componentName, ErrorBodySchema, NoQueryPart, NovaFaultSchema } from "./schemas.js";

// The document is printed from the route table and the TypeBox schemas the routes validate with, so it
// cannot describe a field the API refuses or miss one it accepts. Named schemas become components.

export const OPENAPI_VERSION = "3.1.0";
export const OPENAPI_PATH = "/v1/openapi.json";

const ROLE_FOR: Readonly<Record<Action, string>> = { read: "reader", write: "operator", admin: "admin" };

/** A fastify path (`/v1/domains/:domain`) in OpenAPI's form (`/v1/domains/{domain}`). */
export function openApiPath(url: string): string {
  return url.replace(/:([A-Za-z0-9_]+)/g, "{$1}");
}

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

class Components {
  readonly found = new Map<string, unknown>();

  /** Plain JSON of a TypeBox schema (its symbols dropped), named sub-schemas replaced by references. */
  json(schema: unknown, root?: string): Json {
    if (Array.isArray(schema)) return schema.map((s) => this.json(s));
    if (typeof schema !== "object" || schema === null) return schema as Json;
    const name = componentName(schema);
    if (name !== undefined && name !== root) {
      if (!this.found.has(name)) this.found.set(name, schema);
      return { $ref: `#/components/schemas/${name}` };
    }
    const out: Record<string, Json> = {};
    for (const key of Object.keys(schema)) out[key] = this.json((schema as Record<string, unknown>)[key]);
    return out;
  }

  /** Every component reached so far, and those they reach in turn. */
  schemas(): Record<string, Json> {
    const out: Record<string, Json> = {};
    let pending = [...this.found.keys()];
    while (pending.length) {
      for (const name of pending) out[name] = this.json(this.found.get(name), name);
      pending = [...this.found.keys()].filter((n) => !Object.hasOwn(out, n));
    }
    return Object.fromEntries(Object.entries(out).sort(([a], [b]) => a.localeCompare(b)));
  }
}

interface ObjectSchema {
  properties?: Record<string, { description?: string }>;
  required?: string[];
}

function parameters(c: Components, r: Route): Json[] {
  const out: Json[] = [];
  for (const [where, part] of [
    ["path", r.params],
    ["query", r.query],
  ] as const) {
    const s = part?.schema as ObjectSchema | undefined;
    for (const [name, prop] of Object.entries(s?.properties ?? {})) {
      const p: Record<string, Json> = {
        name,
        in: where,
        required: where === "path" || (s?.required ?? []).includes(name),
        schema: c.json(prop),
      };
      if (prop.description) p.description = prop.description;
      out.push(p);
    }
  }
  return out;
}

/** The codes a route can answer with, whatever its handler does: validation, authentication, the body limit. */
export function routeErrorCodes(r: Route): ErrorCode[] {
  const codes: ErrorCode[] = ["REQUEST_INVALID"];
  if (r.action) codes.push("AUTH_REQUIRED", "FORBIDDEN");
  if (r.body) codes.push("BODY_TOO_LARGE");
  for (const c of r.errors) if (!codes.includes(c)) codes.push(c);
  codes.push("INTERNAL");
  return codes;
}

function responses(c: Components, r: Route): Record<string, Json> {
  const out: Record<string, Json> = {
    [String(r.success.status)]: {
      description: r.success.description,
      content: { "application/json": { schema: c.json(r.success.schema) } },
    },
  };
  const byStatus = new Map<number, ErrorCode[]>();
  for (const code of routeErrorCodes(r)) {
    const status = ERRORS[code].httpStatus;
    byStatus.set(status, [...(byStatus.get(status) ?? []), code]);
  }
  const errorRef = { $ref: `#/components/schemas/${r.shape === "nova" ? "NovaFault" : "Error"}` };
  for (const [status, codes] of [...byStatus].sort(([a], [b]) => a - b)) {
    const resp: Record<string, Json> = {
      description: codes.map((code) => `${code}: ${ERRORS[code].summary}`).join(" "),
      content: { "application/json": { schema: errorRef } },
    };
    if (status === 401) {
      resp.headers = { "WWW-Authenticate": { schema: { type: "string" }, description: "Bearer" } };
    }
    out[String(status)] = resp;
  }
  return out;
}

function operation(c: Components, r: Route): Json {
  const op: Record<string, Json> = {
    operationId: r.operationId,
    summary: r.summary,
    tags: [r.tag],
    parameters: parameters(c, r),
    responses: responses(c, r),
    security: r.action ? [{ bearer: [] }, { authToken: [] }] : [],
  };
  if (r.description) op.description = r.description;
  if (r.action) op["x-virtqos-role"] = ROLE_FOR[r.action];
  if (r.body) {
    op.requestBody = { required: true, content: { "application/json": { schema: c.json(r.body.schema) } } };
  }
  return op;
}

export interface OpenApiInfo {
  title?: string;
  version?: string;
}

export function buildOpenApi(routes: readonly Route[], info: OpenApiInfo = {}): Record<string, Json> {
  const c = new Components();
  const paths: Record<string, Record<string, Json>> = {};
  for (const r of routes) {
    const path = openApiPath(r.url);
    paths[path] ??= {};
    paths[path][r.method.toLowerCase()] = operation(c, r);
  }
  // Both error bodies are part of the contract even where no route above happened to reach them.
  c.json(ErrorBodySchema);
  c.json(NovaFaultSchema);
  return {
    openapi: OPENAPI_VERSION,
    info: {
      title: info.title ?? "virtqos agent",
      version: info.version ?? "1",
      description:
        "Bandwidth control for libvirt/KVM guests. Directions are the guest's: inbound = its download, " +
        "outbound = its upload. libvirt's units: average/peak/floor kB/s (1 = 1000 bytes/s), burst KiB. " +
        "Errors: `{error: {code, message, field?, fix}}` with the status of the code in docs/errors.md " +
        "(Nova's fault shape under /v2.1). An unknown route or method: 404 ROUTE_NOT_FOUND. On the unix " +
        "socket, file permissions are the gate and every request acts as admin.",
    },
    paths: paths as Record<string, Json>,
    components: {
      schemas: c.schemas(),
      securitySchemes: {
        bearer: { type: "http", scheme: "bearer", description: "A token from `virtqos token add`." },
        authToken: { type: "apiKey", in: "header", name: "X-Auth-Token", description: "The same token." },
      },
    },
  };
}

/** GET /v1/openapi.json: no authentication, the document is not a secret. */
export function openApiRoute(document: () => unknown): Route {
  return defineRoute({
    method: "GET",
    url: OPENAPI_PATH,
    operationId: "getOpenApi",
    summary: "This document.",
    tag: "agent",
    query: NoQueryPart,
    success: {
      status: 200,
      description: "The OpenAPI 3.1 document.",
      schema: Type.Object({ openapi: Type.Literal(OPENAPI_VERSION) }, { additionalProperties: true }),
    },
    errors: [],
    shape: "v1",
    handle: () => document(),
  });
}
