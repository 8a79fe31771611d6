import { readFileSync } from "node:fs";
import { prepareHook, runHook } from "./hook.js";

// Entry point of the installed libvirt hook (/etc/libvirt/hooks/qemu.d/virtqos, through dist/hook-loader.cjs):
// argv is <domain> <operation> <sub-operation> <extra>, the domain XML is on stdin. Kept apart from the CLI so
// the hook loads nothing it does not need (no commander, no lab).

export async function main(): Promise<void> {
  // Last line of defence: whatever escapes runHook must not fail a guest start (strict mode is decided inside).
  for (const event of ["uncaughtException", "unhandledRejection"] as const) {
    process.on(event, (e: unknown) => {
      process.stderr.write(
        `virtqos: ERROR: hook internal error: ${e instanceof Error ? e.message : String(e)}\n`,
      );
      process.exit(0);
    });
  }
  const args = process.argv.slice(2);
  const prepared = await prepareHook(args);
  // A plain read of fd 0: libvirt writes the XML and closes the pipe, and setting up process.stdin as a
  // stream costs the hook more start-up time than the read itself.
  let stdin = "";
  try {
    stdin = readFileSync(0, "utf8");
  } catch {
    // No stdin (a TTY or closed): the operation decides whether it needed the XML.
  }
  const result = await runHook(args, stdin, { prepared });
  // Exit as soon as the answer is out: libvirt waits for the hook, not for Node to wind down its handles.
  if (result.stdout) process.stdout.write(result.stdout, () => process.exit(result.exitCode));
  else process.exit(result.exitCode);
}
