import type { Command } from "commander";

// `virtqos lab`: the demo. Its modules are loaded only when it runs.

export function addLabCommand(program: Command): void {
  program
    .command("lab")
    .description(
      "simulated guests in network namespaces, shaped by virtqos through the hook, measured with iperf3",
    )
    .option(
      "--keep",
      "leave the namespaces in place for poking around (remove later with `virtqos lab --clean`)",
    )
    .option("--clean", "remove namespaces left by earlier `--keep` runs and exit")
    .option("--quick", "shorter transfers (for smoke tests)")
    .option("--out <dir>", "where to write results", "lab-output")
    .option("--json", "machine-readable output")
    .action(
      async (opts: { keep?: boolean; clean?: boolean; quick?: boolean; out: string; json?: boolean }) => {
        const { runLab } = await import("../lab/demo.js");
        const code = await runLab({ ...opts, json: opts.json ?? false });
        process.exitCode = code;
      },
    );
}
