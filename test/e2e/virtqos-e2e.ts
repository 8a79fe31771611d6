/**
 * Shared plumbing of the end-to-end tests that drive virtqos through its installed libvirt qemu hook
 * (virtqos-hook.test.ts, groups-libvirt.test.ts); libvirt-env.ts is the libvirt layer underneath.
 *
 * libvirtd runs hooks with ITS environment (scripts/setup-libvirt.sh starts it with `env -i`), so the hook
 * always uses the default /etc/virtqos/policy.yaml and /run/virtqos. These tests use those real default paths
 * rather than changing libvirtd's environment: they write /etc/virtqos/policy.yaml themselves and install the
 * hook with `virtqos install-hook` (what was there is saved first and put back at the end), and they read the
 * hook's records in /run/virtqos/domains. The CLI calls they make run with VIRTQOS_CONFIG / VIRTQOS_RUN_DIR /
 * VIRTQOS_NETNS / VIRTQOS_LOG removed from the environment (importing this module does that), so they look
 * exactly where the hook does.
 *
 * Here: the paths and the CLI, the host files a test changes and puts back (HookTestHost), building and
 * installing the hook, the kernel state as tc/ip print it, the state records, `virtqos status`, and the
 * virtqos objects a test may have left behind.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdir, readdir, readFile, rename, rm, rmdir, stat, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import type { TestContext } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import type { StatusRow } from "../../src/app/status.js";
import type { DomainRecord } from "../../src/core/model.js";
import { recordIfb } from "../../src/core/plan.js";
import {
  cleanupByPrefix,
  QEMU_HOOK_DIR,
  type RunOptions,
  type RunResult,
  reloadLibvirtd,
  run,
  runOk,
  teardown,
} from "./libvirt-env.js";

// The CLI must look where libvirtd's hook looks (see the header).
for (const k of ["VIRTQOS_CONFIG", "VIRTQOS_RUN_DIR", "VIRTQOS_NETNS", "VIRTQOS_LOG"]) delete process.env[k];

export const REPO = fileURLToPath(new URL("../../", import.meta.url));
const CLI = join(REPO, "bin", "virtqos");
const DIST_CLI = join(REPO, "dist", "virtqos.mjs");
export const DIST_HOOK = join(REPO, "dist", "hook-loader.cjs");
export const HOOKS_DIR = dirname(QEMU_HOOK_DIR); // /etc/libvirt/hooks, install-hook's default
export const HOOK_FILE = join(QEMU_HOOK_DIR, "virtqos");
const POLICY_DIR = "/etc/virtqos";
const POLICY_FILE = join(POLICY_DIR, "policy.yaml");
const RUN_DIR = "/run/virtqos";
const RECORDS_DIR = join(RUN_DIR, "domains");
const POLICY_CACHE = join(RUN_DIR, "policy-cache.json");
/** virtqos's filter priorities on a tap's hooks. */
export const PRIO_MIN = 64000;
export const PRIO_MAX = 64099;

// ------------------------------------------------------------------ the CLI

export function cli(args: readonly string[], opts: RunOptions = {}): Promise<RunResult> {
  return run(process.execPath, [CLI, ...args], opts);
}

export async function cliOk(args: readonly string[]): Promise<string> {
  const r = await cli(args);
  if (r.code !== 0)
    throw new Error(`virtqos ${args.join(" ")} exited ${r.code}: ${(r.stderr || r.stdout).trim()}`);
  return r.stdout;
}

/** Time since `t0` (a performance.now()), for diagnostics. */
export const ms = (t0: number) => `${Math.round(performance.now() - t0)} ms`;

// ------------------------------------------------------------ host files

/** Write atomically, so a hook running at that moment never reads half a policy. */
export async function writePolicy(text: string): Promise<void> {
  await mkdir(POLICY_DIR, { recursive: true });
  const tmp = `${POLICY_FILE}.e2e-tmp`;
  await writeFile(tmp, text, { mode: 0o644 });
  await rename(tmp, POLICY_FILE);
}

