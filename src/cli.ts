import { spawnSync } from "node:child_process";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  writeFileSync,
} from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { Command, CommanderError, Option } from "commander";
import { processRunner } from "./adapters/exec.js";
import { createLogger, type Logger, logTargetFromEnv } from "./adapters/log.js";
import { policyPath } from "./adapters/policy-file.js";
import { loadPolicy } from "./adapters/policy-load.js";
import { cachedCapabilities, probeCapabilities } from "./adapters/probe.js";
import { defaultRunDir, loadRecords } from "./adapters/state.js";
import { currentActor, defaultStateDir, writeDurable } from "./adapters/tx-journal.js";
import { describeLimit, type ReconcileResult, reconcile } from "./app/engine.js";
import { collectStatus, statusTable } from "./app/status.js";
import { spawnWatcher, txBegin } from "./app/tx.js";
import { addTxCommands, parseTimeout, txContext, watcherGlobals } from "./cli-tx.js";
import { DomainXmlError, parseDomainXml } from "./core/domain-xml.js";
import type { DomainInfo } from "./core/model.js";
import { PolicyError } from "./core/policy.js";
import { chooseLeaf } from "./core/recipe.js";
import { ERRORS, EXIT, VirtqosError } from "./errors.js";
import { runHook } from "./hook.js";

// The CLI. Every command that reports takes --json; exit codes are the catalogue's (docs/errors.md).

const VERSION = "0.1.0";

interface Globals {
  config?: string;
  runDir?: string;
  stateDir?: string;
  netns?: string;
  json?: boolean;
}

function context(g: Globals, log: Logger) {
  return {
    runner: processRunner({ netns: g.netns }),
    runDir: g.runDir ?? defaultRunDir(),
    stateDir: g.stateDir ?? defaultStateDir(),
    who: currentActor("cli"),
    log,
  };
}

function out(g: Globals, json: unknown, text: string): void {
  process.stdout.write(
    g.json ? `${JSON.stringify(json, null, 2)}\n` : text.endsWith("\n") ? text : `${text}\n`,
  );
}

/** The script this CLI runs as (bin/virtqos), for the detached confirm timer. */
function cliEntry(): string {
  return process.argv[1] ?? "virtqos";
}

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

function exitFor(r: ReconcileResult): number {
  if (r.failure) return EXIT.FAILED;
  if (r.plan.problems.length) return EXIT.PARTIAL;
  return EXIT.OK;
}

function summarise(r: ReconcileResult, dryRun: boolean): string {
  const lines: string[] = [];
  for (const d of r.desired) {
    const label = `${d.domainName} ${d.mac} ${d.dev ?? "-"} (${d.type})`;
    if (d.notEnforceable) {
      lines.push(`${label}: NOT ENFORCEABLE: ${d.notEnforceable}`);
      continue;
    }
    for (const dir of ["inbound", "outbound"] as const) {
      const l = d[dir];
      lines.push(`${label} ${dir}: ${l ? describeLimit(l) : "no limit"}`);
    }
  }
  for (const w of r.warnings) lines.push(`warning: ${w}`);
  for (const n of r.plan.notes) lines.push(`${n.level}: ${n.message}`);
  for (const p of r.plan.problems) lines.push(`error ${p.code}: ${p.message}; fix: ${p.fix}`);
  const ops = [
    ...r.rendered.ipPre.map((l) => `ip ${l}`),
    ...r.rendered.tc.map((l) => `tc ${l}`),
    ...r.rendered.ipPost.map((l) => `ip ${l}`),
  ];
  lines.push(ops.length ? `${dryRun ? "would run" : "ran"} ${ops.length} operation(s):` : "no change needed");
  for (const l of ops) lines.push(`  ${l}`);
  if (r.failure) {
    lines.push(`FAILED: ${r.failure.message}`);
    lines.push(r.failure.restored ? "previous state restored" : "ROLLBACK INCOMPLETE: run `virtqos status`");
  }
  return lines.join("\n");
}

function resultJson(r: ReconcileResult) {
  return {
    applied: r.applied,
    interfaces: r.desired,
    warnings: r.warnings,
    notes: r.plan.notes,
    problems: r.plan.problems,
    operations: { ip: [...r.rendered.ipPre, ...r.rendered.ipPost], tc: r.rendered.tc },
    failure: r.failure,
  };
}

