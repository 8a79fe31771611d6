import { mkdirSync, readFileSync, renameSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Policy } from "../core/policy.js";
import { emptyPolicy } from "../core/policy-empty.js";

// Reading the policy on the hook's hot path. Parsing YAML and checking it against the schema costs more
// than the rest of a guest start together, so the validated result is cached in the run directory, keyed
// by the file's identity and mtime; the parser is only loaded when the file changed.

/** Whether an invalid policy file at least says `strict: true`: the hook must honour that even then. */
export function policyAsksStrict(file: string): boolean {
  try {
    return /^strict:\s*true\s*(#.*)?$/m.test(readFileSync(file, "utf8"));
  } catch {
    return false;
  }
}

/**
 * The shape of the parsed policy this build caches. Bump it whenever Policy changes shape: an upgrade without
 * a reboot finds the old build's cache in /run, and a hook reading a policy without the fields it expects
 * (a group's resolved limits) would fail on every guest start.
 */
const CACHE_FORMAT = 3;

interface CacheEntry {
  format: number;
  file: string;
  dev: number;
  ino: number;
  size: number;
  mtimeMs: number;
  policy: Policy;
}

/** A missing file is an empty policy; an invalid one throws PolicyError (never cached). */
export async function loadPolicyCached(file: string, runDir: string): Promise<Policy> {
  let st: ReturnType<typeof statSync>;
  try {
    st = statSync(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return emptyPolicy(file);
    throw e;
  }
  const cacheFile = join(runDir, "policy-cache.json");
  const same = (c: CacheEntry) =>
    c.format === CACHE_FORMAT &&
    c.file === file &&
    c.dev === st.dev &&
    c.ino === st.ino &&
    c.size === st.size &&
    c.mtimeMs === st.mtimeMs;
  try {
    const cached = JSON.parse(readFileSync(cacheFile, "utf8")) as CacheEntry;
    if (same(cached)) return cached.policy;
  } catch {
    // No cache or a torn one: parse.
  }
  const { parsePolicy } = await import("../core/policy.js");
  const policy = parsePolicy(readFileSync(file, "utf8"), file);
  try {
    mkdirSync(runDir, { recursive: true });
    const entry: CacheEntry = {
      format: CACHE_FORMAT,
      file,
      dev: st.dev,
      ino: st.ino,
      size: st.size,
      mtimeMs: st.mtimeMs,
      policy,
    };
    const tmp = `${cacheFile}.${process.pid}`;
    writeFileSync(tmp, JSON.stringify(entry));
    renameSync(tmp, cacheFile);
  } catch {
    // Read-only run dir: parse again next time.
  }
  return policy;
}