interface Saved {
  text: string;
  mode: number;
}
async function save(path: string): Promise<Saved | undefined> {
  if (!existsSync(path)) return undefined;
  return { text: await readFile(path, "utf8"), mode: (await stat(path)).mode & 0o7777 };
}
async function restore(path: string, saved: Saved | undefined): Promise<void> {
  if (!saved) {
    await rm(path, { force: true });
    return;
  }
  const tmp = `${path}.e2e-tmp`;
  await writeFile(tmp, saved.text, { mode: saved.mode });
  await rename(tmp, path);
}

/** One cleanup step: runs `fn`, and on failure notes it and carries on. */
type Step = (what: string, fn: () => Promise<unknown>) => Promise<void>;

/**
 * What one hook test owns on the host: the domains it gives a UUID (`newUuid`), the group trees it names, the
 * installed hook, the policy and the hook's policy cache (saved before the test and put back after it), and a
 * baseline of the virtqos objects others already had on the host.
 */
export class HookTestHost {
  /** Every UUID this test gives a domain: leftovers of these are ours to check and to clean. */
  readonly ourUuids = new Set<string>();
  /** This test's group IFBs (by name): anything of them left over is ours too. */
  readonly ourTrees: ReadonlySet<string>;
  /** virtqos objects present before the test started (someone else's): never blamed on this test. */
  private baseline = new Set<string>();

  constructor(
    /** Every host object and domain of the test starts with this: a crashed earlier run is swept up front. */
    readonly prefix: string,
    /** The policy in place between steps and for the last stops. */
    readonly neutralPolicy: string,
    ourTrees: Iterable<string> = [],
  ) {
    this.ourTrees = new Set(ourTrees);
  }

  newUuid(): string {
    const u = randomUUID();
    this.ourUuids.add(u);
    return u;
  }

  /**
   * Save the host files the test changes, register the cleanup that puts everything back, sweep what a crashed
   * earlier run left, write the neutral policy and take the baseline.
   */
  async setUp(t: TestContext): Promise<void> {
    const started = performance.now();
    const savedHook = await save(HOOK_FILE);
    const savedPolicy = await save(POLICY_FILE);
    const savedCache = await save(POLICY_CACHE);
    const policyDirExisted = existsSync(POLICY_DIR);

    t.after(async () => {
      const errors: string[] = [];
      const step: Step = async (what, fn) => {
        try {
          await fn();
        } catch (e) {
          errors.push(`${what}: ${e instanceof Error ? e.message : String(e)}`);
        }
      };
      const t0 = performance.now();
      // Domains go while the hook is still installed and a valid policy is in place: virtqos removes its objects.
      await step("neutral policy for the last stops", () => writePolicy(this.neutralPolicy));
      await step("teardown", teardown);
      await step("sweep by prefix", () => cleanupByPrefix(this.prefix));
      // Whatever virtqos still holds for this test's domains (an assertion failed half-way, a virtqos bug).
      for (const uuid of this.ourUuids) {
        await step(`virtqos clear --domain ${uuid}`, async () => {
          if (await holdsDomain(uuid)) {
            t.diagnostic(`leftovers of domain ${uuid}: removing them with virtqos clear`);
            await cliOk(["clear", "--domain", uuid]);
          }
        });
      }
      // Group IFBs of this test's groups that outlived their members (virtqos bug): delete them by name.
      for (const l of await this.ourGroupIfbs().catch(() => [] as LinkJson[])) {
        t.diagnostic(`group IFB ${l.ifname} (${l.ifalias}) outlived its members: deleting it`);
        await step(`ip link del ${l.ifname}`, () => runOk("ip", ["link", "del", "dev", l.ifname]));
      }
      await step("hook file", () => restore(HOOK_FILE, savedHook));
      await step("policy file", async () => {
        await restore(POLICY_FILE, savedPolicy);
        if (!policyDirExisted) await rmdir(POLICY_DIR).catch(() => {});
      });
      await step("policy cache", () => restore(POLICY_CACHE, savedCache));
      // With the hook gone (and nothing else in qemu.d), a SIGHUP turns libvirtd's qemu hooks off again.
      await step("reload libvirtd", reloadLibvirtd);
      t.diagnostic(`cleanup: ${ms(t0)}; whole test: ${ms(started)}`);
      if (errors.length) throw new Error(`cleanup left things behind:\n  ${errors.join("\n  ")}`);
    });

    await cleanupByPrefix(this.prefix);
    await writePolicy(this.neutralPolicy);
    this.baseline = new Set((await virtqosObjectsOnHost()).map((o) => `${o.dev}|${o.what}`));
    if (this.baseline.size)
      t.diagnostic(
        `virtqos objects of others already on this host (ignored): ${[...this.baseline].join(", ")}`,
      );
    // This test's group IFBs left by a crashed earlier run (their names are not under the prefix): delete them.
    for (const l of await this.ourGroupIfbs()) {
      t.diagnostic(`group IFB ${l.ifname} (${l.ifalias}) left by an earlier run: deleting it`);
      await runOk("ip", ["link", "del", "dev", l.ifname]);
    }
  }

