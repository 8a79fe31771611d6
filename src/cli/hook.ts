import type { Command } from "commander";
import { runHook } from "../hook.js";
import type { Globals } from "./context.js";

// `virtqos hook qemu ...` when the CLI bundle runs it (bin/virtqos sends the real hook to dist/hook-loader.cjs
// before loading the CLI; `--help` and `node dist/virtqos.mjs hook ...` come here).

export function addHookCommand(program: Command): void {
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
}

async function readStdin(): Promise<string> {
  if (process.stdin.isTTY) return "";
  const chunks: Buffer[] = [];
  for await (const c of process.stdin) chunks.push(c as Buffer);
  return Buffer.concat(chunks).toString("utf8");
}
