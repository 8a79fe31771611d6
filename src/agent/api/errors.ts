import { ERRORS, type ErrorCode, type ErrorDetail, errorCodeOf, VirtqosError } from "../../core/errors.js";

// Every refusal the API sends goes through here, whatever raised it (our validation, the service, fastify's
// body parser, the router), so the body shape and the catalogue status cannot drift between routes.

/** A refusal the API decides itself, with the JSON pointer of the field at fault. */
export class RequestProblem extends VirtqosError {
  constructor(
    code: ErrorCode,
    message: string,
    readonly field?: string,
  ) {
    super(code, message);
  }
}

/** A refusal ready to send: the catalogue's status and fix, our message. */
export interface Problem {
  status: number;
  code: ErrorCode;
  message: string;
  /** JSON pointer of the field at fault, relative to the body, the path parameters or the query. */
  field?: string;
  fix: string;
  detail?: ErrorDetail;
}

export interface ErrorBody {
  error: { code: ErrorCode; message: string; field?: string; fix: string; detail?: ErrorDetail };
}

export interface ApiLog {
  warning(m: string): void;
  error(m: string): void;
}

export function problem(code: ErrorCode, message: string, field?: string, detail?: ErrorDetail): Problem {
  const p: Problem = { status: ERRORS[code].httpStatus, code, message, fix: ERRORS[code].fix };
  if (field !== undefined) p.field = field;
  if (detail !== undefined) p.detail = detail;
  return p;
}

/** The generic answer for an error without a code: the real message goes to the log, never to the client. */
function internal(e: unknown, context: string, log?: ApiLog): Problem {
  const text = e instanceof Error ? (e.stack ?? e.message) : String(e);
  log?.error(`${context}: ${text}`);
  return problem("INTERNAL", "internal error; the agent's log has the details");
}

/**
 * An error thrown by a route's own code or the service behind it. A catalogue code keeps its status;
 * codes that are only ever warnings (HTTP 200) cannot be a refusal, so they are a bug like any uncoded error.
 */
export function problemFromHandler(e: unknown, context: string, log?: ApiLog): Problem {
  const code = errorCodeOf(e);
  if (code === undefined || ERRORS[code].httpStatus < 400) return internal(e, context, log);
  const err = e as VirtqosError;
  const detail = err.detail;
  // The field at fault, where the error says: its own `field` (ours, the service's RequestInvalidError) or
  // its detail's. Only a JSON pointer is passed on.
  const own = (e as { field?: unknown }).field;
  const inDetail =
    typeof detail === "object" && detail !== null ? (detail as { field?: unknown }).field : undefined;
  const candidate = own !== undefined ? own : inDetail;
  const field =
    typeof candidate === "string" && (candidate === "" || candidate.startsWith("/")) ? candidate : undefined;
  const p = problem(code, String(err.message), field, detail);
  if (p.status >= 500) log?.warning(`${context}: ${code}: ${err.message}`);
  return p;
}

interface FrameworkError {
  code?: unknown;
  statusCode?: unknown;
  message?: unknown;
}

/**
 * An error fastify raised before a handler ran: the content-type parser, the body limit, a malformed URL.
 * Its statusCode says which side is at fault; its text is fastify's, so only known codes get our wording.
 */
export function problemFromFramework(
  e: unknown,
  context: string,
  bodyLimitBytes: number,
  log?: ApiLog,
): Problem {
  const err = (typeof e === "object" && e !== null ? e : {}) as FrameworkError;
  const fcode = typeof err.code === "string" ? err.code : "";
  const status = typeof err.statusCode === "number" ? err.statusCode : 500;
  const text = typeof err.message === "string" ? err.message.slice(0, 200) : "";
  if (fcode === "FST_ERR_CTP_BODY_TOO_LARGE" || status === 413) {
    return problem("BODY_TOO_LARGE", `the request body is larger than ${bodyLimitBytes} bytes`);
  }
  if (status === 404) return problem("ROUTE_NOT_FOUND", "no such route");
  if (status < 400 || status >= 500) return internal(e, context, log);
  switch (fcode) {
    case "FST_ERR_CTP_INVALID_MEDIA_TYPE":
      return problem("REQUEST_INVALID", "the body's Content-Type must be application/json");
    case "FST_ERR_CTP_INVALID_JSON_BODY":
      // fastify drops the parser's own message; prototype poisoning ends here too.
      return problem(
        "REQUEST_INVALID",
        "the body is not valid JSON (keys __proto__ and constructor are refused)",
      );
    case "FST_ERR_CTP_EMPTY_JSON_BODY":
      return problem("REQUEST_INVALID", "the body is empty; send a JSON object");
    case "FST_ERR_CTP_INVALID_CONTENT_LENGTH":
      return problem("REQUEST_INVALID", "Content-Length does not match the body");
    case "FST_ERR_BAD_URL":
      return problem("REQUEST_INVALID", "the URL is not valid (a malformed %-escape)");
    case "FST_ERR_MAX_PARAM_LENGTH":
      return problem("REQUEST_INVALID", "a path segment is too long");
  }
  return problem("REQUEST_INVALID", `the request is malformed: ${text}`);
}

export function errorBody(p: Problem): ErrorBody {
  const error: ErrorBody["error"] = { code: p.code, message: p.message, fix: p.fix };
  if (p.field !== undefined) error.field = p.field;
  if (p.detail !== undefined) error.detail = p.detail;
  return { error };
}

/**
 * Nova's fault names by status (nova/api/openstack/wsgi.py, Fault._fault_names); any other status is a
 * `computeFault`, as Nova answers it.
 */
export const NOVA_FAULT_NAMES: Readonly<Record<number, string>> = {
  400: "badRequest",
  401: "unauthorized",
  403: "forbidden",
  404: "itemNotFound",
  409: "conflictingRequest",
  413: "overLimit",
  501: "notImplemented",
  503: "serviceUnavailable",
};

export function novaFaultName(status: number): string {
  return NOVA_FAULT_NAMES[status] ?? "computeFault";
}

export interface NovaFaultDetail {
  code: number;
  message: string;
  virtqos: { code: ErrorCode; field?: string; fix: string };
}

export function novaFaultBody(p: Problem): Record<string, NovaFaultDetail> {
  const virtqos: NovaFaultDetail["virtqos"] = { code: p.code, fix: p.fix };
  if (p.field !== undefined) virtqos.field = p.field;
  return { [novaFaultName(p.status)]: { code: p.status, message: p.message, virtqos } };
}