  private async ourGroupIfbs(): Promise<LinkJson[]> {
    if (!this.ourTrees.size) return [];
    return (await links("ifb")).filter(
      (l) => this.ourTrees.has(l.ifname) && l.ifalias?.startsWith("virtqos/1,group,"),
    );
  }

  /**
   * virtqos objects that are not in the baseline, not another domain's (by record or alias), and not on one
   * of `liveDevs` (this test's running guests and trees): anything listed here was left behind by this test.
   */
  async strayObjects(liveDevs: readonly string[] = []): Promise<string[]> {
    const owned = new Set<string>(liveDevs);
    for (const r of await allRecords()) {
      if (this.ourUuids.has(r.domainUuid)) continue;
      for (const i of r.interfaces) {
        if (i.dev) owned.add(i.dev);
        const ifb = recordIfb(r.domainUuid, i);
        if (ifb) owned.add(ifb);
      }
    }
    for (const l of await links()) {
      const m = /^virtqos\/1,iface,([^,]+),/.exec(l.ifalias ?? "");
      if (m && !this.ourUuids.has(m[1] ?? "")) owned.add(l.ifname);
      // Other groups' trees are someone else's; this test's groups' are not.
      if (l.ifalias?.startsWith("virtqos/1,group,") && !this.ourTrees.has(l.ifname)) owned.add(l.ifname);
    }
    return (await virtqosObjectsOnHost())
      .filter((o) => !owned.has(o.dev) && !this.baseline.has(`${o.dev}|${o.what}`))
      .map((o) => `${o.dev}: ${o.what}`);
  }
}

// ------------------------------------------------------------ the hook

/** Build when dist is missing or older than the sources (the hook must run the code under test). */
async function ensureBuilt(t: TestContext): Promise<void> {
  const newest = async (dir: string): Promise<number> => {
    let m = 0;
    for (const rel of await readdir(dir, { recursive: true })) {
      const s = await stat(join(dir, rel));
      if (s.isFile()) m = Math.max(m, s.mtimeMs);
    }
    return m;
  };
  const distAge = Math.min(
    ...(await Promise.all(
      [DIST_CLI, DIST_HOOK].map((f) =>
        stat(f).then(
          (s) => s.mtimeMs,
          () => 0,
        ),
      ),
    )),
  );
  if (distAge === 0 || distAge < (await newest(join(REPO, "src")))) {
    const t0 = performance.now();
    await promisify(execFile)(process.execPath, ["scripts/build.mjs"], { cwd: REPO });
    t.diagnostic(`dist was ${distAge === 0 ? "missing" : "older than src/"}: built in ${ms(t0)}`);
  }
  assert.ok(existsSync(DIST_HOOK), "dist/hook-loader.cjs exists");
}

