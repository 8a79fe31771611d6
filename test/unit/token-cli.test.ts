import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";
import { AuditStore } from "../../src/adapters/audit.js";
import { TokenStore } from "../../src/agent/auth.js";
import { describeLimits, parseSince } from "../../src/cli/audit.js";

// `virtqos token` and `virtqos audit` as a user runs them: a program with only these commands, in its own
// process (stdout is the command's own, exit statuses the catalogue's), on files in a temporary directory.

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const url = (p: string) => JSON.stringify(pathToFileURL(join(ROOT, p)).href);

// What src/cli/index.ts's main() does around a program, for a program holding just the commands under test;
// several invocations per process (a fresh program each, its stdout and stderr captured), since starting
// node with tsx costs far more than the commands.
const DRIVER = `
import { Command, CommanderError } from "commander";
import { addTokenCommands } from ${url("src/cli/token.ts")};
import { addAuditCommand } from ${url("src/cli/audit.ts")};
import { ERRORS, errorCodeOf } from ${url("src/core/errors.ts")};
const realOut = process.stdout.write.bind(process.stdout);
const runs = [];
for (const argv of JSON.parse(process.argv[1])) {
  const run = { status: 0, stdout: "", stderr: "" };
  process.stdout.write = (c) => ((run.stdout += c), true);
  process.stderr.write = (c) => ((run.stderr += c), true);
  const program = new Command("virtqos")
    .option("--state-dir <dir>")
    .exitOverride()
    .configureOutput({ writeOut: (t) => (run.stdout += t), writeErr: (t) => (run.stderr += t) });
  addTokenCommands(program);
  addAuditCommand(program);
  try {
    await program.parseAsync(argv, { from: "user" });
  } catch (e) {
    if (e instanceof CommanderError) run.status = e.exitCode === 0 ? 0 : 2;
    else {
      const code = errorCodeOf(e) ?? "INTERNAL";
      run.stderr += "virtqos: " + code + ": " + e.message + "\\n";
      run.status = ERRORS[code].exitCode;
    }
  }
  runs.push(run);
}
realOut(JSON.stringify(runs));
`;

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

let dir: string;
let tokensFile: string;
let stateDir: string;

/** Run each argument list as `virtqos ...`, in order, in one process. */
function virtqos(...invocations: string[][]): Promise<Run[]> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ["--import", "tsx", "--input-type=module", "-e", DRIVER, "--", JSON.stringify(invocations)],
      {
        cwd: ROOT,
        env: { ...process.env, VIRTQOS_TOKENS: tokensFile, VIRTQOS_STATE_DIR: join(dir, "not-this-one") },
        stdio: ["ignore", "pipe", "pipe"],
        timeout: 60_000,
      },
    );
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (c: string) => {
      stdout += c;
    });
    child.stderr.setEncoding("utf8").on("data", (c: string) => {
      stderr += c;
    });
    child.on("error", reject);
    child.on("close", (status) => {
      if (status !== 0) reject(new Error(`the driver failed (${status}): ${stderr}`));
      else resolve(JSON.parse(stdout) as Run[]);
    });
  });
}

before(() => {
  dir = mkdtempSync(join(tmpdir(), "virtqos-token-cli-"));
  tokensFile = join(dir, "etc", "tokens.yaml");
  stateDir = join(dir, "state");
});
after(() => rmSync(dir, { recursive: true, force: true }));