export function buildProgram(): Command {
  const program = new Command("virtqos")
    .description(
      "Bandwidth control for libvirt/KVM guests. Directions are the guest's: inbound = download, outbound = upload.",
    )
    .option("--config <file>", "policy file (default $VIRTQOS_CONFIG or /etc/virtqos/policy.yaml)")
    .option("--run-dir <dir>", "state and lock directory (default $VIRTQOS_RUN_DIR or /run/virtqos)")
    .option(
      "--state-dir <dir>",
      "persistent state: the transaction journal (default $VIRTQOS_STATE_DIR or /var/lib/virtqos)",
    )
    .addOption(new Option("--netns <name>", "act inside this network namespace (tests, lab)").hideHelp())
    .version(VERSION, "-V, --version")
    .showHelpAfterError()
    .exitOverride();

  const withLog = (g: Globals) =>
    createLogger({
      level: "info",
      target: process.env.VIRTQOS_LOG ? logTargetFromEnv() : g.json ? "silent" : "stderr",
    });

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
      const g: Globals = { ...program.opts(), json: opts.json };
      const log = withLog(g);
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
      let confirm: { id: string; deadline?: string } | undefined;
      if (opts.confirm) {
        const timeoutMs = parseTimeout("--confirm", opts.confirm);
        const t = await txBegin(txContext(g, log), {
          timeoutMs,
          beforeOpen: (id) => spawnWatcher(cliEntry(), id, watcherGlobals(g)),
        });
        confirm = { id: t.id, deadline: t.deadline };
        if (opts.policy) writeDurable(policyPath(g.config), readFileSync(opts.policy));
      }
      const r = await reconcile(context(g, log), {
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

  addTxCommands(program, {
    globals: () => program.opts<Globals>(),
    log: withLog,
    out,
    cliEntry: cliEntry(),
  });

  program
    .command("status")
    .description(
      "every shaped interface: guest, device, direction, configured vs kernel, bytes, drops, overlimits, match",
    )
    .option("--json", "machine-readable output")
    .action(async (opts: { json?: boolean }) => {
      const g: Globals = { ...program.opts(), json: opts.json };
      const log = withLog(g);
      const ctx = context(g, log);
      let policy: ReturnType<typeof loadPolicy>;
      try {
        policy = loadPolicy(policyPath(g.config));
      } catch {
        policy = loadPolicy("/nonexistent");
      }
      const caps = await cachedCapabilities(ctx.runner, ctx.runDir);
      const rows = await collectStatus(ctx.runner, ctx.runDir, caps, policy);
      out(g, { interfaces: rows }, statusTable(rows));
      await log.close();
      process.exitCode = rows.every((r) => r.matches) ? EXIT.OK : EXIT.MISMATCH;
    });

  program
    .command("clear")
    .description("remove everything virtqos created (for one domain with --domain)")
    .option("--domain <name-or-uuid>", "only this domain")
    .option("--json", "machine-readable output")
    .action(async (opts: { domain?: string; json?: boolean }) => {
      const g: Globals = { ...program.opts(), json: opts.json };
      const log = withLog(g);
      const ctx = context(g, log);
      let scope: string[] | "all" = "all";
      if (opts.domain) {
        const want = opts.domain.toLowerCase();
        const rec = loadRecords(ctx.runDir).find(
          (r) => r.domainName === opts.domain || r.domainUuid === want,
        );
        scope = [rec?.domainUuid ?? want];
      }
      const r = await reconcile(ctx, { domains: [], policy: loadPolicy("/nonexistent"), scope, sweep: true });
      await log.close();
      out(g, resultJson(r), summarise(r, false));
      process.exitCode = exitFor(r);
    });

  program
    .command("doctor")
    .description(
      "probe the kernel and iproute2: qdiscs, classifiers, actions, IFB, and which recipe virtqos will use",
    )
    .option("--json", "machine-readable output")
    .action(async (opts: { json?: boolean }) => {
      const g: Globals = { ...program.opts(), json: opts.json };
      const runner = processRunner({ netns: g.netns });
      const report = await probeCapabilities(runner);
      let policyLeaf: "auto" | "fq_codel" | "sfq" | "fifo" = "auto";
      let upload: "shape" | "police" = "shape";
      try {
        const p = loadPolicy(policyPath(g.config));
        policyLeaf = p.leaf;
        upload = p.upload;
      } catch {
        // doctor reports the kernel; policy problems are `virtqos plan`'s to report.
      }
      const leaf = chooseLeaf(1_250_000, report, policyLeaf);
      const uploadRecipe =
        upload === "police"
          ? report.actions.includes("police")
            ? "police (u32 + police action on the tap's ingress): drops above the rate, as libvirt does"
            : "police requested but the police action is missing: `virtqos apply` will refuse (POLICE_UNAVAILABLE)"
          : report.ifb && report.actions.includes("mirred")
            ? `shape: ${report.qdiscs.includes("clsact") ? "clsact" : "ingress"} hook + ${report.classifiers.includes("matchall") ? "matchall" : "u32 match-all"} + mirred redirect to an IFB carrying HTB`
            : "UNAVAILABLE: needs IFB and the mirred action";
      const recipe = {
        download: `HTB root 7651: on the tap (class 7651:1, burst/cburst from rate) + leaf ${leaf.leaf.kind}`,
        leafReason: leaf.why,
        upload: uploadRecipe,
        allProtocols:
          "filters use `protocol all` and HTB's default class: IPv4, IPv6, ARP and others are shaped alike",
      };
      const ok = report.qdiscs.includes("htb") && report.ifb && report.actions.includes("mirred");
      const text = [
        `iproute2 ${report.iproute2}, kernel ${report.kernel}`,
        `qdiscs:      ${report.qdiscs.join(", ") || "-"}`,
        `classifiers: ${report.classifiers.join(", ") || "-"}`,
        `actions:     ${report.actions.join(", ") || "-"}`,
        `ifb:         ${report.ifb ? "yes" : "NO"}`,
        `missing:     ${Object.keys(report.errors).join(", ") || "nothing"}`,
        "",
        `guest download (inbound): ${recipe.download}`,
        `  leaf choice: ${recipe.leafReason}`,
        `guest upload (outbound):  ${recipe.upload}`,
        `protocols: ${recipe.allProtocols}`,
        "",
        ok
          ? "verdict: virtqos can shape both directions here"
          : "verdict: PROBLEMS above; see docs/errors.md",
      ].join("\n");
      out(g, { ...report, recipe, ok }, text);
      process.exitCode = ok ? EXIT.OK : EXIT.FAILED;
    });

  program
    .command("install-hook")
    .description("install the libvirt qemu hook as /etc/libvirt/hooks/qemu.d/virtqos")
    .option("--hooks-dir <dir>", "libvirt hooks directory", "/etc/libvirt/hooks")
    .option(
      "--reload",
      "send SIGHUP to the running libvirtd so it rescans its hooks (running guests are unaffected)",
    )
    .option("--systemd-dir <dir>", "where to install virtqos-recover.service", "/etc/systemd/system")
    .option("--json", "machine-readable output")
    .action((opts: { hooksDir: string; reload?: boolean; systemdDir: string; json?: boolean }) => {
      const g: Globals = { ...program.opts(), json: opts.json };
      const r = installHook(opts.hooksDir);
      let reloaded = false;
      if (opts.reload) reloaded = reloadLibvirtd();
      const recover = installRecoverUnit(opts.systemdDir, { stateDir: g.stateDir });
      const message = `${
        opts.reload
          ? `${r.message.split("\n")[0]}\n${reloaded ? "libvirtd reloaded (SIGHUP): the hook is active now" : "could not signal libvirtd (not running?): start it and the hook is active"}`
          : r.message
      }\n${recover.message}`;
      out(g, { ...r, reloaded, recoverUnit: recover, message }, message);
    });

  program
    .command("hook")
    .description(
      "libvirt hook entry point: virtqos hook qemu <domain> <operation> <sub-operation> <extra> < domain.xml",
    )
    .argument("<driver>", "hook driver (qemu)")
    .argument("[args...]", "domain operation sub-operation extra")
    .action(async (driver: string, args: string[]) => {
      const stdin = await readStdin();
      if (driver !== "qemu") return;
      const r = await runHook(args, stdin, { netns: program.opts<Globals>().netns });
      if (r.stdout) process.stdout.write(r.stdout);
      process.exitCode = r.exitCode;
    });

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
        const { runLab } = await import("./lab/demo.js");
        const code = await runLab({ ...opts, json: opts.json ?? false });
        process.exitCode = code;
      },
    );

  return program;
}