/**
 * `virtqos install-hook` of the code under test (built first if needed) where no hook was (an installed one was
 * saved by HookTestHost.setUp and is put back at the end), then the SIGHUP libvirtd needs to see it.
 */
export async function installHook(t: TestContext): Promise<RunResult> {
  await ensureBuilt(t);
  await rm(HOOK_FILE, { force: true });
  try {
    return await cli(["install-hook"]);
  } finally {
    // libvirtd re-scans its hook directories on SIGHUP; done even if the install failed, so the following
    // steps run with whatever hook there is active.
    t.diagnostic(`libvirtd SIGHUP reload: ${Math.round(await reloadLibvirtd())} ms`);
  }
}

// ------------------------------------------------------------ kernel state

export interface QdiscJson {
  dev?: string;
  kind: string;
  handle: string;
  root?: boolean;
  parent?: string;
}

export async function qdiscs(dev?: string): Promise<QdiscJson[]> {
  const out = await runOk("tc", ["-j", "qdisc", "show", ...(dev ? ["dev", dev] : [])]);
  return JSON.parse(out || "[]") as QdiscJson[];
}

export interface HtbClassText {
  classid: string;
  parent?: string;
  leaf?: string;
  rate?: string;
  ceil?: string;
  burst?: string;
}

/** HTB classes from `tc -d class show` (iproute2 6.1 has no JSON for them); "root" classes get parent "root". */
export async function htbClasses(dev: string): Promise<HtbClassText[]> {
  const out = await runOk("tc", ["-d", "class", "show", "dev", dev]);
  return out
    .split("\n")
    .filter((l) => l.startsWith("class htb "))
    .map((l) => {
      const tok = l.trim().split(/\s+/);
      const get = (key: string) => {
        const i = tok.indexOf(key);
        return i >= 0 ? tok[i + 1] : undefined;
      };
      return {
        classid: tok[2] ?? "",
        parent: tok.includes("root") ? "root" : get("parent"),
        leaf: get("leaf"),
        rate: get("rate"),
        ceil: get("ceil"),
        burst: get("burst")?.split("/")[0],
      };
    })
    .sort((a, b) => a.classid.localeCompare(b.classid));
}

interface FilterJson {
  pref?: number;
  kind?: string;
  options?: { actions?: { kind?: string; to_dev?: string; mirred_action?: string }[] };
}

async function filtersJson(dev: string, hook: "ingress" | "egress"): Promise<FilterJson[] | undefined> {
  const r = await run("tc", ["-j", "filter", "show", "dev", dev, hook]);
  if (r.code !== 0) return undefined; // no such device (any more) or no hook qdisc
  return JSON.parse(r.stdout || "[]") as FilterJson[];
}

export interface OurFilter {
  prio: number;
  kind?: string;
  redirectTo?: string;
}

/** virtqos's filters (prio 64000-64099, with actions) on one hook, by prio, one per real filter (u32 header entries skipped). */
export async function ourFilters(dev: string, hook: "ingress" | "egress"): Promise<OurFilter[]> {
  return ((await filtersJson(dev, hook)) ?? [])
    .filter((f) => f.pref !== undefined && f.pref >= PRIO_MIN && f.pref <= PRIO_MAX && f.options?.actions)
    .map((f) => {
      const mirred = f.options?.actions?.find((a) => a.kind === "mirred");
      return {
        prio: f.pref as number,
        kind: f.kind,
        redirectTo: mirred?.mirred_action === "redirect" ? mirred.to_dev : undefined,
      };
    })
    .sort((a, b) => a.prio - b.prio);
}

export interface LinkJson {
  ifname: string;
  ifindex: number;
  flags?: string[];
  ifalias?: string;
}

export async function links(type?: string): Promise<LinkJson[]> {
  return JSON.parse(
    (await runOk("ip", ["-j", "link", "show", ...(type ? ["type", type] : [])])) || "[]",
  ) as LinkJson[];
}