describe("virtqos token", () => {
  it("add prints the token once (alone on stdout, or in --json) and stores its hash only", async () => {
    const [r, j] = await virtqos(
      ["token", "add", "nova", "--role", "operator", "--domains", "instance-*", "web-?"],
      ["token", "add", "ops", "--role", "admin", "--json"],
    );
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^vq_[A-Za-z0-9_-]{43}\n$/);
    const token = r.stdout.trim();
    assert.match(r.stderr, /only time it is shown/);
    assert.match(r.stderr, /stores its SHA-256 hash, not the token/);
    assert.ok(!r.stderr.includes(token));
    assert.ok(!readFileSync(tokensFile, "utf8").includes(token));
    assert.deepEqual(new TokenStore(tokensFile).authenticate({ authorization: `Bearer ${token}` }), {
      name: "nova",
      role: "operator",
      domains: ["instance-*", "web-?"],
      via: "token",
    });

    assert.equal(j.status, 0, j.stderr);
    const json = JSON.parse(j.stdout) as Record<string, unknown>;
    assert.deepEqual(Object.keys(json), ["name", "role", "domains", "token"]);
    assert.deepEqual(
      { ...json, token: undefined },
      { name: "ops", role: "admin", domains: null, token: undefined },
    );
    assert.equal(
      new TokenStore(tokensFile).authenticate({ "x-auth-token": String(json.token) })?.name,
      "ops",
    );
    assert.equal(j.stderr, "", "--json: nothing but the JSON");
    assert.ok(!readFileSync(tokensFile, "utf8").includes(String(json.token)));
  });

  it("list: a table and JSON, never a hash or a token", async () => {
    const [text, json] = await virtqos(["token", "list"], ["token", "list", "--json"]);
    assert.equal(text.status, 0, text.stderr);
    const lines = text.stdout.trimEnd().split("\n");
    assert.match(lines[0], /^NAME\s+ROLE\s+DOMAINS\s+CREATED$/);
    assert.match(lines[1], /^nova\s+operator\s+instance-\*,web-\?\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$/);
    assert.match(lines[2], /^ops\s+admin\s+\(every domain\)\s+\d{4}-/);
    assert.equal(lines.length, 3);
    const { tokens } = JSON.parse(json.stdout) as { tokens: Record<string, unknown>[] };
    assert.deepEqual(
      tokens.map((t) => [t.name, t.role, t.domains]),
      [
        ["nova", "operator", ["instance-*", "web-?"]],
        ["ops", "admin", null],
      ],
    );
    assert.ok(!/sha256|vq_/.test(text.stdout + json.stdout));
  });

  it("revoke; a duplicate or unknown name: exit 1 with the catalogue code", async () => {
    const [dup, revoke, again] = await virtqos(
      ["token", "add", "nova", "--role", "reader"],
      ["token", "revoke", "ops"],
      ["token", "revoke", "ops"],
    );
    assert.equal(dup.status, 1);
    assert.match(dup.stderr, /TOKEN_EXISTS: a token named "nova" already exists/);
    assert.equal(revoke.status, 0, revoke.stderr);
    assert.match(revoke.stdout, /token "ops" revoked/);
    assert.equal(again.status, 1);
    assert.match(again.stderr, /TOKEN_NOT_FOUND: no token named "ops"/);
    assert.deepEqual(
      new TokenStore(tokensFile).list().map((t) => t.name),
      ["nova"],
    );
  });

  it("a bad role, name or glob: exit 2 naming the argument and what it accepts; nothing written", async () => {
    const was = readFileSync(tokensFile, "utf8");
    const [role, name, glob, missing] = await virtqos(
      ["token", "add", "x", "--role", "root"],
      ["token", "add", "bad name", "--role", "reader"],
      ["token", "add", "x", "--role", "reader", "--domains", "web[1]"],
      ["token", "add", "x"],
    );
    assert.equal(role.status, 2);
    assert.match(role.stderr, /USAGE: --role: "root" is not a role: use one of reader, operator, admin/);
    assert.equal(name.status, 2);
    assert.match(
      name.stderr,
      /USAGE: NAME: "bad name" is not a valid token name: it must be 1 to 63 letters/,
    );
    assert.equal(glob.status, 2);
    assert.match(glob.stderr, /USAGE: --domains: "web\[1\]" is not valid: it must be a domain-name glob/);
    assert.equal(missing.status, 2);
    assert.match(missing.stderr, /required option '--role <role>'/);
    assert.equal(readFileSync(tokensFile, "utf8"), was);
  });
});

