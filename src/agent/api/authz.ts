import { errorCodeOf } from "../../core/errors.js";
import type { Action, AgentService, DomainSummary, Principal, Role } from "../types.js";
import { RequestProblem } from "./errors.js";

// Authorization is two questions: may this role do this kind of thing at all (answered before the request
// is even parsed), and is this domain in the token's scope (answered against libvirt's name for it).

const ROLE_ACTIONS: Readonly<Record<Role, readonly Action[]>> = {
  reader: ["read"],
  operator: ["read", "write"],
  admin: ["read", "write", "admin"],
};

export function roleAllows(role: Role, action: Action): boolean {
  // A role the token store does not know (a newer file, a typo) grants nothing.
  return Object.hasOwn(ROLE_ACTIONS, role) && ROLE_ACTIONS[role].includes(action);
}

// Exactly the characters `u` mode lets us escape; any other escape is a syntax error there.
const REGEX_META = /[\\^$.*+?()[\]{}|/]/;

/** A scope glob as a regular expression matching the whole name: `*` any run, `?` one character. */
export function globToRegExp(glob: string): RegExp {
  let source = "";
  for (const ch of glob) {
    if (ch === "*") source += ".*";
    else if (ch === "?") source += ".";
    else if (REGEX_META.test(ch)) source += `\\${ch}`;
    else source += ch;
  }
  // `s`: a name cannot hold a newline, but a glob must never be defeated by one; `u`: `?` is one code point.
  return new RegExp(`^${source}$`, "su");
}

export function isScoped(p: Principal | undefined): boolean {
  return p?.domains !== undefined;
}

export function inScope(p: Principal, domainName: string): boolean {
  if (p.domains === undefined) return true;
  return p.domains.some((g) => globToRegExp(g).test(domainName));
}

/** The same words whether the domain is out of scope or does not exist, so neither can be told apart. */
export function scopeRefusal(p: Principal, requested: string): RequestProblem {
  return new RequestProblem("FORBIDDEN", `token "${p.name}" may not access domain ${JSON.stringify(requested)}`);
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
