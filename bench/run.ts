// virtqos benchmarks: `npx tsx bench/run.ts [--only accuracy,first-second,latency,hook,groups,scale,agent,drift] [--quick] [--full-scale]`, as root.
// Prints a table and writes bench/results.json. Exits 0 even when a target is missed: this is a report.
// `--kernel`: accuracy and latency on Debian's stock kernel in a VM (scripts/kernel-vm.sh), recorded in the same
// file as `kernel.*` rows plus a `kernel` section (kernel version, durations); other runs keep those.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, release, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { accuracy } from "./accuracy.js";
import { agent } from "./agent.js";
import { type Bench, type BenchResult, errored, removeStaleNamespaces, runAllCleanups } from "./common.js";
import { drift } from "./drift.js";
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
  agent,
  drift,
};

/** What `--kernel` measures in the VM unless --only says otherwise. */
const KERNEL_BENCHES = ["accuracy", "latency"];
const KERNEL_PREFIX = "kernel.";
const IN_KERNEL_VM = process.env.VIRTQOS_KERNEL_VM === "1";

function parseArgs(argv: string[]): { only: string[]; quick: boolean; fullScale: boolean; kernel: boolean } {
  let only = Object.keys(BENCHES);
  let onlyGiven = false;
  let quick = false;
  let fullScale = false;
  let kernel = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--quick") quick = true;
    else if (a === "--full-scale") fullScale = true;
    else if (a === "--kernel") kernel = true;
    else if (a === "--only" || a.startsWith("--only=")) {
      const v = a === "--only" ? argv[++i] : a.slice("--only=".length);
      if (!v) throw new Error("--only needs a comma-separated list");
      onlyGiven = true;
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
        `usage: tsx bench/run.ts [--only ${Object.keys(BENCHES).join(",")}] [--quick] [--full-scale] [--kernel]\n` +
          "  --quick       shorter transfers, fewer iterations\n" +
          "  --full-scale  scale: run all ~11000 lines one process each (~3-4 min) instead of extrapolating from a sample\n" +
          `  --kernel      in a VM on Debian's stock kernel (scripts/kernel-vm.sh): ${KERNEL_BENCHES.join(", ")} unless --only; kept as kernel.* rows\n`,
      );
      process.exit(0);
    } else throw new Error(`unknown argument ${a}`);
  }
  if (kernel && !onlyGiven) only = KERNEL_BENCHES;
  return { only, quick, fullScale, kernel };
}

type ResultsFile = Record<string, unknown> & { results?: BenchResult[]; kernel?: unknown };

function readResults(file: string): ResultsFile | undefined {
  try {
    return JSON.parse(readFileSync(file, "utf8")) as ResultsFile;
  } catch {
    return undefined;
  }
}

function writeResults(file: string, out: unknown): void {
  writeFileSync(
    file,
    `${JSON.stringify(out, (_k, v) => (typeof v === "number" && !Number.isFinite(v) ? null : v), 2)}\n`,
  );
  // `npm run lint` checks bench/**, this file included: give it the project's formatting (best effort).
  const biome = join(dirname(file), "..", "node_modules", ".bin", "biome");
  if (existsSync(biome)) spawnSync(biome, ["format", "--write", file], { stdio: "ignore" });
}

/**
 * `--kernel` on the host: run this script inside the VM, then merge what it wrote (kernel.* rows and the run's
 * facts) into bench/results.json, replacing the previous kernel rows and keeping everything else.
 */
function runInKernelVm(argv: string[], file: string): void {
  const root = join(dirname(fileURLToPath(import.meta.url)), "..");
  const out = mkdtempSync(join(tmpdir(), "virtqos-bench-kernel-"));
  try {
    const tsx = join(root, "node_modules", ".bin", "tsx");
    const vm = spawnSync(
      "bash",
      [join(root, "scripts", "kernel-vm.sh"), "--out", out, "--", tsx, "bench/run.ts", ...argv],
      { stdio: "inherit", cwd: root },
    );
    const inner = readResults(join(out, "kernel-results.json"));
    if (!inner?.results) {
      process.stderr.write(`bench: the VM run wrote no results (exit ${vm.status})\n`);
      process.exit(vm.status || 1);
    }
    const { results: kernelRows, ...facts } = inner;
    const existing = readResults(file) ?? {};
    // Replace the kernel rows of the benchmarks that ran (all of them for errored ones), keep the others.
    const ran = (facts.only as string[] | undefined) ?? [];
    const replaced = (name: string) =>
      ran.some((b) => name === `${KERNEL_PREFIX}${b}` || name.startsWith(`${KERNEL_PREFIX}${b}.`));
    const kept = (existing.results ?? []).filter((r) => !replaced(r.name));
    const previous = (existing.kernel ?? {}) as { durationsSeconds?: Record<string, number> };
    const kernelFacts = {
      ...facts,
      durationsSeconds: {
        ...previous.durationsSeconds,
        ...(facts.durationsSeconds as Record<string, number>),
      },
    };
    writeResults(file, { ...existing, results: [...kept, ...kernelRows], kernel: kernelFacts });
    process.stdout.write(`kernel results (${kernelRows.length} rows) merged into ${file}\n`);
    process.exit(vm.status ?? 1);
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
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
  const { only, quick, fullScale, kernel } = parseArgs(process.argv.slice(2));
  const file = join(dirname(fileURLToPath(import.meta.url)), "results.json");
  if (kernel && !IN_KERNEL_VM) return runInKernelVm(process.argv.slice(2), file);
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
        results.push(...(await BENCHES[name]({ quick, fullScale, log, kernelVm: kernel })));
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
  let written = file;
  if (kernel) {
    // In the VM: hand the rows to the host (runInKernelVm merges them), named kernel.*, with the kernel version.
    written = join(process.env.VIRTQOS_KERNEL_VM_OUT ?? dirname(file), "kernel-results.json");
    writeResults(written, {
      ...out,
      kernelVersion: release(),
      vm: "scripts/kernel-vm.sh: qemu TCG, Debian's stock kernel",
      results: results.map((r) => ({
        ...r,
        name: `${KERNEL_PREFIX}${r.name}`,
        details: { kernel: release(), ...r.details },
      })),
    });
  } else {
    // Kernel VM rows come from `--kernel` runs; a run on this kernel keeps them.
    const previous = readResults(file);
    const kernelRows = (previous?.results ?? []).filter((r) => r.name.startsWith(KERNEL_PREFIX));
    writeResults(
      file,
      previous?.kernel ? { ...out, results: [...results, ...kernelRows], kernel: previous.kernel } : out,
    );
  }

  process.stdout.write(`\n${table(results)}\n\n`);
  const failed = results.filter((r) => r.pass === false);
  if (failed.length) {
    process.stdout.write(
      `FAIL: ${failed.length} of ${results.filter((r) => r.pass !== null).length} targets missed: ${failed.map((r) => r.name).join(", ")}\n`,
    );
  } else {
    process.stdout.write(`all ${results.filter((r) => r.pass !== null).length} targets met\n`);
  }
  process.stdout.write(`results: ${written} (total ${out.totalSeconds.toFixed(0)} s)\n`);
}

main().catch(async (e) => {
  process.stderr.write(`bench: ${(e as Error).stack ?? e}\n`);
  await runAllCleanups();
  process.exit(1);
});
