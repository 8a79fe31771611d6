import { Command, CommanderError, Option } from "commander";
import { DEFAULT_POLICY_PATH, DEFAULT_RUN_DIR, DEFAULT_STATE_DIR } from "../config.js";
import { ERRORS, EXIT, errorCodeOf } from "../core/errors.js";
import { addAgentCommands } from "./agent.js";
import { addApplyCommands } from "./apply.js";
import { addAuditCommand } from "./audit.js";
import { addClearCommand } from "./clear.js";
import { addDoctorCommand } from "./doctor.js";
import { addHookCommand } from "./hook.js";
import { addInstallHookCommand } from "./install-hook.js";
import { addLabCommand } from "./lab.js";
import { addLiveCommands } from "./live.js";
import { addStatusCommand } from "./status.js";
import { addTokenCommands } from "./token.js";
import { addTopCommand } from "./top.js";
import { addTxCommands } from "./tx.js";

// The CLI: one file per command in this directory, assembled here. Every command that reports takes --json;
// exit codes are the catalogue's (docs/errors.md).

const VERSION = "0.1.0";

export function buildProgram(): Command {
  const program = new Command("virtqos")
    .description(
      "Bandwidth control for libvirt/KVM guests. Directions are the guest's: inbound = download, outbound = upload.",
    )
    .option("--config <file>", `policy file (default $VIRTQOS_CONFIG or ${DEFAULT_POLICY_PATH})`)
    .option("--run-dir <dir>", `state and lock directory (default $VIRTQOS_RUN_DIR or ${DEFAULT_RUN_DIR})`)
    .option(
      "--state-dir <dir>",
      `persistent state: the transaction journal (default $VIRTQOS_STATE_DIR or ${DEFAULT_STATE_DIR})`,
    )
    .addOption(new Option("--netns <name>", "act inside this network namespace (tests, lab)").hideHelp())
    .version(VERSION, "-V, --version")
    .showHelpAfterError()
    // Global options go before the command: `set`/`get` take virsh's own `--config` (the persistent
    // definition), which must not be read as the policy file's `--config FILE`.
    .enablePositionalOptions()
    .exitOverride();

  // In this order: it is the order of `virtqos --help`.
  addApplyCommands(program); // plan, apply
  addTxCommands(program);
  addStatusCommand(program);
  addTopCommand(program);
  addLiveCommands(program); // set, get
  addAgentCommands(program); // agent, install-agent
  addTokenCommands(program);
  addAuditCommand(program);
  addClearCommand(program);
  addDoctorCommand(program);
  addInstallHookCommand(program);
  addHookCommand(program);
  addLabCommand(program);
  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv, { from: "user" });
    return typeof process.exitCode === "number" ? process.exitCode : 0;
  } catch (e) {
    if (e instanceof CommanderError) {
      return e.exitCode === 0 ? 0 : EXIT.INVALID_INPUT;
    }
    const err = e as Error & { detail?: unknown };
    const code = errorCodeOf(e);
    const info = ERRORS[code ?? "INTERNAL"];
    // A policy error's message gives a fix per problem; the catalogue's would only repeat that.
    const fix = code === "POLICY_INVALID" ? undefined : info.fix;
    if (argv.includes("--json")) {
      const error = { code: code ?? "INTERNAL", message: err.message, fix: info.fix, detail: err.detail };
      process.stdout.write(`${JSON.stringify({ error }, null, 2)}\n`);
    } else {
      process.stderr.write(`virtqos: ${code ? `${code}: ` : ""}${err.message}\n`);
      if (code && fix) process.stderr.write(`fix: ${fix}\n`);
    }
    return info.exitCode;
  }
}