async function readStdin(): Promise<string> {
  if (process.stdin.isTTY) return "";
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}

/** Where the bundled hook lives: next to this bundle in dist/. */
function hookBundlePath(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const candidates = [join(here, "hook-loader.cjs"), join(here, "..", "dist", "hook-loader.cjs")];
  return resolve(candidates.find((c) => existsSync(c)) ?? candidates[0]);
}

export function installHook(hooksDir: string): { path: string; restartNeeded: boolean; message: string } {
  const dir = join(hooksDir, "qemu.d");
  const path = join(dir, "virtqos");
  const dirExisted = existsSync(dir);
  const fileExisted = existsSync(path);
  mkdirSync(dir, { recursive: true });
  // A node script, not a shell wrapper: one process less on every guest start.
  const body = `#!${process.execPath}\n// Installed by \`virtqos install-hook\`. libvirt runs it as: virtqos <domain> <operation> <sub-operation> <extra>\nrequire(${JSON.stringify(hookBundlePath())});\n`;
  const tmp = `${path}.tmp`;
  writeFileSync(tmp, body, { mode: 0o755 });
  chmodSync(tmp, 0o755);
  renameSync(tmp, path);
  // libvirtd decides whether a qemu hook exists when it starts and on SIGHUP, and then runs every executable
  // in qemu.d. A new file is picked up at once only if another hook was already there at that moment.
  const otherHooks = dirExisted && readdirSync(dir).some((f) => f !== "virtqos" && !f.endsWith(".tmp"));
  const restartNeeded = !fileExisted && !otherHooks;
  const message = [
    `installed ${path} -> ${hookBundlePath()}`,
    restartNeeded
      ? "libvirtd looks for hooks only when it starts or reloads: run `systemctl reload libvirtd` (or `kill -HUP $(cat /run/libvirtd.pid)`, or `virtqos install-hook --reload`). Running guests are not affected; they are shaped from their next start."
      : "libvirtd already runs hooks from this directory: the hook is active for the next guest start, no reload needed",
  ].join("\n");
  return { path, restartNeeded, message };
}

