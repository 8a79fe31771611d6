import { readFileSync } from "node:fs";
import type { Command } from "commander";
import { loadPolicy } from "../adapters/policy-load.js";
import { writeDurable } from "../adapters/tx-journal.js";
import { reconcile } from "../app/engine.js";
import { spawnWatcher, txBegin } from "../app/tx.js";
import { policyPath } from "../config.js";
import { DomainXmlError, parseDomainXml } from "../core/domain-xml.js";
import { VirtqosError } from "../core/errors.js";
import type { DomainInfo } from "../core/model.js";
import { cliEntry, cliLogger, context, engineContext, globals, out } from "./context.js";
import { exitFor, resultJson, summarise } from "./result.js";
import { parseTimeout, watcherGlobals } from "./tx.js";

// `virtqos plan` and `virtqos apply` (optionally inside a transaction: --confirm).

function readDomains(files: string[]): DomainInfo[] {
  return files.map((f) => {
    try {
      return parseDomainXml(readFileSync(f, "utf8"));
    } catch (e) {
      if (e instanceof DomainXmlError) throw new VirtqosError("DOMAIN_XML_INVALID", `${f}: ${e.message}`);
      throw e;
    }
  });
}

export function addApplyCommands(program: Command): void {
  for (const [name, dryRun] of [
    ["plan", true],
    ["apply", false],
  ] as const) {
    const cmd = program
      .command(name)
      .description(
        dryRun
          ? "show the tc/ip operations that would bring the host to the state the domain XML and policy describe"
          : "shape the interfaces of the given domains now (what the hook does, for many domains at once)",
      )
      .requiredOption("--xml <files...>", "domain XML files (virsh dumpxml NAME > NAME.xml)")
      .option("--json", "machine-readable output");
    if (!dryRun) {
      cmd
        .option(
          "--confirm <duration>",
          "apply inside a transaction that is rolled back after this long (e.g. 60s) unless `virtqos tx commit` runs first, from any shell",
        )
        .option(
          "--policy <file>",
          "with --confirm: put this policy in place of the current one inside the transaction (the current file comes back on rollback)",
        );
    }
    cmd.action(async (opts: { xml: string[]; json?: boolean; confirm?: string; policy?: string }) => {
      const g = globals(program, opts.json);
      const log = cliLogger(g);
      if (opts.policy && !opts.confirm) {
        throw new VirtqosError(
          "USAGE",
          "--policy is for trying a policy with --confirm; fix: add --confirm 60s, or copy the file to the policy path",
        );
      }
      // Validate the new policy before anything is snapshotted or changed.
      const policy = loadPolicy(opts.policy ?? policyPath(g.config));
      log.setLevel(policy.logLevel);
      const domains = readDomains(opts.xml);
      const ctx = context(g, log);
      let confirm: { id: string; deadline?: string } | undefined;
      if (opts.confirm) {
        const timeoutMs = parseTimeout("--confirm", opts.confirm);
        const t = await txBegin(ctx, {
          timeoutMs,
          beforeOpen: (id) => spawnWatcher(cliEntry(), id, watcherGlobals(g)),
        });
        confirm = { id: t.id, deadline: t.deadline };
        if (opts.policy) writeDurable(ctx.policyFile, readFileSync(opts.policy));
      }
      const r = await reconcile(engineContext(ctx), {
        domains,
        policy,
        scope: domains.map((d) => d.uuid),
        sweep: !dryRun,
        dryRun,
      });
      await log.close();
      const confirmText = confirm
        ? `\ntransaction ${confirm.id}: run \`virtqos tx commit\` (from any shell) before ${confirm.deadline}, or everything returns to how it was`
        : "";
      out(g, { ...resultJson(r), transaction: confirm }, `${summarise(r, dryRun)}${confirmText}`);
      process.exitCode = exitFor(r);
    });
  }
}
