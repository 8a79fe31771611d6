// Runs the test suites in order, each file list expanded here (`node --test` finds no .ts files by itself):
// unit + golden (pure, parallel), then the namespace integration tests and the libvirt end-to-end tests
// one file at a time (they measure rates and share libvirtd; parallel runs would skew both). `kernel` runs
// only when named (`node scripts/run-tests.mjs kernel`, via `npm run test:kernel` in a VM).
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { join } from "node:path";

const only = process.argv[2];
const files = (dir) =>
  readdirSync(dir)
    .filter((f) => f.endsWith(".test.ts"))
    .sort()
    .map((f) => join(dir, f));

const suites = [
  { name: "unit", files: [...files("test/unit"), ...files("test/golden")], serial: false },
  { name: "integration", files: [...files("test/integration"), "test/lab.test.ts"], serial: true },
  { name: "e2e", files: files("test/e2e"), serial: true },
  // Kernel features the test kernel lacks (fq_codel, sfq, police, matchall, OVS kernel datapath): only when
  // asked for, inside Debian's stock kernel in a VM (npm run test:kernel = scripts/kernel-vm.sh -- ... kernel).
  { name: "kernel", files: files("test/kernel"), serial: true, explicit: true },
].filter((s) => (only ? s.name === only : !s.explicit));

if (only && !suites.length) {
  process.stderr.write(`run-tests: unknown suite ${only} (unit, integration, e2e, kernel)\n`);
  process.exit(2);
}

let failed = false;
for (const s of suites) {
  if (!s.files.length) continue;
  process.stdout.write(`\n=== ${s.name}: ${s.files.length} file(s)\n`);
  const args = ["--import", "tsx", "--test", "--test-reporter=spec"];
  if (s.serial) args.push("--test-concurrency=1");
  const started = Date.now();
  const r = spawnSync(process.execPath, [...args, ...s.files], { stdio: "inherit" });
  if (r.status !== 0) failed = true;
  process.stdout.write(
    `=== ${s.name}: ${r.status === 0 ? "passed" : "FAILED"} in ${((Date.now() - started) / 1000).toFixed(0)} s\n`,
  );
}
process.exit(failed ? 1 : 0);
