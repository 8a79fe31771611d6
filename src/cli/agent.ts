import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { Command } from "commander";
import { startAgent } from "../agent/main.js";
import { apiSocketPath, DEFAULT_SYSTEMD_DIR, defaultStateDir, libvirtUri, tokensPath } from "../config.js";
import { VirtqosError } from "../core/errors.js";
import { cliLogger, context, globals, out } from "./context.js";

// `virtqos agent` (the daemon) and `virtqos install-agent` (its systemd unit).

interface AgentCliOpts {
  socket?: string;
  listen?: string;
  tlsCert?: string;
  tlsKey?: string;
  tokens?: string;
  libvirtUri?: string;
}

export function addAgentCommands(program: Command): void {
  program
    .command("agent")
    .description(
      "run the agent: REST API and Nova action on a unix socket (and TCP with tokens), libvirt events, live changes",
    )
    .option(
      "--socket <path>",
      "unix socket (root and group virtqos, 0660; default $VIRTQOS_API_SOCKET or /run/virtqos/api.sock)",
    )
    .option(
      "--listen <host:port>",
      "also listen on TCP, bearer tokens required (non-loopback needs --tls-cert/--tls-key)",
    )
    .option("--tls-cert <file>", "PEM certificate for the TCP listener")
    .option("--tls-key <file>", "PEM private key for the TCP listener")
    .option("--tokens <file>", "token file (default $VIRTQOS_TOKENS or /etc/virtqos/tokens.yaml)")
    .option("--libvirt-uri <uri>", "libvirt connection (default $VIRTQOS_LIBVIRT_URI or qemu:///system)")
    .action(async (o: AgentCliOpts) => {
      const g = globals(program, false);
      const log = cliLogger(g);
      const ctx = context(g, log, "agent");
      const agent = await startAgent({
        runner: ctx.runner,
        runDir: ctx.runDir,
        stateDir: ctx.stateDir,
        policyFile: ctx.policyFile,
        tokensFile: tokensPath(o.tokens),
        socketPath: apiSocketPath(o.socket),
        listen: o.listen,
        tlsCert: o.tlsCert,
        tlsKey: o.tlsKey,
        libvirtUri: libvirtUri(o.libvirtUri),
        log,
        netns: g.netns,
      });
      const where = agent.tcpAddress ? ` and ${agent.tcpAddress.host}:${agent.tcpAddress.port}` : "";
      log.info(`virtqos agent listening on ${apiSocketPath(o.socket)}${where}`);
      await new Promise<void>((done) => {
        const stop = (sig: string) => {
          log.info(`${sig}: stopping (the queue finishes first)`);
          void agent.close().then(done, done);
        };
        process.once("SIGTERM", () => stop("SIGTERM"));
        process.once("SIGINT", () => stop("SIGINT"));
      });
      await log.close();
    });

  program
    .command("install-agent")
    .description("install and enable virtqos-agent.service (systemd)")
    .option("--systemd-dir <dir>", "where to install the unit", DEFAULT_SYSTEMD_DIR)
    .option("--listen <host:port>", "the agent's TCP listener, written into the unit")
    .option("--no-enable", "write the unit only")
    .option("--json", "machine-readable output")
    .action((o: { systemdDir: string; listen?: string; enable: boolean; json?: boolean }) => {
      const g = globals(program, o.json);
      const r = installAgentUnit(o.systemdDir, { stateDir: g.stateDir, listen: o.listen, enable: o.enable });
      out(g, r, r.message);
    });
}

function checkoutRoot(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  return resolve(here, basename(here) === "cli" ? "../.." : "..");
}

export function installAgentUnit(
  unitDir = DEFAULT_SYSTEMD_DIR,
  opts: { stateDir?: string; listen?: string; enable?: boolean; systemdRunning?: boolean } = {},
): { path: string; enabled: boolean; started: boolean; message: string } {
  const root = checkoutRoot();
  const template = readFileSync(join(root, "systemd", "virtqos-agent.service"), "utf8");
  if (opts.listen !== undefined && !/^[\w.:[\]-]+$/.test(opts.listen)) {
    throw new VirtqosError("USAGE", `--listen "${opts.listen}" is not HOST:PORT`);
  }
  const unit = template
    .replaceAll("@NODE@", process.execPath)
    .replaceAll("@VIRTQOS_ROOT@", root)
    .replaceAll("@STATE_DIR@", opts.stateDir ?? defaultStateDir())
    .replaceAll("@ARGS@", opts.listen ? `--listen ${opts.listen}` : "");
  mkdirSync(unitDir, { recursive: true });
  const path = join(unitDir, "virtqos-agent.service");
  writeFileSync(`${path}.tmp`, unit, { mode: 0o644 });
  renameSync(`${path}.tmp`, path);
  const systemd = opts.systemdRunning ?? existsSync("/run/systemd/system");
  let enabled = false;
  let started = false;
  if (systemd && (opts.enable ?? true)) {
    enabled =
      spawnSync("systemctl", ["daemon-reload"], { stdio: "ignore" }).status === 0 &&
      spawnSync("systemctl", ["enable", "virtqos-agent.service"], { stdio: "ignore" }).status === 0;
    started =
      enabled &&
      spawnSync("systemctl", ["restart", "virtqos-agent.service"], { stdio: "ignore" }).status === 0;
  }
  const how = systemd
    ? enabled
      ? started
        ? "enabled and started"
        : "enabled; start it with `systemctl start virtqos-agent`"
      : "enable it with `systemctl enable --now virtqos-agent`"
    : "systemd is not running here: run `virtqos agent` under your service manager";
  return { path, enabled, started, message: `installed ${path}: ${how}` };
}
