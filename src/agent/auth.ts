import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import {
  closeSync,
  fchmodSync,
  fstatSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  type Stats,
  statSync,
  writeSync,
} from "node:fs";
import { dirname } from "node:path";
import { Type } from "@sinclair/typebox";
import { Value, ValueErrorType } from "@sinclair/typebox/value";
import { Document, isMap, isSeq, parseDocument } from "yaml";
import { randomHex } from "../adapters/random.js";
import { VirtqosError } from "../core/errors.js";
import type { Action, Authenticator, Principal, Role } from "./types.js";

// The agent's bearer tokens: who may call its TCP listener, with which role and on which domains. The tokens
// file holds only SHA-256 hashes; a token's text exists once, in `virtqos token add`'s output. The running
// agent re-reads the file when it changes on disk, so `token add` and `token revoke` need no restart.

export const ROLES: readonly Role[] = ["reader", "operator", "admin"];
export const TOKEN_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;
export const DOMAIN_GLOB_PATTERN = /^[A-Za-z0-9._*?:-]{1,128}$/;
export const TOKEN_PREFIX = "vq_";
export const TOKENS_FILE_VERSION = 1;

const SHA256_HEX = /^[0-9a-f]{64}$/;
const ISO_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z$/;
// A token is 46 characters; anything much longer is not one, and hashing it would only cost time.
const MAX_PRESENTED_TOKEN_CHARS = 1024;

const HEADER =
  " virtqos agent tokens: names, roles, scopes and SHA-256 hashes; the tokens themselves are shown once by `virtqos token add`";

/** One token as the file keeps it. */
export interface TokenEntry {
  name: string;
  role: Role;
  /** Domain-name globs (`*`, `?`) the token is limited to; undefined = every domain. */
  domains?: string[];
  /** SHA-256 of the whole token text, lowercase hex. */
  sha256: string;
  /** ISO 8601, UTC. */
  created: string;
}

/** What `list()` shows: everything but the hash. */
export type TokenInfo = Omit<TokenEntry, "sha256">;

const TokenSchema = Type.Object(
  {
    name: Type.String({ pattern: TOKEN_NAME_PATTERN.source }),
    role: Type.Union(ROLES.map((r) => Type.Literal(r))),
    domains: Type.Optional(
      Type.Array(Type.String({ pattern: DOMAIN_GLOB_PATTERN.source }), { minItems: 1, maxItems: 1000 }),
    ),
    sha256: Type.String({ pattern: SHA256_HEX.source }),
    created: Type.String({ pattern: ISO_UTC.source }),
  },
  { additionalProperties: false },
);
const TokensFileSchema = Type.Object(
  { version: Type.Literal(TOKENS_FILE_VERSION), tokens: Type.Array(TokenSchema) },
  { additionalProperties: false },
);

/** What each field accepts, for messages about an entry that breaks it. */
const FIELD_RULES: Record<string, { accepts: string; fix: string }> = {
  name: {
    accepts: "1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit",
    fix: "rename the entry",
  },
  role: { accepts: `one of ${ROLES.join(", ")}`, fix: "set `role: reader`, `operator` or `admin`" },
  domains: {
    accepts: "a non-empty list of domain-name globs",
    fix: 'write e.g. `domains: ["instance-*"]`, or remove `domains` to allow every domain',
  },
  glob: {
    accepts:
      "a domain-name glob: 1 to 128 letters, digits, '.', '_', ':', '-', '*' (any run) or '?' (one character)",
    fix: "write e.g. `instance-*` or `web-??`, or remove `domains` to allow every domain",
  },
  sha256: {
    accepts: "64 lowercase hex digits (the SHA-256 of the token)",
    fix: "do not edit hashes by hand: `virtqos token revoke NAME` then `virtqos token add NAME --role ...`",
  },
  created: {
    accepts: "an ISO 8601 UTC time such as 2026-11-29T17:00:00.000Z",
    fix: "write the time the token was created in that form",
  },
  version: {
    accepts: `${TOKENS_FILE_VERSION}`,
    fix: `write \`version: ${TOKENS_FILE_VERSION}\` (a newer version was written by a newer virtqos: run that one)`,
  },
  tokens: { accepts: "a list of token entries", fix: "write `tokens:` followed by `- name: ...` entries" },
};

