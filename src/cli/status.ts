import type { Command } from "commander";
import { loadPolicy } from "../adapters/policy-load.js";
import { collectStatus, statusTable } from "../app/status.js";
import { EXIT } from "../core/errors.js";
import { cliLogger, context, globals, out } from "./context.js";

// `virtqos status`: what the kernel really does, against what was asked for.

export function addStatusCommand(program: Command): void {
  program
    .command("status")
    .description(
      "every shaped interface: guest, device, direction, configured vs kernel, bytes, drops, overlimits, match",
    )
    .option("--json", "machine-readable output")
    .action(async (opts: { json?: boolean }) => {
      const g = globals(program, opts.json);
      const log = cliLogger(g);
      const ctx = context(g, log);
      let policy: ReturnType<typeof loadPolicy>;
      try {
        policy = loadPolicy(ctx.policyFile);
      } catch {
        policy = loadPolicy("/nonexistent");
      }
      const caps = await ctx.caps();
      const rows = await collectStatus(ctx.runner, ctx.runDir, caps, policy);
      out(g, { interfaces: rows }, statusTable(rows));
      await log.close();
      process.exitCode = rows.every((r) => r.matches) ? EXIT.OK : EXIT.MISMATCH;
    });
}
