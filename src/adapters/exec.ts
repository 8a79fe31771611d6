import { spawn } from "node:child_process";

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs iproute2 and friends. Tests substitute a recording runner; nothing else ever builds a shell string. */
export interface Runner {
  run(cmd: string, args: string[], input?: string): Promise<ExecResult>;
}

export class CommandMissingError extends Error {
  readonly code = "COMMAND_MISSING";
}

/** Spawn with an argument array; `netns` prefixes `-n <ns>` for tc and ip so one host can hold many labs. */
export function processRunner(opts: { netns?: string; timeoutMs?: number } = {}): Runner {
  return {
    run(cmd, args, input) {
      const fullArgs = opts.netns && (cmd === "tc" || cmd === "ip") ? ["-n", opts.netns, ...args] : args;
      return new Promise((resolve, reject) => {
        const child = spawn(cmd, fullArgs, {
          stdio: ["pipe", "pipe", "pipe"],
          timeout: opts.timeoutMs ?? 60_000,
        });
        const out: Buffer[] = [];
        const err: Buffer[] = [];
        child.stdout.on("data", (b: Buffer) => out.push(b));
        child.stderr.on("data", (b: Buffer) => err.push(b));
        child.on("error", (e: NodeJS.ErrnoException) => {
          if (e.code === "ENOENT") reject(new CommandMissingError(`${cmd} is not installed or not on PATH`));
          else reject(e);
        });
        child.on("close", (code) =>
          resolve({
            code: code ?? 1,
            stdout: Buffer.concat(out).toString("utf8"),
            stderr: Buffer.concat(err).toString("utf8"),
          }),
        );
        child.stdin.on("error", () => {
          // The child may exit before reading all input (e.g. a batch that fails on line 1); its exit code says why.
        });
        child.stdin.end(input ?? "");
      });
    },
  };
}
