import type { Logger } from "../../src/adapters/log.js";

export interface LogLine {
  level: "debug" | "info" | "warning" | "error";
  msg: string;
}

/** A Logger that keeps every line, for tests that check what was logged. */
export function captureLog(lines: LogLine[]): Logger {
  const add = (level: LogLine["level"]) => (msg: string) => {
    lines.push({ level, msg });
  };
  return {
    debug: add("debug"),
    info: add("info"),
    warning: add("warning"),
    error: add("error"),
    setLevel: () => {},
    close: async () => {},
  };
}
