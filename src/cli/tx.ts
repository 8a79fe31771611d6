import { type Command, Option } from "commander";
import type { Logger } from "../adapters/log.js";
import { readLog, type TxLogEntry } from "../adapters/tx-journal.js";
import { formatTable } from "../app/table.js";
import { spawnWatcher, txBegin, txCommit, txRecover, txRollback, txStatus, txWatch } from "../app/tx.js";
import { defaultRunDir, defaultStateDir, policyPath } from "../config.js";
import { VirtqosError } from "../core/errors.js";
import { parseDuration, UnitError } from "../core/units.js";
import { cliEntry, cliLogger, context, type Globals, globals, out } from "./context.js";

// `virtqos tx ...`: transactions over what virtqos owns (policy file, records, kernel objects), and the confirm
// timer behind `virtqos apply --confirm`. The journal lives in --state-dir (persistent storage).

/** A --timeout/--confirm value: a duration with its unit, 1 s to 24 h. */
export function parseTimeout(option: string, text: string): number {
  let ms: number;
  try {
    ms = parseDuration(text);
  } catch (e) {
    if (e instanceof UnitError) throw new VirtqosError("USAGE", `${option} ${e.message}; fix: ${e.fix}`);
    throw e;
  }
  if (ms < 1000 || ms > 86_400_000) {
    throw new VirtqosError("USAGE", `${option} ${text} is outside 1s..24h; fix: e.g. ${option} 120s`);
  }
  return ms;
}

/**
 * The detached confirm timer must act on the same run dir, state dir, policy file and namespace as the command
 * that started it, after that command and its terminal are gone: those go on its command line, explicitly.
 */
export function watcherGlobals(g: Globals): string[] {
  return [
    "--run-dir",
    g.runDir ?? defaultRunDir(),
    "--state-dir",
    g.stateDir ?? defaultStateDir(),
    "--config",
    policyPath(g.config),
    ...(g.netns ? ["--netns", g.netns] : []),
  ];
}

const when = (iso?: string) => (iso ? iso.replace("T", " ").replace(/\.\d+Z$/, "Z") : "-");

function logTable(entries: TxLogEntry[]): string {
  if (!entries.length) return "no transaction has ended yet";
  const rows = entries.map((e) => [
    e.id,
    `${e.who.user} (uid ${e.who.uid}, ${e.who.door})`,
    when(e.begunAt),
    when(e.endedAt),
    `${e.outcome}${e.outcome === "commit" ? "" : e.verified === false ? " (NOT verified)" : e.verified ? " (verified)" : ""} by ${e.endedBy.user}/${e.endedBy.door}`,
    e.devices.join(",") || "-",
    e.policyDiff.length ? `${e.policyDiff.length} line(s)` : "unchanged",
  ]);
  const details = entries
    .filter((e) => e.policyDiff.length || e.detail)
    .map((e) =>
      [`${e.id}:`, ...(e.detail ? [`  ${e.detail}`] : []), ...e.policyDiff.map((l) => `  ${l}`)].join("\n"),
    );
  return [
    formatTable([["ID", "WHO", "BEGUN", "ENDED", "HOW", "DEVICES", "POLICY"], ...rows]),
    ...(details.length ? ["", "policy changes:", ...details] : []),
  ].join("\n");
}

