import assert from "node:assert/strict";
import {
  chmodSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import {
  authorize,
  formatTokensFile,
  globMatch,
  hashToken,
  inScope,
  parseTokensFile,
  TokenStore,
  TokensFileError,
} from "../../src/agent/auth.js";
import type { Action, Principal, Role } from "../../src/agent/types.js";
import { VirtqosError } from "../../src/core/errors.js";

// Tokens on a real filesystem: the file holds hashes only, the agent's store sees other processes' changes,
// and every role, action and scope is judged as the API will judge it.

function withDir(fn: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), "virtqos-auth-"));
  try {
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const HASH = "a".repeat(64);

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof VirtqosError, `a VirtqosError, got ${e}`);
    return e.code;
  }
  return undefined;
}

describe("TokenStore: the tokens file", () => {
  it("add, list and revoke round-trip through a file that holds no token text, mode 0600", () =>
    withDir((dir) => {
      const file = join(dir, "etc", "virtqos", "tokens.yaml");
      const store = new TokenStore(file);
      assert.deepEqual(store.list(), [], "a missing file is no tokens");

      const nova = store.add("nova", "operator", ["instance-*"]);
      const admin = store.add("ops.admin", "admin");
      assert.match(nova.token, /^vq_[A-Za-z0-9_-]{43}$/);
      assert.notEqual(nova.token, admin.token);
      assert.deepEqual(
        store.list().map((t) => [t.name, t.role, t.domains]),
        [
          ["nova", "operator", ["instance-*"]],
          ["ops.admin", "admin", undefined],
        ],
      );
      for (const t of store.list()) {
        assert.ok(!("sha256" in t), "list() never returns hashes");
        assert.ok(!Number.isNaN(Date.parse(t.created)));
      }

      const text = readFileSync(file, "utf8");
      assert.ok(!text.includes(nova.token) && !text.includes(admin.token), "the file holds no token");
      assert.ok(!text.includes(nova.token.slice(3)), "not even without its prefix");
      assert.ok(text.includes(hashToken(nova.token)), "it holds the SHA-256 of the token");
      assert.match(text, /^# virtqos agent tokens:/);
      assert.equal(statSync(file).mode & 0o777, 0o600);
      assert.equal(statSync(join(dir, "etc", "virtqos")).mode & 0o777, 0o755);
      assert.deepEqual(readdirSync(join(dir, "etc", "virtqos")), ["tokens.yaml"], "no temporary file left");
      assert.equal(parseTokensFile(text, file).length, 2, "what it writes, it reads");

      assert.equal(
        codeOf(() => store.add("nova", "reader")),
        "TOKEN_EXISTS",
      );
      store.revoke("nova");
      assert.deepEqual(
        store.list().map((t) => t.name),
        ["ops.admin"],
      );
      assert.equal(
        codeOf(() => store.revoke("nova")),
        "TOKEN_NOT_FOUND",
      );
      assert.equal(statSync(file).mode & 0o777, 0o600, "a rewrite keeps 0600");
    }));

  it("refuses bad names, roles and globs when adding, naming the field", () =>
    withDir((dir) => {
      const store = new TokenStore(join(dir, "tokens.yaml"));
      for (const [name, role, domains, words] of [
        ["-x", "reader", undefined, /token name/],
        ["a b", "reader", undefined, /token name/],
        ["x".repeat(64), "reader", undefined, /token name/],
        ["ok", "root", undefined, /"root" is not a role: use one of reader, operator, admin/],
        ["ok", "reader", [], /domains is an empty list/],
        ["ok", "reader", ["inst ance"], /domain-name glob/],
        ["ok", "reader", ["inst[0-9]"], /domain-name glob/],
      ] as const) {
        assert.throws(
          () => store.add(name, role as Role, domains as string[] | undefined),
          (e: VirtqosError) => e.code === "REQUEST_INVALID" && words.test(e.message),
          `${name} ${role} ${domains}`,
        );
      }
      assert.ok(!existsSync(join(dir, "tokens.yaml")), "nothing written");
      assert.equal(store.add("x".repeat(63), "reader").entry.name.length, 63);
    }));

  it("authenticates a valid token through both headers; a wrong, revoked or empty one does not", () =>
    withDir((dir) => {
      const store = new TokenStore(join(dir, "tokens.yaml"));
      const { token } = store.add("nova", "operator", ["instance-*"]);
      const { token: other } = store.add("reader1", "reader");
      const want: Principal = { name: "nova", role: "operator", domains: ["instance-*"], via: "token" };
      assert.deepEqual(store.authenticate({ authorization: `Bearer ${token}` }), want);
      assert.deepEqual(store.authenticate({ authorization: `bearer ${token}` }), want, "scheme of any case");
      assert.deepEqual(store.authenticate({ authorization: `BEARER   ${token} ` }), want);
      assert.deepEqual(store.authenticate({ "x-auth-token": token }), want);
      assert.deepEqual(store.authenticate({ "X-Auth-Token": token }), want, "header names of any case");
      assert.deepEqual(store.authenticate({ "x-auth-token": [token] }), want);
      assert.deepEqual(store.authenticate({ "x-auth-token": other }), {
        name: "reader1",
        role: "reader",
        via: "token",
      });

      for (const headers of [
        {},
        { authorization: "" },
        { authorization: "Bearer" },
        { authorization: "Bearer " },
        { authorization: `Basic ${token}` },
        { authorization: `Bearer ${token}x` },
        { authorization: `Bearer ${token.slice(0, -1)}` },
        { authorization: `Bearer ${token} ${token}` },
        { authorization: `Bearer ${"vq_".padEnd(46, "A")}` },
        { "x-auth-token": "" },
        { "x-auth-token": hashToken(token) },
        { "x-auth-token": [token, other] },
        { "x-auth-token": "x".repeat(100_000) },
      ]) {
        assert.equal(store.authenticate(headers), undefined, JSON.stringify(headers).slice(0, 80));
      }

      store.revoke("nova");
      assert.equal(store.authenticate({ authorization: `Bearer ${token}` }), undefined, "revoked");
      assert.equal(store.authenticate({ "x-auth-token": other })?.name, "reader1");
    }));

  it("sees another instance's (another process's) add and revoke without a restart", () =>
    withDir((dir) => {
      const file = join(dir, "tokens.yaml");
      const agent = new TokenStore(file);
      const cli = new TokenStore(file);
      const { token } = cli.add("nova", "admin");
      assert.equal(agent.authenticate({ "x-auth-token": token })?.name, "nova", "picked up the new file");
      // Several rewrites within one mtime tick: the inode changes with every rename, so each is seen.
      const later = cli.add("later", "reader");
      assert.equal(agent.authenticate({ "x-auth-token": later.token })?.name, "later");
      cli.revoke("nova");
      assert.equal(agent.authenticate({ "x-auth-token": token }), undefined, "the revocation counts at once");
      rmSync(file);
      assert.equal(
        agent.authenticate({ "x-auth-token": later.token }),
        undefined,
        "a deleted file is no tokens",
      );
    }));

  it("an invalid file refuses every token until fixed, then the store recovers", () =>
    withDir((dir) => {
      const file = join(dir, "tokens.yaml");
      const store = new TokenStore(file);
      const { token } = store.add("nova", "admin");
      const good = readFileSync(file, "utf8");
      writeFileSync(file, good.replace("role: admin", "role: superuser"), { mode: 0o600 });
      assert.throws(
        () => store.authenticate({ "x-auth-token": token }),
        (e: TokensFileError) =>
          e instanceof TokensFileError && e.code === "REQUEST_INVALID" && /tokens\[0\]\.role/.test(e.message),
      );
      assert.throws(() => store.list(), TokensFileError, "list says so too");
      assert.throws(() => store.add("other", "reader"), TokensFileError, "and add does not overwrite it");
      writeFileSync(file, good);
      assert.equal(store.authenticate({ "x-auth-token": token })?.name, "nova");
      chmodSync(file, 0o666);
      assert.throws(
        () => store.authenticate({ "x-auth-token": token }),
        (e: Error) => /mode 0666 lets other users add tokens/.test(e.message) && /chmod 600/.test(e.message),
      );
    }));

  it("an empty file is no tokens", () =>
    withDir((dir) => {
      const file = join(dir, "tokens.yaml");
      writeFileSync(file, "", { mode: 0o600 });
      assert.deepEqual(new TokenStore(file).list(), []);
      assert.equal(new TokenStore(file).authenticate({ "x-auth-token": "vq_x" }), undefined);
    }));
});

describe("parseTokensFile: errors name the file, the entry and the field", () => {
  const F = "/etc/virtqos/tokens.yaml";
  const entry = (fields: string) =>
    `version: 1\ntokens:\n  - name: ok\n    role: reader\n    sha256: ${HASH}\n    created: 2026-11-29T17:00:00.000Z\n${fields}`;

  function problems(text: string): string {
    try {
      parseTokensFile(text, F);
    } catch (e) {
      assert.ok(e instanceof TokensFileError, String(e));
      assert.equal(e.code, "REQUEST_INVALID");
      assert.equal(e.file, F);
      assert.ok(e.message.includes(F));
      return e.message;
    }
    return assert.fail("no error");
  }

  it("reads a valid file", () => {
    const [t, u] = parseTokensFile(
      `${entry("")}  - name: nova\n    role: operator\n    domains: ["instance-*", web-?]\n    sha256: "${"0".repeat(64)}"\n    created: 2026-11-29T17:00:00Z\n`,
      F,
    );
    assert.deepEqual(t, { name: "ok", role: "reader", sha256: HASH, created: "2026-11-29T17:00:00.000Z" });
    assert.deepEqual(u.domains, ["instance-*", "web-?"]);
  });

  it("writes what it reads, quoting a hash YAML would read as a number", () => {
    const entries = [
      { name: "a", role: "reader" as const, sha256: "0".repeat(64), created: "2026-11-29T17:00:00.000Z" },
      {
        name: "b",
        role: "admin" as const,
        sha256: `1e${"5".repeat(62)}`,
        created: "2026-11-29T17:00:00.000Z",
      },
      {
        name: "c",
        role: "operator" as const,
        domains: ["*", "web-?"],
        sha256: HASH,
        created: "2026-11-29T17:00:00.000Z",
      },
    ];
    assert.deepEqual(parseTokensFile(formatTokensFile(entries), F), entries);
    assert.match(
      problems(entry("").replace(HASH, "0".repeat(64))),
      /tokens\[0\]\.sha256: 0 was read as a number, not text: .*fix: put the value in double quotes/,
    );
  });

  it("bad YAML: the line and column", () => {
    assert.match(problems("version: 1\ntokens: [\n"), /tokens\.yaml: line \d+:\d+: not valid YAML/);
    assert.match(problems("version: 1\nversion: 1\ntokens: []\n"), /line 2:1: .*unique/);
  });

  it("a wrong role", () => {
    assert.match(
      problems(entry("").replace("role: reader", "role: root")),
      /tokens\.yaml: tokens\[0\]\.role: "root" is not valid: it must be one of reader, operator, admin; fix: /,
    );
  });

  it("a hash of the wrong length or case", () => {
    const msg = problems(entry("").replace(HASH, "ab12"));
    assert.match(msg, /tokens\[0\]\.sha256: "ab12" is not valid: it must be 64 lowercase hex digits/);
    assert.match(msg, /fix: .*virtqos token revoke/);
    assert.match(problems(entry("").replace(HASH, "A".repeat(64))), /tokens\[0\]\.sha256/);
  });

  it("an unknown field, at the top or in an entry", () => {
    assert.match(
      problems(entry("    secret: x\n")),
      /tokens\[0\]\.secret: unknown field "secret"; fix: remove it/,
    );
    assert.match(problems(`${entry("")}extra: 1\n`), /tokens\.yaml: extra: unknown field "extra"/);
  });

  it("the second entry's missing field, a bad glob, a bad time, a duplicate name, a newer version", () => {
    const second = (fields: string) =>
      `${entry("")}  - name: two\n    role: admin\n    sha256: ${HASH}\n${fields}`;
    assert.match(problems(second("")), /tokens\[1\]\.created: "created" is required/);
    assert.match(
      problems(second("    created: 2026-11-29T17:00:00Z\n    domains: [good-*, 'bad glob']\n")),
      /tokens\[1\]\.domains\[1\]: "bad glob" is not valid: it must be a domain-name glob/,
    );
    assert.match(
      problems(second("    created: 2026-11-29T17:00:00Z\n    domains: []\n")),
      /tokens\[1\]\.domains: .*non-empty list/,
    );
    assert.match(
      problems(second("    created: yesterday\n")),
      /tokens\[1\]\.created: "yesterday" is not valid/,
    );
    assert.match(
      problems(second("    created: 2026-13-45T17:00:00Z\n")),
      /tokens\[1\]\.created: .*not a real time/,
    );
    assert.match(
      problems(entry("") + entry("").split("tokens:\n")[1]),
      /tokens\[1\]\.name: "ok" is also the name of tokens\[0\]/,
    );
    assert.match(
      problems("version: 2\ntokens: []\n"),
      /version: 2 is not valid: it must be 1; fix: .*newer virtqos/,
    );
    assert.match(problems("- a\n"), /\(top level\): the file must be a mapping/);
    assert.match(problems("version: 1\ntokens: [1]\n"), /tokens\[0\]: each entry must be a mapping/);
  });
});

describe("authorize: role × action", () => {
  const who = (role: Role, domains?: string[]): Principal => ({ name: role, role, domains, via: "token" });
  const matrix: Record<Role, Record<Action, "ok" | "forbidden">> = {
    reader: { read: "ok", write: "forbidden", admin: "forbidden" },
    operator: { read: "ok", write: "ok", admin: "forbidden" },
    admin: { read: "ok", write: "ok", admin: "ok" },
  };

  it("reader reads, operator also writes, admin does everything", () => {
    for (const [role, actions] of Object.entries(matrix) as [Role, Record<Action, string>][]) {
      for (const [action, want] of Object.entries(actions) as [Action, string][]) {
        assert.equal(authorize(who(role), action), want, `${role} ${action}`);
        assert.equal(authorize(who(role), action, "any-domain"), want, `${role} ${action} on a domain`);
      }
    }
  });

  it("a scoped principal: its role on the domains in scope, nothing on the others", () => {
    for (const role of ["reader", "operator", "admin"] as const) {
      const p = who(role, ["instance-*"]);
      for (const action of ["read", "write", "admin"] as const) {
        assert.equal(authorize(p, action, "instance-0000abcd"), matrix[role][action], `${role} ${action} in`);
        assert.equal(authorize(p, action, "web-1"), "forbidden", `${role} ${action} out of scope`);
        assert.equal(authorize(p, action), matrix[role][action], `${role} ${action}, no domain`);
      }
    }
  });

  it("an unknown role is refused everything", () => {
    assert.equal(authorize({ name: "x", role: "root" as Role, via: "token" }, "read"), "forbidden");
    assert.equal(authorize({ name: "x", role: "toString" as Role, via: "token" }, "read"), "forbidden");
  });
});

describe("scope globs", () => {
  const p = (domains?: string[]): Principal => ({ name: "t", role: "operator", domains, via: "token" });

  it("match the whole name: * any run, ? one character", () => {
    assert.ok(inScope(p(["instance-*"]), "instance-0000abcd"));
    assert.ok(inScope(p(["instance-*"]), "instance-"));
    assert.ok(!inScope(p(["instance-*"]), "xinstance-1"), "anchored at the start");
    assert.ok(!inScope(p(["web"]), "web-1"), "anchored at the end");
    assert.ok(inScope(p(["web-?"]), "web-1"));
    assert.ok(!inScope(p(["web-?"]), "web-12"), "? is exactly one character");
    assert.ok(!inScope(p(["web-?"]), "web-"));
    assert.ok(inScope(p(["db-*", "web-??"]), "web-12"), "any of the globs");
    assert.ok(inScope(p(["*"]), "anything at all"));
    assert.ok(inScope(p(["a*b*c"]), "a-b-b-c"));
    assert.ok(inScope(p(undefined), "whatever"), "no scope: every domain");
    assert.ok(!inScope(p([]), "whatever"), "an empty scope: none");
  });

  it("regex metacharacters are literal, in the glob and in the domain name", () => {
    assert.ok(!globMatch("web.1", "webx1"), ". is a dot");
    assert.ok(globMatch("web.1", "web.1"));
    assert.ok(globMatch("a:b", "a:b"));
    assert.ok(!globMatch("a*", "b(a"), "no search: a full match");
    assert.ok(globMatch("a*", "a(b|c)+[d]$^\\"), "metacharacters in the name are text");
    assert.ok(!globMatch("?", ".*"), "a name that looks like a regex is just two characters");
    assert.ok(!globMatch("a.*", "abc"), "a glob's .* is a dot and then any run");
    assert.ok(globMatch("a.*", "a.bc"));
    assert.ok(globMatch("instance-*", "instance-\nnewline"), "* crosses any character");
    assert.ok(globMatch("vm-?", "vm-\u{1F600}"), "? is one character, even outside the BMP");
  });
});