export interface TokensFileProblem {
  /** `tokens[2].role`, `version`, `line 3:5`. */
  field: string;
  message: string;
  fix: string;
}

/** The tokens file is not valid: every problem names the entry index and the field. */
export class TokensFileError extends VirtqosError {
  constructor(
    readonly file: string,
    readonly problems: TokensFileProblem[],
  ) {
    super(
      "REQUEST_INVALID",
      `tokens file ${file} is invalid; the agent accepts no token until it is fixed:\n${problems
        .map((p) => `  ${file}: ${p.field}: ${p.message}; fix: ${p.fix}`)
        .join("\n")}`,
      { file, problems: problems.map((p) => ({ ...p })) },
    );
  }
}

/** `/tokens/2/role` -> `tokens[2].role`. */
function fieldOf(path: string): string {
  return path
    .split("/")
    .filter(Boolean)
    .map((p, i) => (/^\d+$/.test(p) ? `[${p}]` : i === 0 ? p : `.${p}`))
    .join("");
}

function schemaProblems(value: unknown): TokensFileProblem[] {
  const byPath = new Map<string, TokensFileProblem>();
  for (const e of Value.Errors(TokensFileSchema, value)) {
    const segments = e.path.split("/").filter(Boolean);
    let message: string;
    let fix: string;
    const path = e.path;
    if (e.type === ValueErrorType.ObjectAdditionalProperties) {
      const key = segments[segments.length - 1] ?? "";
      message = `unknown field "${key}"`;
      fix = `remove it; an entry has name, role, domains (optional), sha256 and created`;
    } else if (e.type === ValueErrorType.ObjectRequiredProperty) {
      const key = segments[segments.length - 1] ?? "";
      message = `"${key}" is required`;
      fix = FIELD_RULES[key]?.fix ?? `add \`${key}:\``;
    } else if (e.type === ValueErrorType.Object && segments.length === 0) {
      message = "the file must be a mapping with `version` and `tokens`";
      fix = `start it with \`version: ${TOKENS_FILE_VERSION}\` and \`tokens:\``;
    } else if (e.type === ValueErrorType.Object) {
      message = "each entry must be a mapping (name, role, sha256, created)";
      fix = "write the entry as `- name: ...` followed by `role: ...` lines";
    } else {
      // A wrong value: judged by the field it is in (a glob's index is below its `domains` field).
      const last = segments[segments.length - 1] ?? "";
      const glob = /^\d+$/.test(last) && segments[segments.length - 2] === "domains";
      const rule = FIELD_RULES[glob ? "glob" : last];
      message = `${JSON.stringify(e.value)} is not valid: it must be ${rule?.accepts ?? "as the format says"}`;
      fix = rule?.fix ?? "see the tokens file format in the README";
      // YAML reads an unquoted all-digit hash or a bare `yes` as a number or a boolean, not as text.
      const scalar = typeof e.value === "number" || typeof e.value === "boolean";
      if (scalar && last !== "version") {
        message = `${JSON.stringify(e.value)} was read as a ${typeof e.value}, not text: it must be ${rule?.accepts ?? "text"}`;
        fix = `put the value in double quotes; ${fix}`;
      }
    }
    if (byPath.has(path)) continue;
    // A problem on a whole entry or list (not a mapping) covers what TypeBox reports inside it.
    if ([...byPath.keys()].some((p) => path.startsWith(`${p}/`))) continue;
    byPath.set(path, { field: fieldOf(path) || "(top level)", message, fix });
  }
  return [...byPath.values()];
}