export function addTxCommands(program: Command): void {
  const tx = program
    .command("tx")
    .description(
      "transactions: begin snapshots policy, records and kernel state; commit keeps; rollback restores; open at boot = rolled back",
    );

  const run =
    (fn: (g: Globals, log: Logger, opts: Record<string, unknown>) => Promise<void>) =>
    async (opts: Record<string, unknown>) => {
      const g = globals(program, opts.json as boolean | undefined);
      const log = cliLogger(g);
      try {
        await fn(g, log, opts);
      } finally {
        await log.close();
      }
    };

  tx.command("begin")
    .description("snapshot what virtqos owns and open a transaction (one at a time per host)")
    .option("--timeout <duration>", "roll back automatically after this long unless committed (e.g. 120s)")
    .option("--json", "machine-readable output")
    .action(
      run(async (g, log, opts) => {
        const timeoutMs = opts.timeout ? parseTimeout("--timeout", String(opts.timeout)) : undefined;
        let watcher: number | undefined;
        const t = await txBegin(context(g, log), {
          timeoutMs,
          beforeOpen: (id) => {
            if (timeoutMs) watcher = spawnWatcher(cliEntry(), id, watcherGlobals(g));
          },
        });
        out(
          g,
          { id: t.id, deadline: t.deadline, watcherPid: watcher },
          `${t.id}${t.deadline ? `\nrolled back at ${when(t.deadline)} unless \`virtqos tx commit\` runs first (timer pid ${watcher})` : ""}`,
        );
      }),
    );

  tx.command("commit")
    .description("end the open transaction and keep every change")
    .option("--json", "machine-readable output")
    .action(
      run(async (g, log) => {
        const e = await txCommit(context(g, log));
        out(g, e, `${e.id} committed (${e.devices.length} device(s) changed)`);
      }),
    );

  tx.command("rollback")
    .description(
      "restore the snapshot: policy file byte for byte, kernel objects of every device touched since begin",
    )
    .option("--json", "machine-readable output")
    .action(
      run(async (g, log) => {
        const r = await txRollback(context(g, log));
        out(
          g,
          r.entry,
          `${r.entry.id} rolled back: ${r.entry.devices.length} device(s) restored and verified against the snapshot${r.entry.policyDiff.length ? `, policy file restored (${r.entry.policyDiff.length} line(s))` : ""}`,
        );
      }),
    );

  tx.command("status")
    .description("the open transaction (if any): who, since when, time left, devices changed")
    .option("--json", "machine-readable output")
    .action(
      run(async (g) => {
        const s = txStatus(g.stateDir ?? defaultStateDir());
        const o = s.open;
        const text = o
          ? [
              `open: ${o.id} (${o.state})`,
              `begun ${when(o.begunAt)} by ${o.who.user} (uid ${o.who.uid}, ${o.who.door})`,
              o.deadline
                ? `rolled back at ${when(o.deadline)} unless committed: ${Math.ceil((o.timeLeftMs ?? 0) / 1000)} s left`
                : "no deadline: open until `virtqos tx commit` or `virtqos tx rollback` (rolled back at boot)",
              `${o.changes} change(s) so far; devices: ${o.devices.join(", ") || "-"}`,
            ].join("\n")
          : `no transaction open${s.last ? ` (last: ${s.last.id}, ${s.last.outcome} at ${when(s.last.endedAt)})` : ""}`;
        out(g, s, text);
      }),
    );

  tx.command("log")
    .description("past transactions: id, who, when, what changed, how each ended")
    .option("--json", "machine-readable output")
    .action(
      run(async (g) => {
        const entries = readLog(g.stateDir ?? defaultStateDir());
        out(g, { transactions: entries }, logTable(entries));
      }),
    );

  tx.command("recover")
    .description("at boot, before guests start: roll back a transaction left open (virtqos-recover.service)")
    .option("--json", "machine-readable output")
    .action(
      run(async (g, log) => {
        const r = await txRecover(context(g, log, "recover"));
        out(
          g,
          { recovered: r?.entry ?? null },
          r
            ? `${r.entry.id} was open: rolled back${r.entry.detail ? ` (${r.entry.detail})` : ""}`
            : "no transaction was open",
        );
      }),
    );

  tx.command("watch", { hidden: true })
    .description("the confirm timer (started by `tx begin --timeout` and `apply --confirm`)")
    .addOption(new Option("--id <id>", "transaction id").makeOptionMandatory())
    .addOption(new Option("--begun-by <pid>", "the process beginning it (the timer waits for it to finish)"))
    .action(
      run(async (g, log, opts) => {
        const pid = opts.begunBy === undefined ? undefined : Number(opts.begunBy);
        await txWatch(context(g, log, "confirm-timer"), String(opts.id), pid);
      }),
    );
}
