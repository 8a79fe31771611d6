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
import { basename, dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { Command } from "commander";
import { DEFAULT_HOOKS_DIR, DEFAULT_SYSTEMD_DIR, defaultStateDir, LIBVIRTD_PID_FILE } from "../config.js";
import { globals, out } from "./context.js";

// `virtqos install-hook`: the libvirt qemu hook, and virtqos-recover.service where systemd runs.

export function addInstallHookCommand(program: Command): void {
  program
    .command("install-hook")
    .description("install the libvirt qemu hook as /etc/libvirt/hooks/qemu.d/virtqos")
    .option("--hooks-dir <dir>", "libvirt hooks directory", DEFAULT_HOOKS_DIR)
    .option(
      "--reload",
      "send SIGHUP to the running libvirtd so it rescans its hooks (running guests are unaffected)",
    )
    .option("--systemd-dir <dir>", "where to install virtqos-recover.service", DEFAULT_SYSTEMD_DIR)
    .option("--json", "machine-readable output")
    .action((opts: { hooksDir: string; reload?: boolean; systemdDir: string; json?: boolean }) => {
      const g = globals(program, opts.json);
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
}

/** The virtqos checkout: the parent of dist/ (the CLI bundle) or of src/ (this file, run from source). */
function checkoutRoot(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  return resolve(here, basename(here) === "cli" ? "../.." : "..");
}

/** Where the bundled hook lives: next to the CLI bundle in dist/. */
function hookBundlePath(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const candidates = [join(here, "hook-loader.cjs"), join(checkoutRoot(), "dist", "hook-loader.cjs")];
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
  unitDir = DEFAULT_SYSTEMD_DIR,
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
  const root = checkoutRoot();
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
    const pid = Number(readFileSync(LIBVIRTD_PID_FILE, "utf8").trim());
    if (!Number.isInteger(pid) || pid <= 1) return false;
    process.kill(pid, "SIGHUP");
    return true;
  } catch {
    return false;
  }
}