/** The entries of a tokens file's text; throws TokensFileError naming `file`, the entry and the field. */
export function parseTokensFile(text: string, file: string): TokenEntry[] {
  const doc = parseDocument(text);
  if (doc.errors.length) {
    throw new TokensFileError(
      file,
      doc.errors.map((e) => ({
        field: e.linePos ? `line ${e.linePos[0].line}:${e.linePos[0].col}` : "(YAML)",
        message: `not valid YAML: ${e.message.split("\n")[0].replace(/ at line \d+, column \d+:?$/, "")}`,
        fix: "fix the YAML syntax (indentation, quotes, a duplicate key)",
      })),
    );
  }
  const value: unknown = doc.toJS();
  // An empty file is an empty token list, like a missing one.
  if (value === null || value === undefined) return [];
  const problems = schemaProblems(value);
  if (!problems.length) {
    const entries = (value as { tokens: TokenEntry[] }).tokens;
    const seen = new Map<string, number>();
    entries.forEach((t, i) => {
      if (Number.isNaN(Date.parse(t.created))) {
        problems.push({
          field: `tokens[${i}].created`,
          message: `${JSON.stringify(t.created)} is not a real time`,
          fix: FIELD_RULES.created.fix,
        });
      }
      const first = seen.get(t.name);
      if (first !== undefined) {
        problems.push({
          field: `tokens[${i}].name`,
          message: `"${t.name}" is also the name of tokens[${first}]`,
          fix: "token names are unique: rename or remove one of them",
        });
      } else seen.set(t.name, i);
    });
  }
  if (problems.length) throw new TokensFileError(file, problems);
  return (value as { tokens: TokenEntry[] }).tokens.map((t) => ({
    name: t.name,
    role: t.role,
    ...(t.domains ? { domains: [...t.domains] } : {}),
    sha256: t.sha256,
    created: t.created,
  }));
}

/** The text of a tokens file holding `entries`. */
export function formatTokensFile(entries: TokenEntry[]): string {
  const doc = new Document({
    version: TOKENS_FILE_VERSION,
    tokens: entries.map((t) => ({
      name: t.name,
      role: t.role,
      ...(t.domains ? { domains: t.domains } : {}),
      sha256: t.sha256,
      created: t.created,
    })),
  });
  doc.commentBefore = HEADER;
  // Short glob lists read best on one line: `domains: [ instance-*, web-? ]`.
  const tokens = doc.get("tokens");
  for (const item of isSeq(tokens) ? tokens.items : []) {
    const domains = isMap(item) ? item.get("domains") : undefined;
    if (isSeq(domains)) domains.flow = true;
  }
  return doc.toString({ lineWidth: 0 });
}

/** A new token: `vq_` and 32 random bytes, base64url (46 characters). */
export function generateToken(): string {
  return `${TOKEN_PREFIX}${randomBytes(32).toString("base64url")}`;
}

/**
 * SHA-256 of the whole token text, lowercase hex. A token is 256 random bits, not a password: there is no
 * dictionary to try, so a fast hash is as strong as a slow KDF here and costs the agent nothing per request.
 */
export function hashToken(token: string): string {
  return createHash("sha256").update(token, "utf8").digest("hex");
}

/** Why `name` is not a token name, or undefined when it is one. */
export function tokenNameProblem(name: string): string | undefined {
  return TOKEN_NAME_PATTERN.test(name)
    ? undefined
    : `${JSON.stringify(name)} is not a valid token name: it must be ${FIELD_RULES.name.accepts}`;
}

/** Why `role` is not a role, or undefined when it is one. */
export function roleProblem(role: string): string | undefined {
  return (ROLES as readonly string[]).includes(role)
    ? undefined
    : `${JSON.stringify(role)} is not a role: use one of ${ROLES.join(", ")}`;
}

/** Why `glob` is not a domain-name glob, or undefined when it is one. */
export function domainGlobProblem(glob: string): string | undefined {
  return DOMAIN_GLOB_PATTERN.test(glob)
    ? undefined
    : `${JSON.stringify(glob)} is not valid: it must be ${FIELD_RULES.glob.accepts}`;
}

const globCache = new Map<string, RegExp>();

function globRegExp(glob: string): RegExp {
  let re = globCache.get(glob);
  if (!re) {
    // Only `*` and `?` are wildcards; every other character, `.` included, stands for itself.
    const body = [...glob]
      .map((c) => (c === "*" ? "[^]*" : c === "?" ? "[^]" : c.replace(/[\\^$.*+?()[\]{}|/]/g, "\\$&")))
      .join("");
    // `u`: `?` is one character even outside the BMP, not half of a surrogate pair.
    re = new RegExp(`^${body}$`, "u");
    if (globCache.size > 10_000) globCache.clear();
    globCache.set(glob, re);
  }
  return re;
}

/** Whether `domainName` matches `glob` as a whole (`*` any run of characters, `?` exactly one). */
export function globMatch(glob: string, domainName: string): boolean {
  return globRegExp(glob).test(domainName);
}