describe("virtqos audit", () => {
  const now = Date.now();
  const ago = (ms: number) => new Date(now - ms).toISOString();
  const limit = (mbit: number) => ({
    rateBitsPerSec: mbit * 1e6,
    ceilBitsPerSec: mbit * 1e6,
    source: "live",
  });
  const audit = (...args: string[]) => ["--state-dir", stateDir, "audit", ...args];

  it("no log yet: says so, creates nothing", async () => {
    const [r, j] = await virtqos(audit(), audit("--json"));
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^no audit entries \(.*audit\.db does not exist/);
    assert.deepEqual(JSON.parse(j.stdout), { entries: [] });
    assert.ok(!existsSync(stateDir));
  });

  it("text: one line per entry with rates in units; --json: the entries; filters", async () => {
    const store = AuditStore.open(join(stateDir, "audit.db"));
    try {
      store.record({
        at: ago(3 * 86_400_000),
        who: "nova",
        door: "nova",
        domainName: "instance-0000abcd",
        domainUuid: "0b5c7e4e-7a5d-4c3b-9d6e-1f2a3b4c5d6e",
        iface: "52:54:00:12:34:56",
        before: { inbound: null },
        after: { inbound: limit(10) },
        result: "ok",
        txId: "tx-1",
      });
      store.record({
        at: ago(30 * 60_000),
        who: "uid:0",
        door: "cli",
        domainName: "web-1",
        iface: "vnet3",
        before: { inbound: limit(10), outbound: { ...limit(5), ceilBitsPerSec: 8e6 } },
        after: { inbound: null, outbound: limit(5) },
        result: "failed",
        code: "TC_BATCH_FAILED",
        message: "tc said\nno",
      });
    } finally {
      store.close();
    }

    const filters = [
      ["--domain", "web-1"],
      ["--domain", "0b5c7e4e-7a5d-4c3b-9d6e-1f2a3b4c5d6e"],
      ["--since", "1h"],
      ["--since", "2d"],
      ["--since", "4d"],
      ["--since", ago(60 * 60_000)],
      ["--limit", "1"],
    ];
    const [r, json, ...filtered] = await virtqos(
      audit(),
      audit("--json"),
      ...filters.map((f) => audit("--json", ...f)),
    );
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stdout.trimEnd().split("\n");
    assert.equal(lines.length, 3);
    assert.match(lines[0], /^TIME\s+WHO\s+DOOR\s+DOMAIN\s+IFACE\s+CHANGE\s+RESULT\s+TX$/);
    assert.match(
      lines[1],
      /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\s+nova\s+nova\s+instance-0000abcd\s+52:54:00:12:34:56\s+inbound no limit → inbound 10 Mbit\/s\s+ok\s+tx-1$/,
    );
    assert.match(
      lines[2],
      /uid:0\s+cli\s+web-1\s+vnet3\s+inbound 10 Mbit\/s, outbound 5 Mbit\/s peak 8 Mbit\/s → inbound no limit, outbound 5 Mbit\/s\s+failed TC_BATCH_FAILED: tc said no\s+-$/,
    );

    const { entries } = JSON.parse(json.stdout) as { entries: Record<string, unknown>[] };
    assert.deepEqual(
      entries.map((e) => [e.id, e.who, e.result]),
      [
        [1, "nova", "ok"],
        [2, "uid:0", "failed"],
      ],
    );
    assert.deepEqual(entries[0].after, { inbound: limit(10) });

    const ids = filtered.map((x, i) => {
      assert.equal(x.status, 0, `${filters[i]}: ${x.stderr}`);
      return (JSON.parse(x.stdout) as { entries: { id: number }[] }).entries.map((e) => e.id);
    });
    assert.deepEqual(ids, [[2], [1], [2], [2], [1, 2], [2], [2]]);
  });

  it("bad --since, --limit: exit 2 naming the option and the fix", async () => {
    const bad = ["0", "10001", "ten", "1.5"];
    const [since, ...limits] = await virtqos(
      audit("--since", "yesterday"),
      ...bad.map((b) => audit("--limit", b)),
    );
    assert.equal(since.status, 2);
    assert.match(
      since.stderr,
      /USAGE: --since "yesterday" is neither an ISO time nor a duration.*fix: .*30m, 1h, 2d/,
    );
    limits.forEach((r, i) => {
      assert.equal(r.status, 2, bad[i]);
      assert.ok(
        r.stderr.includes(`USAGE: --limit "${bad[i]}" is not a whole number from 1 to 10000`),
        r.stderr,
      );
    });
  });
});

describe("audit formatting helpers", () => {
  it("parseSince: ISO times, durations back from now, days", () => {
    const now = new Date("2026-11-29T17:00:00.000Z");
    assert.equal(parseSince("1h", now), "2026-11-29T16:00:00.000Z");
    assert.equal(parseSince("30m", now), "2026-11-29T16:30:00.000Z");
    assert.equal(parseSince("90s", now), "2026-11-29T16:58:30.000Z");
    assert.equal(parseSince("2d", now), "2026-11-27T17:00:00.000Z");
    assert.equal(parseSince("2026-11-29", now), "2026-11-29T00:00:00.000Z");
    assert.equal(parseSince("2026-11-29T18:00:00+01:00", now), "2026-11-29T17:00:00.000Z");
    for (const bad of ["", "5", "1y", "2026-13-01", "next week", "-1h"]) {
      assert.throws(() => parseSince(bad, now), /--since/, bad);
    }
  });

  it("describeLimits: per direction with units; other shapes as JSON", () => {
    assert.equal(describeLimits(undefined), "-");
    assert.equal(describeLimits(null), "no limit");
    assert.equal(
      describeLimits({
        inbound: { rateBitsPerSec: 2.5e9, ceilBitsPerSec: 3e9, burstBytes: 65536, floorBitsPerSec: 1e6 },
      }),
      "inbound 2.5 Gbit/s peak 3 Gbit/s burst 64 KiB floor 1 Mbit/s",
    );
    assert.equal(describeLimits({ x: 1 }), '{"x":1}');
  });
});
