import { errorCodeOf } from "../../core/errors.js";
import { authorize, inScope } from "../auth.js";
import type { Action, AgentService, DomainSummary, Principal, Role } from "../types.js";
import { RequestProblem } from "./errors.js";

// Authorization is two questions: may this role do this kind of thing at all (answered before the request
// is even parsed), and is this domain in the token's scope (answered against libvirt's name for it).

/** Whether the role allows the kind of request at all (scope is checked once the domain is known). */
export function roleAllows(role: Role, action: Action): boolean {
  return authorize({ name: "", role, via: "token" }, action) === "ok";
}

export function isScoped(p: Principal | undefined): boolean {
  return p?.domains !== undefined;
}

export { inScope };

/** The same words whether the domain is out of scope or does not exist, so neither can be told apart. */
export function scopeRefusal(p: Principal, requested: string): RequestProblem {
  return new RequestProblem(
    "FORBIDDEN",
    `token "${p.name}" may not access domain ${JSON.stringify(requested)}`,
  );
}

export interface ResolvedDomain {
  /** What to hand the service: the UUID once the domain was looked up, else the name or UUID as asked. */
  target: string;
  summary?: DomainSummary;
}

/**
 * Look the domain up where the answer matters: always for a scoped token (its scope is a set of names),
 * and when the caller needs the summary. A scoped token learns nothing about domains outside its scope:
 * a missing domain is refused exactly like one it may not see. The UUID goes to the service afterwards so
 * the change lands on the domain whose name was checked, even if a name is reused meanwhile.
 */
export async function resolveDomain(
  service: AgentService,
  p: Principal,
  domain: string,
  needSummary: boolean,
): Promise<ResolvedDomain> {
  if (!isScoped(p) && !needSummary) return { target: domain };
  let summary: DomainSummary;
  try {
    summary = await service.findDomain(domain);
  } catch (e) {
    if (isScoped(p) && errorCodeOf(e) === "DOMAIN_NOT_FOUND") throw scopeRefusal(p, domain);
    throw e;
  }
  if (!inScope(p, summary.name)) throw scopeRefusal(p, domain);
  return { target: summary.uuid, summary };
}