/** Whether the principal may see or act on the domain: no scope means every domain. */
export function inScope(principal: Principal, domainName: string): boolean {
  if (!principal.domains) return true;
  return principal.domains.some((g) => globMatch(g, domainName));
}

const ALLOWED: Record<Role, readonly Action[]> = {
  reader: ["read"],
  operator: ["read", "write"],
  admin: ["read", "write", "admin"],
};

/**
 * Whether the principal's role allows `action` and, when `domainName` is given, its scope covers that
 * domain. Requests not about one domain (a list, the audit log) pass the scope check; the API filters lists
 * with inScope().
 */
export function authorize(principal: Principal, action: Action, domainName?: string): "ok" | "forbidden" {
  // A role the file cannot hold (a caller's typo, `toString`) grants nothing.
  if (!Object.hasOwn(ALLOWED, principal.role) || !ALLOWED[principal.role].includes(action))
    return "forbidden";
  if (domainName !== undefined && !inScope(principal, domainName)) return "forbidden";
  return "ok";
}

function headerValue(
  headers: Record<string, string | string[] | undefined>,
  lowerName: string,
): string | undefined {
  let found: string | string[] | undefined = headers[lowerName];
  if (found === undefined) {
    for (const [k, v] of Object.entries(headers)) {
      if (k.toLowerCase() === lowerName) {
        found = v;
        break;
      }
    }
  }
  // A header sent twice is ambiguous about which token counts: neither does.
  if (Array.isArray(found)) return found.length === 1 ? found[0] : undefined;
  return found;
}

/** The token a request presents: `Authorization: Bearer <t>` (any case of the scheme), else `X-Auth-Token`. */
export function presentedToken(headers: Record<string, string | string[] | undefined>): string | undefined {
  const auth = headerValue(headers, "authorization");
  const bearer = auth === undefined ? undefined : /^\s*bearer\s+(\S+)\s*$/i.exec(auth);
  const token = bearer ? bearer[1] : headerValue(headers, "x-auth-token")?.trim();
  if (!token || token.length > MAX_PRESENTED_TOKEN_CHARS) return undefined;
  return token;
}

interface Loaded {
  /** What the file looked like when read: a change in any of these means read it again. */
  key: string;
  entries: TokenEntry[];
  hashes: Buffer[];
  /** The file was invalid: every authentication fails with this until it changes. */
  error?: VirtqosError;
}

const statKey = (s: Stats) => `${s.dev}:${s.ino}:${s.size}:${s.mtimeMs}:${s.ctimeMs}`;
const MISSING = "missing";

/** The tokens file: add, list, revoke, and the agent's Authenticator. */
export class TokenStore implements Authenticator {
  private loaded?: Loaded;

  constructor(readonly path: string) {}

  /** The entries as on disk now; a missing file is no tokens. Throws TokensFileError on an invalid file. */
  private current(): Loaded {
    let key: string;
    try {
      key = statKey(statSync(this.path));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw this.readError(e);
      key = MISSING;
    }
    if (this.loaded?.key === key) {
      if (this.loaded.error) throw this.loaded.error;
      return this.loaded;
    }
    this.loaded = this.read();
    if (this.loaded.error) throw this.loaded.error;
    return this.loaded;
  }

