import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { afterEach, beforeEach, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import { readBootId } from "../../src/adapters/boot.js";
import {
  bootIdOverride,
  DEFAULT_POLICY_PATH,
  DEFAULT_RUN_DIR,
  DEFAULT_STATE_DIR,
  defaultRunDir,
  defaultStateDir,
  detachedEnv,
  hookNetns,
  logTargetFromEnv,
  policyPath,
} from "../../src/config.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const VARS = [
  "VIRTQOS_TOKENS",
  "VIRTQOS_API_SOCKET",
  "VIRTQOS_LIBVIRT_URI",
  "VIRTQOS_CONFIG",
  "VIRTQOS_RUN_DIR",
  "VIRTQOS_STATE_DIR",
  "VIRTQOS_LOG",
  "VIRTQOS_NETNS",
  "VIRTQOS_BOOT_ID",
  "VIRTQOS_OVSDB",
];

describe("config: defaults and overrides", () => {
  let saved: Record<string, string | undefined>;
  beforeEach(() => {
    saved = Object.fromEntries(VARS.map((v) => [v, process.env[v]]));
    for (const v of VARS) delete process.env[v];
  });
  afterEach(() => {
    for (const v of VARS) {
      if (saved[v] === undefined) delete process.env[v];
      else process.env[v] = saved[v];
    }
  });

  it("defaults without the environment", () => {
    assert.equal(DEFAULT_POLICY_PATH, "/etc/virtqos/policy.yaml");
    assert.equal(DEFAULT_RUN_DIR, "/run/virtqos");
    assert.equal(DEFAULT_STATE_DIR, "/var/lib/virtqos");
    assert.equal(policyPath(), "/etc/virtqos/policy.yaml");
    assert.equal(defaultRunDir(), "/run/virtqos");
    assert.equal(defaultStateDir(), "/var/lib/virtqos");
    assert.equal(logTargetFromEnv(), "syslog");
    assert.equal(logTargetFromEnv("stderr"), "stderr");
    assert.equal(hookNetns(), undefined);
    assert.equal(bootIdOverride(), undefined);
    assert.equal(detachedEnv().VIRTQOS_LOG, "syslog");
  });

  it("reads the environment when asked, not when loaded", () => {
    process.env.VIRTQOS_CONFIG = "/tmp/p.yaml";
    process.env.VIRTQOS_RUN_DIR = "/tmp/run";
    process.env.VIRTQOS_STATE_DIR = "/tmp/state";
    process.env.VIRTQOS_NETNS = "ns1";
    process.env.VIRTQOS_BOOT_ID = "boot-2";
    assert.equal(policyPath(), "/tmp/p.yaml");
    assert.equal(defaultRunDir(), "/tmp/run");
    assert.equal(defaultStateDir(), "/tmp/state");
    assert.equal(hookNetns(), "ns1");
    assert.equal(bootIdOverride(), "boot-2");
    assert.equal(readBootId(), "boot-2");
    process.env.VIRTQOS_RUN_DIR = "/tmp/run2";
    assert.equal(defaultRunDir(), "/tmp/run2");
  });

  it("an explicit value (a CLI option) wins over the environment", () => {
    process.env.VIRTQOS_CONFIG = "/tmp/p.yaml";
    process.env.VIRTQOS_NETNS = "ns1";
    assert.equal(policyPath("/tmp/explicit.yaml"), "/tmp/explicit.yaml");
    assert.equal(hookNetns("ns2"), "ns2");
  });

  it("VIRTQOS_LOG: syslog, stderr or silent; anything else is syslog; empty is unset", () => {
    for (const [value, hook, cli] of [
      ["stderr", "stderr", "stderr"],
      ["silent", "silent", "silent"],
      ["syslog", "syslog", "syslog"],
      ["journal", "syslog", "syslog"],
      ["", "syslog", "stderr"],
    ] as const) {
      process.env.VIRTQOS_LOG = value;
      assert.equal(logTargetFromEnv(), hook, value);
      assert.equal(logTargetFromEnv("stderr"), cli, value);
    }
  });

  it("the confirm timer's environment keeps the caller's and logs to syslog unless told otherwise", () => {
    process.env.VIRTQOS_RUN_DIR = "/tmp/run";
    assert.equal(detachedEnv().VIRTQOS_RUN_DIR, "/tmp/run");
    assert.equal(detachedEnv().VIRTQOS_LOG, "syslog");
    process.env.VIRTQOS_LOG = "stderr";
    assert.equal(detachedEnv().VIRTQOS_LOG, "stderr");
  });

  it("an empty VIRTQOS_BOOT_ID is no override", () => {
    process.env.VIRTQOS_BOOT_ID = "";
    assert.equal(bootIdOverride(), undefined);
    assert.notEqual(readBootId(), "");
  });
});

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith(".ts") ? [join(dir, e.name)] : [],
  );
}

const ENV_READ = /process\.env(\.|\[\s*["'`])VIRTQOS_/;

describe("config: the only reader of VIRTQOS_* variables", () => {
  it("no file under src/ but src/config.ts touches process.env.VIRTQOS_*", () => {
    const offenders = sources(join(ROOT, "src"))
      .map((f) => relative(ROOT, f))
      // src/lab/ is exempt: the lab sets VIRTQOS_CONFIG/RUN_DIR/LOG to configure the hooks it runs in its own
      // process, as libvirtd's environment would (and restores them); it reads none for its own configuration.
      .filter((f) => f !== "src/config.ts" && !f.startsWith("src/lab/"))
      .filter((f) => ENV_READ.test(readFileSync(join(ROOT, f), "utf8")));
    assert.deepEqual(offenders, [], "read these through src/config.ts");
  });

  it("README's environment variables section lists every variable config.ts reads", () => {
    const config = readFileSync(join(ROOT, "src/config.ts"), "utf8");
    const read = [...new Set([...config.matchAll(/process\.env\.(VIRTQOS_[A-Z_]+)/g)].map((m) => m[1]))];
    assert.deepEqual(read.sort(), [...VARS].sort());
    const readme = readFileSync(join(ROOT, "README.md"), "utf8");
    const at = readme.indexOf("### Environment variables");
    assert.ok(at >= 0, "README has a ### Environment variables section");
    const section = readme.slice(at);
    const table = section.slice(0, section.indexOf("\n\n", section.indexOf("| variable |")));
    for (const v of read) assert.match(table, new RegExp(`^\\| \`${v}\` \\| [^|]+ \\| [^|]+ \\|$`, "m"), v);
  });
});
