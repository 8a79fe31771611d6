import { createRequire } from "node:module";
import type FastifyModule from "fastify";
import type { FastifyInstance, FastifyReply, FastifyRequest } from "fastify";

// fastify is required when an API is built, not when this module loads: the CLI bundle holds this module and
// only `virtqos agent` serves HTTP.
const loadFastify = () => createRequire(import.meta.url)("fastify") as typeof FastifyModule;

import type { AgentService, Authenticator, Principal } from "../types.js";
import { isScoped, roleAllows, scopeRefusal } from "./authz.js";
import {
  type ApiLog,
  errorBody,
  novaFaultBody,
  type Problem,
  problem,
  problemFromFramework,
  problemFromHandler,
} from "./errors.js";
import { novaRoutes } from "./nova.js";
import { buildOpenApi, openApiRoute } from "./openapi.js";
import { ANONYMOUS, type Route } from "./route.js";
import { v1Routes } from "./v1.js";

// The pipeline every route runs through, in this order: authenticate and check the role (before the body is
// read, so an anonymous client cannot make the agent parse anything), parse the body (fastify, JSON only,
// size-limited), validate path, query and body (ours), check the scope, call the service. Any refusal at any
// step leaves through one function with one body shape.

/** A live change is a few hundred bytes; 64 KiB leaves room for clients that pretty-print. */
export const DEFAULT_BODY_LIMIT_BYTES = 64 * 1024;

/**
 * find-my-way refuses longer path segments before we see them. A domain name of 255 UTF-16 units is at most
 * 2295 characters percent-encoded (9 per unit, "%E2%82%AC"): let that through so our validation answers.
 */
const PATH_SEGMENT_MAX_CHARS = 4096;

const LOG_URL_MAX_CHARS = 200;
const REQUEST_RECEIVE_TIMEOUT_MS = 30_000;

export interface ApiOptions {
  service: AgentService;
  auth: Authenticator;
  log?: ApiLog;
  bodyLimitBytes?: number;
  /** PEM certificate and key: the app then serves HTTPS (fastify can only be told at construction). */
  https?: { cert: string | Buffer; key: string | Buffer };
}

/** Every route the API serves, in registration order: the agent's v1 routes, Nova's action, the document. */
export function apiRoutes(): Route[] {
  const routes = [...v1Routes(), ...novaRoutes()];
  let doc: unknown;
  routes.push(
    openApiRoute(() => {
      doc ??= buildOpenApi(routes);
      return doc;
    }),
  );
  return routes;
}

export interface RegisteredRoute {
  method: string;
  url: string;
}

const registered = new WeakMap<FastifyInstance, RegisteredRoute[]>();

/** What fastify itself registered on an app built by buildApi (its onRoute hook), to hold the table to. */
export function registeredRoutes(app: FastifyInstance): RegisteredRoute[] {
  return [...(registered.get(app) ?? [])];
}

function isNovaUrl(url: string): boolean {
  return url === "/v2.1" || url.startsWith("/v2.1/") || url.startsWith("/v2.1?");
}

function describeRequest(req: FastifyRequest): string {
  // JSON-quoted: a URL may carry control characters, which must not forge log lines.
  return `${req.method} ${JSON.stringify(req.url.slice(0, LOG_URL_MAX_CHARS))}`;
}

function sendProblem(req: FastifyRequest, reply: FastifyReply, p: Problem): FastifyReply {
  if (p.status === 401) reply.header("www-authenticate", 'Bearer realm="virtqos"');
  return reply.code(p.status).send(isNovaUrl(req.url) ? novaFaultBody(p) : errorBody(p));
}

const MINIMUM_ROLE = { read: "reader", write: "operator", admin: "admin" } as const;

function hasTokenHeader(headers: FastifyRequest["headers"]): boolean {
  return headers.authorization !== undefined || headers["x-auth-token"] !== undefined;
}