  private read(): Loaded {
    let fd: number;
    try {
      fd = openSync(this.path, "r");
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === "ENOENT") return { key: MISSING, entries: [], hashes: [] };
      throw this.readError(e);
    }
    try {
      // The key comes from the descriptor read, so a rename between stat and read is seen on the next call.
      const st = fstatSync(fd);
      const key = statKey(st);
      if (st.mode & 0o022) {
        const error = new TokensFileError(this.path, [
          {
            field: "(file mode)",
            message: `mode ${(st.mode & 0o777).toString(8).padStart(4, "0")} lets other users add tokens to it`,
            fix: `chmod 600 ${this.path}`,
          },
        ]);
        return { key, entries: [], hashes: [], error };
      }
      try {
        const entries = parseTokensFile(readFileSync(fd, "utf8"), this.path);
        return { key, entries, hashes: entries.map((t) => Buffer.from(t.sha256, "hex")) };
      } catch (e) {
        if (e instanceof VirtqosError) return { key, entries: [], hashes: [], error: e };
        throw this.readError(e);
      }
    } finally {
      closeSync(fd);
    }
  }

  private readError(e: unknown): VirtqosError {
    return new VirtqosError("INTERNAL", `cannot read the tokens file ${this.path}: ${(e as Error).message}`);
  }

  private write(entries: TokenEntry[]): void {
    const dir = dirname(this.path);
    const tmp = `${this.path}.${process.pid}.${randomHex(8)}.tmp`;
    try {
      mkdirSync(dir, { recursive: true, mode: 0o755 });
      const fd = openSync(tmp, "wx", 0o600);
      try {
        // The umask could only narrow 0600, but a stricter mode is set, never a wider one.
        fchmodSync(fd, 0o600);
        writeSync(fd, formatTokensFile(entries));
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      renameSync(tmp, this.path);
    } catch (e) {
      rmSync(tmp, { force: true });
      throw new VirtqosError(
        "INTERNAL",
        `cannot write the tokens file ${this.path}: ${(e as Error).message} (run as root, or set VIRTQOS_TOKENS to a file you may write)`,
      );
    }
    try {
      const dfd = openSync(dir, "r");
      try {
        fsyncSync(dfd);
      } finally {
        closeSync(dfd);
      }
    } catch {
      // Some filesystems refuse fsync on a directory; the rename is still atomic.
    }
  }

  /**
   * Create a token. Its text is returned once and never stored: the file keeps its SHA-256 only.
   * REQUEST_INVALID for a bad name, role or glob; TOKEN_EXISTS when the name is taken.
   */
  add(name: string, role: Role, domains?: string[]): { token: string; entry: TokenInfo } {
    const problem =
      tokenNameProblem(name) ??
      roleProblem(role) ??
      (domains && !domains.length
        ? "domains is an empty list: give at least one glob, or none for every domain"
        : undefined) ??
      domains?.map(domainGlobProblem).find((p) => p !== undefined);
    if (problem) throw new VirtqosError("REQUEST_INVALID", problem);
    const entries = this.current().entries;
    if (entries.some((t) => t.name === name)) {
      throw new VirtqosError("TOKEN_EXISTS", `a token named "${name}" already exists in ${this.path}`);
    }
    const token = generateToken();
    const entry: TokenEntry = {
      name,
      role,
      ...(domains ? { domains: [...new Set(domains)] } : {}),
      sha256: hashToken(token),
      created: new Date().toISOString(),
    };
    this.write([...entries, entry]);
    const { sha256: _, ...info } = entry;
    return { token, entry: info };
  }

  /** Every token, without hashes, in the file's order. */
  list(): TokenInfo[] {
    return this.current().entries.map(({ sha256: _, ...info }) => ({
      ...info,
      ...(info.domains ? { domains: [...info.domains] } : {}),
    }));
  }

  /** Remove a token: a running agent refuses it from its next request on. TOKEN_NOT_FOUND if none has `name`. */
  revoke(name: string): void {
    const entries = this.current().entries;
    if (!entries.some((t) => t.name === name)) {
      throw new VirtqosError("TOKEN_NOT_FOUND", `no token named "${name}" in ${this.path}`);
    }
    this.write(entries.filter((t) => t.name !== name));
  }

  /**
   * The principal whose token the headers present, or undefined. Compares the token's hash with every stored
   * hash in constant time and without stopping at a match, so timing tells nothing about which (or whether
   * one) matched. Throws TokensFileError while the file is invalid: refusing every token is safer than
   * guessing which entries still count.
   */
  authenticate(headers: Record<string, string | string[] | undefined>): Principal | undefined {
    const token = presentedToken(headers);
    if (token === undefined) return undefined;
    const { entries, hashes } = this.current();
    const presented = createHash("sha256").update(token, "utf8").digest();
    let match: TokenEntry | undefined;
    for (let i = 0; i < hashes.length; i++) {
      const equal = timingSafeEqual(presented, hashes[i]);
      match = equal && !match ? entries[i] : match;
    }
    if (!match) return undefined;
    return {
      name: match.name,
      role: match.role,
      ...(match.domains ? { domains: [...match.domains] } : {}),
      via: "token",
    };
  }
}
