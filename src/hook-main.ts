import { closeSync, constants, fstatSync, openSync, readFileSync, readSync } from "node:fs";
import { createLogger } from "./adapters/log.js";
import { loadPolicyCached } from "./adapters/policy-file.js";
import { defaultRunDir, logTargetFromEnv, policyPath } from "./config.js";
import { HookDeadline, prepareHook, runHook } from "./hook.js";

// Entry point of the libvirt hook, through dist/hook-loader.cjs: the installed hook
// (/etc/libvirt/hooks/qemu.d/virtqos) and `bin/virtqos hook qemu ...` both come here. argv is <domain>
// <operation> <sub-operation> <extra>, the domain XML is on stdin. Kept apart from the CLI so the hook loads
// nothing it does not need (no commander, no lab).

export async function main(args: string[] = process.argv.slice(2)): Promise<void> {
  // The deadline counts from the process start. Its last resort, should even the guarded path in runHook not
  // return (which it does within the deadline plus the rollback grace): say so and exit. process.exit() kills
  // the tc/ip children still running and releases the lock files (exit handlers in exec.ts and lock.ts).
  // (process.uptime(), not the `performance` global: that one costs the hook a module load, ~1.5 ms.)
  const deadline = new HookDeadline(Date.now() - process.uptime() * 1000, undefined, () => {
    const log = createLogger({ level: "error", target: logTargetFromEnv() });
    log.error(
      `HOOK_TIMEOUT: hook ${args.slice(1, 3).join(" ")} for guest=${args[0] ?? ""} still running ${Math.round(process.uptime() * 1000)} ms after it started; exiting`,
    );
    void log.close().finally(() => process.exit(deadline.strict ? 1 : 0));
    setTimeout(() => process.exit(deadline.strict ? 1 : 0), 500).unref();
  });
  // Last line of defence: whatever escapes runHook must not fail a guest start (unless strict).
  for (const event of ["uncaughtException", "unhandledRejection"] as const) {
    process.on(event, (e: unknown) => {
      process.stderr.write(
        `virtqos: ERROR: hook internal error: ${e instanceof Error ? e.message : String(e)}\n`,
      );
      process.exit(deadline.strict ? 1 : 0);
    });
  }
  // The (cached) policy first: its hookTimeout bounds the lock wait and the stdin read too. runHook reports
  // an invalid one.
  const policy = loadPolicyCached(policyPath(), defaultRunDir());
  const timeoutMs = (await policy.catch(() => undefined))?.hookTimeoutMs;
  if (timeoutMs !== undefined) deadline.set(timeoutMs);
  const prepared = await prepareHook(args, { deadline });
  const stdin = await readStdin(deadline);
  const result = await runHook(args, stdin, { prepared, deadline, policy });
  deadline.dispose();
  // Exit as soon as the answer is out: libvirt waits for the hook, not for Node to wind down its handles.
  if (result.stdout) process.stdout.write(result.stdout, () => process.exit(result.exitCode));
  else process.exit(result.exitCode);
}

/**
 * The domain XML, without ever blocking the main thread: at the deadline the hook goes on with what it has.
 * libvirt writes it into a pipe and closes it before the hook has even started, so the common case is one
 * non-blocking read (a plain read of fd 0 is what a guest start can afford: setting up process.stdin as a
 * stream costs more start-up time than the read itself). A blocking read of fd 0 would stop the deadline's
 * timers, and one on the thread pool would stop process.exit() until the writer closes the pipe: the pipe is
 * opened again through /proc with O_NONBLOCK and polled instead.
 */
function readStdin(deadline: HookDeadline): Promise<string> {
  let st: ReturnType<typeof fstatSync>;
  try {
    st = fstatSync(0);
  } catch {
    return Promise.resolve(""); // no stdin (closed): the operation decides whether it needed the XML
  }
  if (st.isFile()) return Promise.resolve(readFileSync(0, "utf8"));
  // A terminal (nobody is going to type a domain XML) or /dev/null.
  if (st.isCharacterDevice()) return Promise.resolve("");
  let fd: number | undefined;
  try {
    if (st.isFIFO()) fd = openSync("/proc/self/fd/0", constants.O_RDONLY | constants.O_NONBLOCK);
  } catch {
    // No /proc: the stream below.
  }
  if (fd === undefined) {
    // A socket (or no /proc): the stream, which does not block either.
    const chunks: Buffer[] = [];
    const read = new Promise<string>((resolve) => {
      process.stdin.on("data", (b: Buffer) => chunks.push(b));
      process.stdin.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
      process.stdin.on("error", () => resolve(""));
    });
    return Promise.race([read, deadline.expired.then(() => Buffer.concat(chunks).toString("utf8"))]);
  }
  const pipe = fd;
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const buf = Buffer.allocUnsafe(64 * 1024);
    const finish = () => {
      closeSync(pipe);
      resolve(Buffer.concat(chunks).toString("utf8"));
    };
    const pump = () => {
      for (;;) {
        let n: number;
        try {
          n = readSync(pipe, buf, 0, buf.length, null);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== "EAGAIN" || deadline.isExpired) return finish();
          setTimeout(pump, 2); // the writer has not finished yet
          return;
        }
        if (n === 0) return finish();
        chunks.push(Buffer.from(buf.subarray(0, n)));
      }
    };
    pump();
  });
}
