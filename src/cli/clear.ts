import type { Command } from "commander";
import { loadPolicy } from "../adapters/policy-load.js";
import { loadRecords } from "../adapters/state.js";
import { reconcile } from "../app/engine.js";
import { cliLogger, context, engineContext, globals, out } from "./context.js";
import { exitFor, resultJson, summarise } from "./result.js";

// `virtqos clear`: remove everything virtqos created, or one domain's share of it.

export function addClearCommand(program: Command): void {
  program
    .command("clear")
    .description("remove everything virtqos created (for one domain with --domain)")
    .option("--domain <name-or-uuid>", "only this domain")
    .option("--json", "machine-readable output")
    .action(async (opts: { domain?: string; json?: boolean }) => {
      const g = globals(program, opts.json);
      const log = cliLogger(g);
      const ctx = context(g, log);
      let scope: string[] | "all" = "all";
      if (opts.domain) {
        const want = opts.domain.toLowerCase();
        const rec = loadRecords(ctx.runDir).find(
          (r) => r.domainName === opts.domain || r.domainUuid === want,
        );
        scope = [rec?.domainUuid ?? want];
      }
      const r = await reconcile(engineContext(ctx), {
        domains: [],
        policy: loadPolicy("/nonexistent"),
        scope,
        sweep: true,
      });
      await log.close();
      out(g, resultJson(r), summarise(r, false));
      process.exitCode = exitFor(r);
    });
}
