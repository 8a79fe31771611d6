import { processRunner } from "./adapters/exec.js";
import { type BaseDump, dumpLinksAndQdiscs } from "./adapters/kernel.js";
import { acquireLock } from "./adapters/lock.js";
import { createLogger, logTargetFromEnv } from "./adapters/log.js";
import { loadPolicyCached, policyAsksStrict, policyPath } from "./adapters/policy-file.js";
import { defaultRunDir } from "./adapters/state.js";
import { reconcile } from "./app/engine.js";
import { parseDomainXml } from "./core/domain-xml.js";
import type { Policy } from "./core/policy.js";
import { emptyPolicy } from "./core/policy-empty.js";

// The libvirt qemu hook: `virtqos hook qemu <domain> <operation> <sub-operation> <extra>`, domain XML on stdin.
// It never calls libvirt (libvirt waits for the hook: a call back can deadlock), and unless the policy asks
// for strict mode it never fails a guest start and never writes to stdout.

export interface HookResult {
  exitCode: number;
  stdout: string;
}

type Action = "apply" | "remove" | "passthrough" | "none";

export function hookAction(operation: string, subOperation: string): Action {
  if ((operation === "start" || operation === "started") && subOperation === "begin") return "apply";
  if ((operation === "stopped" || operation === "release") && subOperation === "end") return "remove";
  if (operation === "migrate" || operation === "restore") return "passthrough";
  return "none";
}

export interface PreparedHook {
  release: () => void;
  base: BaseDump;
}

/**
 * Take the lock and start the kernel dumps before the XML has even been read: a guest start waits for the
 * hook, and these are its slowest steps. Only for operations that change the kernel.
 */
export async function prepareHook(
  args: string[],
  opts: { netns?: string } = {},
): Promise<PreparedHook | undefined> {
  const action = hookAction(args[1] ?? "", args[2] ?? "");
  if (action !== "apply" && action !== "remove") return undefined;
  try {
    const release = await acquireLock(defaultRunDir());
    const base = dumpLinksAndQdiscs(processRunner({ netns: opts.netns ?? process.env.VIRTQOS_NETNS }));
    base.catch(() => {}); // awaited (and reported) by observe(); never an unhandled rejection meanwhile
    return { release, base };
  } catch {
    return undefined; // runHook takes the lock itself and reports the problem
  }
}

export async function runHook(
  args: string[],
  stdin: string,
  opts: { netns?: string; prepared?: PreparedHook } = {},
): Promise<HookResult> {
  const [domainName = "", operation = "", subOperation = "", extra = "-"] = args;
  const file = policyPath();
  const log = createLogger({ level: "info", target: logTargetFromEnv() });
  let strict = false;
  try {
    const action = hookAction(operation, subOperation);
    const runDir = defaultRunDir();
    let policy: Policy;
    try {
      policy = await loadPolicyCached(file, runDir);
    } catch (e) {
      strict = policyAsksStrict(file);
      // Removing what virtqos created needs no policy: a broken file must not leave IFBs behind a stopped guest.
      if (action !== "remove") throw e;
      log.error(
        `policy ${file} is invalid; removing this guest's shaping anyway: ${(e as Error).message.replace(/\n/g, "; ")}`,
      );
      policy = emptyPolicy(file);
    }
    strict = policy.strict;
    log.setLevel(policy.logLevel);
    log.debug(
      `hook called: domain=${domainName} operation=${operation} sub-operation=${subOperation} extra=${extra}`,
    );
    if (action === "passthrough") return { exitCode: 0, stdout: stdin };
    if (action === "none") return { exitCode: 0, stdout: "" };
    const domain = parseDomainXml(stdin);
    const result = await reconcile(
      {
        runner: processRunner({ netns: opts.netns ?? process.env.VIRTQOS_NETNS }),
        runDir,
        log,
        held: opts.prepared ? { base: opts.prepared.base } : undefined,
      },
      { domains: action === "apply" ? [domain] : [], policy, scope: [domain.uuid], sweep: true },
    );
    const failed = result.failure !== undefined || result.plan.problems.length > 0;
    if (failed && strict) return { exitCode: 1, stdout: "" };
    return { exitCode: 0, stdout: "" };
  } catch (e) {
    const err = e as Error & { code?: string };
    log.error(
      `hook ${operation} ${subOperation} for guest=${domainName} failed: ${err.message.replace(/\n/g, "; ")}`,
    );
    if (strict) {
      process.stderr.write(`virtqos: ${err.message}\n`);
      return { exitCode: 1, stdout: "" };
    }
    return { exitCode: 0, stdout: "" };
  } finally {
    opts.prepared?.release();
    await log.close();
  }
}
