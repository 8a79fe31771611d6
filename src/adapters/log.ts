import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import type { LogTarget } from "../config.js";
import type { LogLevel } from "../core/policy.js";

// Syslog as the hook scripts operators replace wrote it (grep-able by their existing alerts): ident "virtqos", "LEVEL: message". Node cannot write to /dev/log (a datagram socket)
// without a native module, so one logger(1) process per run takes every line, each with its own priority.

const SEVERITY: Record<LogLevel, number> = { debug: 7, info: 6, warning: 4, error: 3 };
const ORDER: LogLevel[] = ["debug", "info", "warning", "error"];
const FACILITY_DAEMON = 3;

export interface Logger {
  debug(msg: string): void;
  info(msg: string): void;
  warning(msg: string): void;
  error(msg: string): void;
  setLevel(level: LogLevel): void;
  /** Wait until logger(1) has taken every line. */
  close(): Promise<void>;
}

export function createLogger(opts: { level: LogLevel; target: LogTarget }): Logger {
  let level = opts.level;
  let target = opts.target;
  if (target === "syslog" && !existsSync("/dev/log")) target = "stderr";
  let child: ChildProcess | undefined;
  let exited: Promise<void> | undefined;
  const write = (lvl: LogLevel, msg: string) => {
    if (ORDER.indexOf(lvl) < ORDER.indexOf(level)) return;
    const line = `${lvl.toUpperCase()}: ${msg.replace(/\n/g, " | ")}`;
    if (target === "silent") return;
    if (target === "stderr") {
      process.stderr.write(`virtqos: ${line}\n`);
      return;
    }
    if (!child) {
      child = spawn("logger", ["--prio-prefix", "-t", "virtqos"], { stdio: ["pipe", "ignore", "ignore"] });
      exited = new Promise((resolve) => {
        child?.on("close", () => resolve());
        child?.on("error", () => resolve());
      });
      child.stdin?.on("error", () => {});
    }
    child.stdin?.write(`<${FACILITY_DAEMON * 8 + SEVERITY[lvl]}>${line}\n`);
  };
  return {
    debug: (m) => write("debug", m),
    info: (m) => write("info", m),
    warning: (m) => write("warning", m),
    error: (m) => write("error", m),
    setLevel: (l) => {
      level = l;
    },
    async close() {
      if (child) {
        child.stdin?.end();
        await exited;
      }
    },
  };
}
