// virtqos benchmarks: `npx tsx bench/run.ts [--only accuracy,first-second,latency,hook,groups,scale] [--quick] [--full-scale]`, as root.
// Prints a table and writes bench/results.json. Exits 0 even when a target is missed: this is a report.
import { spawnSync } from "node:child_process";
import { existsSync, writeFileSync } from "node:fs";
import { cpus, release } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { accuracy } from "./accuracy.js";
import { type Bench, type BenchResult, errored, removeStaleNamespaces, runAllCleanups } from "./common.js";
import { firstSecond } from "./first-second.js";
import { groups } from "./groups.js";
import { hook } from "./hook.js";
import { latency } from "./latency.js";
import { scale } from "./scale.js";

// Order matters on a small machine: traffic measurements first, the 1000-device namespaces (whose teardown
// the kernel finishes in the background) last.
const BENCHES: Record<string, Bench> = {
  accuracy,
  "first-second": firstSecond,
  latency,
  hook,
  groups,
  scale,
};

function parseArgs(argv: string[]): { only: string[]; quick: boolean; fullScale: boolean } {
  let only = Object.keys(BENCHES);
  let quick = false;
  let fullScale = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--quick") quick = true;
    else if (a === "--full-scale") fullScale = true;
    else if (a === "--only" || a.startsWith("--only=")) {
      const v = a === "--only" ? argv[++i] : a.slice("--only=".length);
      if (!v) throw new Error("--only needs a comma-separated list");
      only = v
        .split(",")
        .map((s) => s.trim())
        .filter(Boolean);
      const unknown = only.filter((n) => !(n in BENCHES));
      if (unknown.length)
        throw new Error(
          `unknown benchmark(s) ${unknown.join(", ")}; known: ${Object.keys(BENCHES).join(", ")}`,
        );
    } else if (a === "--help" || a === "-h") {
      process.stdout.write(
        `usage: tsx bench/run.ts [--only ${Object.keys(BENCHES).join(",")}] [--quick] [--full-scale]\n` +
          "  --quick       shorter transfers, fewer iterations\n" +
          "  --full-scale  scale: run all ~11000 lines one process each (~3-4 min) instead of extrapolating from a sample\n",
      );
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  return { only, quick, fullScale };
}

function fmtValue(r: BenchResult): string {
  if (!Number.isFinite(r.value)) return "error";
  return `${r.value}${r.unit && r.unit !== "ratio" ? ` ${r.unit}` : r.unit === "ratio" ? "x" : ""}`;
}

function table(results: BenchResult[]): string {
  const rows = results.map((r) => [
    r.name,
    fmtValue(r),
    r.target ?? "-",
    r.pass === null ? "info" : r.pass ? "pass" : "FAIL",
  ]);
  const head = ["benchmark", "measured", "target", "result"];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => c.padEnd(widths[i]))
      .join("  ")
      .trimEnd();
  return [line(head), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n");
}

async function main(): Promise<void> {
  const { only, quick, fullScale } = parseArgs(process.argv.slice(2));
  if (process.getuid?.() !== 0) {
    process.stderr.write("bench: must run as root (network namespaces, tc)\n");
    process.exit(1);
  }
  const log = (m: string) => process.stderr.write(`${m}\n`);
  let stopping = false;
  for (const sig of ["SIGINT", "SIGTERM"] as const) {
    process.on(sig, () => {
      if (stopping) return;
      stopping = true;
      log(`bench: ${sig}, cleaning up namespaces`);
      void runAllCleanups().finally(() => process.exit(130));
    });
  }
  await removeStaleNamespaces(log);

  const started = Date.now();
  const results: BenchResult[] = [];
  const durations: Record<string, number> = {};
  try {
    for (const name of only) {
      log(`== ${name}${quick ? " (quick)" : ""}`);
      const t0 = Date.now();
      try {
        results.push(...(await BENCHES[name]({ quick, fullScale, log })));
      } catch (e) {
        log(`  ${name} failed: ${(e as Error).stack ?? e}`);
        results.push(errored(name, e));
      }
      durations[name] = (Date.now() - t0) / 1000;
      log(`   ${name} took ${durations[name].toFixed(1)} s`);
    }
  } finally {
    await runAllCleanups();
  }

  const out = {
    machine: {
      node: process.version,
      kernel: release(),
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model,
      date: new Date().toISOString(),
    },
    quick,
    fullScale,
    only,
    durationsSeconds: durations,
    totalSeconds: (Date.now() - started) / 1000,
    results,
  };
  const file = join(dirname(fileURLToPath(import.meta.url)), "results.json");
  writeFileSync(
    file,
    `${JSON.stringify(out, (_k, v) => (typeof v === "number" && !Number.isFinite(v) ? null : v), 2)}\n`,
  );
  // `npm run lint` checks bench/**, this file included: give it the project's formatting (best effort).
  const biome = join(dirname(file), "..", "node_modules", ".bin", "biome");
  if (existsSync(biome)) spawnSync(biome, ["format", "--write", file], { stdio: "ignore" });

  process.stdout.write(`\n${table(results)}\n\n`);
  const failed = results.filter((r) => r.pass === false);
  if (failed.length) {
    process.stdout.write(
      `FAIL: ${failed.length} of ${results.filter((r) => r.pass !== null).length} targets missed: ${failed.map((r) => r.name).join(", ")}\n`,
    );
  } else {
    process.stdout.write(`all ${results.filter((r) => r.pass !== null).length} targets met\n`);
  }
  process.stdout.write(`results: ${file} (total ${out.totalSeconds.toFixed(0)} s)\n`);
}

main().catch(async (e) => {
  process.stderr.write(`bench: ${(e as Error).stack ?? e}\n`);
  await runAllCleanups();
  process.exit(1);
});
