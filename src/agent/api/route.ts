import type { TSchema } from "@sinclair/typebox";
import type { ErrorCode } from "../../core/errors.js";
import type { Action, AgentService, Principal } from "../types.js";
import type { Part } from "./schemas.js";

// A route is data first: the server registers it, the OpenAPI document prints it, the tests enumerate it.
// Keeping all three on one table is what stops the document from describing routes that do not exist.

export type Method = "GET" | "PATCH" | "DELETE" | "POST";

/** Which error body a route answers with: ours, or Nova's fault shape for the Nova-compatible action. */
export type ErrorShape = "v1" | "nova";

export interface RouteContext<P, Q, B> {
  service: AgentService;
  /** On routes without authentication: a principal that may read nothing (role reader, empty scope). */
  principal: Principal;
  params: P;
  query: Q;
  body: B;
}

export interface RouteSpec<P, Q, B> {
  method: Method;
  /** fastify's form: `/v1/domains/:domain`. */
  url: string;
  operationId: string;
  summary: string;
  description?: string;
  tag: string;
  /** What the principal's role must allow; undefined = no authentication at all. */
  action?: Action;
  params?: Part<P>;
  query: Part<Q>;
  body?: Part<B>;
  /** The path parameter naming the domain: a scoped token's DOMAIN_NOT_FOUND for it becomes FORBIDDEN. */
  domainParam?: string;
  success: { status: number; description: string; schema: TSchema; example?: unknown };
  /** The handler answers `{ contentType, body }` to send as it is (Prometheus text), not JSON. */
  raw?: boolean;
  /** Codes the service may answer with, beyond validation, authentication and INTERNAL (for the document). */
  errors: ErrorCode[];
  shape: ErrorShape;
  handle(ctx: RouteContext<P, Q, B>): unknown;
}

export type Route = RouteSpec<unknown, unknown, unknown>;

/** Typed where it is written, erased where it is stored: the pipeline hands each route what its parts parsed. */
export function defineRoute<P, Q, B>(spec: RouteSpec<P, Q, B>): Route {
  return spec as unknown as Route;
}

export const ANONYMOUS: Principal = Object.freeze({
  name: "anonymous",
  role: "reader",
  domains: Object.freeze([]) as unknown as string[],
  via: "token",
}) as Principal;