/**
 * virtqos-recover.service, where systemd runs: rolls back a transaction left open by a crash or a reboot
 * before libvirtd starts guests. The unit file ships in systemd/; paths are filled in for this install.
 */
export function installRecoverUnit(
  unitDir = "/etc/systemd/system",
  opts: { stateDir?: string; systemdRunning?: boolean; enable?: boolean } = {},
): { path?: string; enabled: boolean; message: string } {
  const running = opts.systemdRunning ?? existsSync("/run/systemd/system");
  if (!running) {
    return {
      enabled: false,
      message:
        "systemd is not running here: virtqos-recover.service not installed; run `virtqos tx recover` at boot before libvirtd instead",
    };
  }
  const root = resolve(dirname(fileURLToPath(import.meta.url)), "..");
  const template = readFileSync(join(root, "systemd", "virtqos-recover.service"), "utf8");
  const unit = template
    .replaceAll("@NODE@", process.execPath)
    .replaceAll("@VIRTQOS_ROOT@", root)
    .replaceAll("@STATE_DIR@", opts.stateDir ?? defaultStateDir());
  mkdirSync(unitDir, { recursive: true });
  const path = join(unitDir, "virtqos-recover.service");
  writeFileSync(`${path}.tmp`, unit, { mode: 0o644 });
  renameSync(`${path}.tmp`, path);
  let enabled = false;
  if (opts.enable ?? true) {
    const reload = spawnSync("systemctl", ["daemon-reload"], { stdio: "ignore" });
    const enable = spawnSync("systemctl", ["enable", "virtqos-recover.service"], { stdio: "ignore" });
    enabled = reload.status === 0 && enable.status === 0;
  }
  return {
    path,
    enabled,
    message: `installed ${path}${enabled ? " (enabled: runs `virtqos tx recover` before libvirtd at boot)" : "; enable it with `systemctl enable virtqos-recover.service`"}`,
  };
}

function reloadLibvirtd(): boolean {
  try {
    const pid = Number(readFileSync("/run/libvirtd.pid", "utf8").trim());
    if (!Number.isInteger(pid) || pid <= 1) return false;
    process.kill(pid, "SIGHUP");
    return true;
  } catch {
    return false;
  }
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
    const err = e as Error & { code?: string };
    const code = e instanceof PolicyError ? "POLICY_INVALID" : (err.code ?? "");
    const info = ERRORS[code];
    const json = argv.includes("--json");
    if (json) {
      process.stdout.write(
        `${JSON.stringify({ error: { code: code || "INTERNAL", message: err.message } }, null, 2)}\n`,
      );
    } else {
      process.stderr.write(`virtqos: ${code ? `${code}: ` : ""}${err.message}\n`);
      if (info && !(e instanceof PolicyError)) process.stderr.write(`fix: ${info.fix}\n`);
    }
    return info?.exitCode ?? EXIT.FAILED;
  }
}
