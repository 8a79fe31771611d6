import type { Command } from "commander";
import { loadPolicy } from "../adapters/policy-load.js";
import { type PruneResult, pruneGone } from "../app/prune.js";
import { collectStatus, inForce, statusTable } from "../app/status.js";
import { EXIT } from "../core/errors.js";
import { cliLogger, context, engineContext, globals, out } from "./context.js";

// `virtqos status`: what the kernel really does, against what was asked for.

export function addStatusCommand(program: Command): void {
  program
    .command("status")
    .description(
      "every shaped interface: guest, device, direction, configured vs kernel, bytes, drops, overlimits, match, contested",
    )
    .option("--json", "machine-readable output")
    .option(
      "--prune",
      "first forget interfaces whose tap is gone (a guest destroyed while no hook ran): records and IFBs",
    )
    .action(async (opts: { json?: boolean; prune?: boolean }) => {
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
      let pruned: PruneResult[] | undefined;
      if (opts.prune) {
        // Without a grace period: the operator asks now. The agent waits (its full check) before it prunes.
        pruned = await pruneGone({ ...engineContext(ctx), caps }, policy);
        if (!pruned.length) log.info("nothing to prune: every recorded tap exists");
      }
      const rows = await collectStatus(ctx.runner, ctx.runDir, caps, policy);
      out(g, pruned ? { interfaces: rows, pruned } : { interfaces: rows }, statusTable(rows));
      await log.close();
      const pruneFailed = pruned?.some((p) => !p.ok) ?? false;
      // A contested row (the running agent's drift repair keeps finding it undone) is not held in force even
      // when the kernel matches at this instant: exit 4, like a mismatch.
      process.exitCode = rows.every(inForce) && !pruneFailed ? EXIT.OK : EXIT.MISMATCH;
    });
}