export async function ifindexOf(dev: string): Promise<number> {
  return Number((await readFile(`/sys/class/net/${dev}/ifindex`, "utf8")).trim());
}

/** Everything on the host that looks like virtqos's: root HTB 7651:, filters at prio 64000-64099, virtqos IFBs. */
async function virtqosObjectsOnHost(): Promise<{ dev: string; what: string }[]> {
  const found: { dev: string; what: string }[] = [];
  const all = await qdiscs();
  for (const q of all) {
    if (q.dev && q.root && q.handle === "7651:")
      found.push({ dev: q.dev, what: `root qdisc ${q.kind} 7651:` });
  }
  for (const q of all.filter((x) => x.parent === "ffff:fff1" && x.dev)) {
    const dev = q.dev as string;
    for (const hook of q.kind === "clsact" ? (["ingress", "egress"] as const) : (["ingress"] as const)) {
      const prios = new Set(
        ((await filtersJson(dev, hook)) ?? [])
          .map((f) => f.pref)
          .filter((p): p is number => p !== undefined && p >= PRIO_MIN && p <= PRIO_MAX),
      );
      for (const p of prios) found.push({ dev, what: `${hook} filter prio ${p}` });
    }
  }
  for (const l of await links()) {
    if (l.ifalias?.startsWith("virtqos/"))
      found.push({ dev: l.ifname, what: `device with alias ${l.ifalias}` });
  }
  return found;
}

// ---------------------------------------------------- records and status

export const recordFile = (uuid: string) => join(RECORDS_DIR, `${uuid}.json`);

/** A domain's state record as the hook wrote it. */
export async function readRecord(uuid: string): Promise<DomainRecord> {
  return JSON.parse(await readFile(recordFile(uuid), "utf8")) as DomainRecord;
}

async function allRecords(): Promise<DomainRecord[]> {
  const files = await readdir(RECORDS_DIR).catch(() => [] as string[]);
  const out: DomainRecord[] = [];
  for (const f of files.filter((x) => x.endsWith(".json"))) {
    try {
      out.push(JSON.parse(await readFile(join(RECORDS_DIR, f), "utf8")) as DomainRecord);
    } catch {
      // torn or foreign: not ours to judge
    }
  }
  return out;
}

/** virtqos still holds something for the domain: its record, or an IFB with its UUID in the alias. */
export async function holdsDomain(uuid: string): Promise<boolean> {
  return existsSync(recordFile(uuid)) || (await links("ifb")).some((l) => l.ifalias?.includes(`,${uuid},`));
}

export async function virtqosStatus(): Promise<{ code: number; rows: StatusRow[] }> {
  const r = await cli(["status", "--json"]);
  let rows: StatusRow[];
  try {
    rows = (JSON.parse(r.stdout) as { interfaces: StatusRow[] }).interfaces;
  } catch {
    throw new Error(`virtqos status --json exited ${r.code} without JSON: ${r.stdout}${r.stderr}`);
  }
  return { code: r.code, rows };
}

/**
 * A stopped domain: its record is gone, `virtqos status` lists nothing for it, no IFB has its UUID in the alias.
 * Returns the IFBs left on the host, for further checks.
 */
export async function assertDomainGone(name: string, uuid: string): Promise<LinkJson[]> {
  assert.ok(!existsSync(recordFile(uuid)), `${name}: record ${recordFile(uuid)} is gone`);
  const { rows } = await virtqosStatus();
  assert.deepEqual(
    rows.filter((r) => r.domainUuid === uuid),
    [],
    `${name}: virtqos status lists nothing for it`,
  );
  const ifbs = await links("ifb");
  const left = ifbs.filter((l) => l.ifalias?.includes(`,${uuid},`)).map((l) => `${l.ifname} (${l.ifalias})`);
  assert.deepEqual(left, [], `${name}: IFBs with the domain's UUID in their alias`);
  return ifbs;
}