export function buildApi(opts: ApiOptions): FastifyInstance {
  const { service, auth, log } = opts;
  const bodyLimit = opts.bodyLimitBytes ?? DEFAULT_BODY_LIMIT_BYTES;
  const fromFramework = (err: unknown, req: FastifyRequest) =>
    problemFromFramework(err, describeRequest(req), bodyLimit, log);

  const app = loadFastify()({
    logger: false,
    bodyLimit,
    // A client has this long to send its whole request (not to wait for the answer): no slow-loris on TCP.
    requestTimeout: REQUEST_RECEIVE_TIMEOUT_MS,
    // HEAD would be a second registered route per GET, undocumented and untested.
    exposeHeadRoutes: false,
    onProtoPoisoning: "error",
    onConstructorPoisoning: "error",
    routerOptions: { maxParamLength: PATH_SEGMENT_MAX_CHARS },
    frameworkErrors: (err, req, reply) => {
      sendProblem(req, reply, fromFramework(err, req));
    },
    ...(opts.https ? { https: { cert: opts.https.cert, key: opts.https.key } } : {}),
  }) as unknown as FastifyInstance;

  // JSON only: a text/plain body would reach validation as a string and be refused with a less clear message.
  app.removeContentTypeParser("text/plain");

  const seen: RegisteredRoute[] = [];
  registered.set(app, seen);
  app.addHook("onRoute", (o) => {
    for (const method of [o.method].flat()) seen.push({ method, url: o.url });
  });

  const principals = new WeakMap<FastifyRequest, Principal>();

  for (const r of apiRoutes()) {
    const action = r.action;
    app.route({
      method: r.method,
      url: r.url,
      ...(action
        ? {
            onRequest: async (req: FastifyRequest, reply: FastifyReply) => {
              let principal: Principal | undefined;
              try {
                principal = auth.authenticate(req.headers);
              } catch (e) {
                return sendProblem(req, reply, problemFromHandler(e, describeRequest(req), log));
              }
              if (principal === undefined) {
                const why = hasTokenHeader(req.headers)
                  ? "the token given matches no token"
                  : "no token given: send Authorization: Bearer <token> or X-Auth-Token: <token>";
                return sendProblem(req, reply, problem("AUTH_REQUIRED", why));
              }
              if (!roleAllows(principal.role, action)) {
                return sendProblem(
                  req,
                  reply,
                  problem(
                    "FORBIDDEN",
                    `token "${principal.name}" has role ${principal.role}; this request needs ${MINIMUM_ROLE[action]}`,
                  ),
                );
              }
              principals.set(req, principal);
            },
          }
        : {}),
      handler: async (req, reply) => {
        const principal = principals.get(req) ?? ANONYMOUS;
        try {
          const params = r.params ? r.params.parse(req.params) : {};
          const query = r.query.parse(req.query ?? {});
          const body = r.body ? r.body.parse(req.body) : undefined;
          const result = await r.handle({ service, principal, params, query, body });
          if (r.raw) {
            const raw = result as { contentType: string; body: string };
            return reply.code(r.success.status).header("content-type", raw.contentType).send(raw.body);
          }
          return reply.code(r.success.status).send(result);
        } catch (e) {
          let p = problemFromHandler(e, describeRequest(req), log);
          // A domain vanishing between the scope check and the change must not tell a scoped token either.
          if (p.code === "DOMAIN_NOT_FOUND" && isScoped(principal) && r.domainParam) {
            const requested = (req.params as Record<string, unknown>)[r.domainParam];
            p = problem("FORBIDDEN", scopeRefusal(principal, String(requested)).message);
          }
          return sendProblem(req, reply, p);
        }
      },
    });
  }

  app.setNotFoundHandler((req, reply) => {
    const path = req.url.split("?")[0].slice(0, LOG_URL_MAX_CHARS);
    sendProblem(req, reply, problem("ROUTE_NOT_FOUND", `no route for ${req.method} ${JSON.stringify(path)}`));
  });

  app.setErrorHandler((err, req, reply) => {
    sendProblem(req, reply, fromFramework(err, req));
  });

  return app;
}
