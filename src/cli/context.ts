import type { Command } from "commander";
import { processRunner } from "../adapters/exec.js";
import { createLogger, type Logger } from "../adapters/log.js";
import { cachedCapabilities } from "../adapters/probe.js";
import { currentActor } from "../adapters/tx-journal.js";
import type { EngineContext } from "../app/engine.js";
import type { TxContext } from "../app/tx.js";
import { defaultRunDir, defaultStateDir, logTargetFromEnv, policyPath } from "../config.js";

// What every command shares: the global options, the context commands act in, the logger and the output.

export interface Globals {
  config?: string;
  runDir?: string;
  stateDir?: string;
  netns?: string;
  json?: boolean;
}

/** The program's global options, with the command's own --json. */
export function globals(program: Command, json: boolean | undefined): Globals {
  return { ...program.opts<Globals>(), json };
}

/** Where a command acts: the global options, else the environment, else the defaults (config.ts). */
export function context(g: Globals, log: Logger, door = "cli"): TxContext {
  const runner = processRunner({ netns: g.netns });
  const runDir = g.runDir ?? defaultRunDir();
  return {
    runner,
    runDir,
    stateDir: g.stateDir ?? defaultStateDir(),
    policyFile: policyPath(g.config),
    log,
    who: currentActor(door),
    caps: () => cachedCapabilities(runner, runDir),
  };
}

/** The same context for reconcile(), which reads the (cached) capabilities itself. */
export function engineContext(ctx: TxContext): EngineContext {
  return { runner: ctx.runner, runDir: ctx.runDir, stateDir: ctx.stateDir, who: ctx.who, log: ctx.log };
}

/** The CLI's logger: $VIRTQOS_LOG if set, else stderr (nothing with --json, which owns stdout). */
export function cliLogger(g: Globals): Logger {
  return createLogger({ level: "info", target: logTargetFromEnv(g.json ? "silent" : "stderr") });
}

export function out(g: Globals, json: unknown, text: string): void {
  process.stdout.write(
    g.json ? `${JSON.stringify(json, null, 2)}\n` : text.endsWith("\n") ? text : `${text}\n`,
  );
}

/** The script this CLI runs as (bin/virtqos), for the detached confirm timer. */
export function cliEntry(): string {
  return process.argv[1] ?? "virtqos";
}
