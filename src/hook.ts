import { type ProcessRunner, processRunner } from "./adapters/exec.js";
import { type BaseDump, dumpLinksAndQdiscs } from "./adapters/kernel.js";
import { dropLiveSlots } from "./adapters/live-store.js";
import { acquireLock } from "./adapters/lock.js";
import { createLogger, type Logger } from "./adapters/log.js";
import { loadPolicyCached, policyAsksStrict } from "./adapters/policy-file.js";
import { currentActor } from "./adapters/tx-journal.js";
import { reconcile } from "./app/engine.js";
import { defaultRunDir, hookNetns, logTargetFromEnv, policyPath } from "./config.js";
import { parseDomainXml } from "./core/domain-xml.js";
import { ERRORS, errorCodeOf } from "./core/errors.js";
import type { Policy } from "./core/policy.js";
import { emptyPolicy } from "./core/policy-empty.js";

// The libvirt qemu hook: `virtqos hook qemu <domain> <operation> <sub-operation> <extra>`, domain XML on stdin.
// It never calls libvirt (libvirt waits for the hook: a call back can deadlock), and unless the policy asks
// for strict mode it never fails a guest start and never writes to stdout. It always ends: a wall-clock
// deadline (policy `hookTimeout`, default 20 s) stops whatever it is waiting for.

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

export const DEFAULT_HOOK_TIMEOUT_MS = 20_000;
/** After the deadline: how long the engine's rollback of an interrupted batch may take. */
export const HOOK_ROLLBACK_GRACE_MS = 3_000;
/** How long the final log lines may take to reach logger(1). */
const LOG_CLOSE_MS = 1_000;

/**
 * The hook's wall-clock limit, counted from `startedAt` (the process start for the real hook). Armed with the
 * default before the policy is read, re-armed with the policy's `hookTimeout` once it is. `hardStop`, if given,
 * runs once the deadline, the rollback grace and a second more have all passed: the caller's last resort when
 * even the guarded path did not return (it exits the process).
 */
export class HookDeadline {
  timeoutMs: number;
  /** The policy asked for strict mode (known once the policy is read). */
  strict = false;
  readonly expired: Promise<void>;
  private hasExpired = false;
  private fire: () => void = () => {};
  private timer: NodeJS.Timeout | undefined;
  private hardTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly startedAt = Date.now(),
    timeoutMs = DEFAULT_HOOK_TIMEOUT_MS,
    private readonly hardStop?: () => void,
  ) {
    this.timeoutMs = timeoutMs;
    this.expired = new Promise((resolve) => {
      this.fire = () => {
        this.hasExpired = true;
        resolve();
      };
    });
    this.set(timeoutMs);
  }

  /** Change the limit (still counted from `startedAt`); no effect once it has expired. */
  set(timeoutMs: number): void {
    if (this.hasExpired) return;
    this.timeoutMs = timeoutMs;
    clearTimeout(this.timer);
    this.timer = setTimeout(this.fire, this.remainingMs());
    if (this.hardStop) {
      clearTimeout(this.hardTimer);
      const hard = this.remainingMs() + HOOK_ROLLBACK_GRACE_MS + LOG_CLOSE_MS + 1_000;
      // Unref'd: it must never be what keeps the process alive.
      this.hardTimer = setTimeout(this.hardStop, hard).unref();
    }
  }

  remainingMs(): number {
    return Math.max(0, this.startedAt + this.timeoutMs - Date.now());
  }

  get isExpired(): boolean {
    return this.hasExpired;
  }

  dispose(): void {
    clearTimeout(this.timer);
    clearTimeout(this.hardTimer);
  }
}

export interface PreparedHook {
  release: () => void;
  base: BaseDump;
  /** The runner the dumps run on: the deadline kills what it still runs. */
  runner: ProcessRunner;
}

/**
 * Take the lock and start the kernel dumps before the XML has even been read: a guest start waits for the
 * hook, and these are its slowest steps. Only for operations that change the kernel.
 */
export async function prepareHook(
  args: string[],
  opts: { netns?: string; deadline?: HookDeadline } = {},
): Promise<PreparedHook | undefined> {
  const action = hookAction(args[1] ?? "", args[2] ?? "");
  if (action !== "apply" && action !== "remove") return undefined;
  try {
    const release = await acquireLock(
      defaultRunDir(),
      opts.deadline ? Math.max(1, opts.deadline.remainingMs()) : undefined,
    );
    const runner = processRunner({ netns: hookNetns(opts.netns) });
    const base = dumpLinksAndQdiscs(runner);
    base.catch(() => {}); // awaited (and reported) by observe(); never an unhandled rejection meanwhile
    return { release, base, runner };
  } catch {
    return undefined; // runHook takes the lock itself and reports the problem
  }
}

/** `p`'s value, or undefined once `ms` have passed (leaving no timer behind either way). */
async function within<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  try {
    const late = new Promise<undefined>((r) => {
      timer = setTimeout(r, ms, undefined);
    });
    return await Promise.race([p, late]);
  } finally {
    clearTimeout(timer);
  }
}

const seconds = (ms: number) => `${Number((ms / 1000).toFixed(3))} s`;

/**
 * Run the hook. It returns by the deadline (`opts.deadline`, else one of the default length from now, re-armed
 * from the policy's `hookTimeout`): then it logs HOOK_TIMEOUT, kills the tc/ip processes it started (an
 * interrupted batch fails, and the engine rolls the touched devices back), waits at most
 * HOOK_ROLLBACK_GRACE_MS for that, releases the lock and answers 0 (1 with `strict: true`).
 */
export async function runHook(
  args: string[],
  stdin: string,
  opts: {
    netns?: string;
    prepared?: PreparedHook;
    deadline?: HookDeadline;
    /** The policy, already being loaded (loadPolicyCached of the default file and run dir). */
    policy?: Promise<Policy>;
  } = {},
): Promise<HookResult> {
  const [domainName = "", operation = "", subOperation = ""] = args;
  const log = createLogger({ level: "info", target: logTargetFromEnv() });
  const deadline = opts.deadline ?? new HookDeadline();
  const runner = opts.prepared?.runner ?? processRunner({ netns: hookNetns(opts.netns) });
  const action = hookAction(operation, subOperation);
  const work = hookWork(args, stdin, { ...opts, log, deadline, runner });
  try {
    const done = await Promise.race([work, deadline.expired.then(() => undefined)]);
    if (done && !done.deadlinePassed) return done;
    const killed = runner.kill();
    log.error(
      `HOOK_TIMEOUT: hook ${operation} ${subOperation} for guest=${domainName} did not finish within ${seconds(deadline.timeoutMs)} (policy hookTimeout); ${
        killed.length
          ? `killed what it was waiting for: ${killed.join("; ")}`
          : "no tc/ip process was running (waiting for the lock, the policy or the XML)"
      }; ${deadline.strict ? "strict: true, so the hook fails" : "the hook exits 0 and does not hold the guest up"}`,
    );
    // A batch the kill interrupted has failed: the engine is now rolling the devices it touched back.
    if ((await within(work, HOOK_ROLLBACK_GRACE_MS)) === undefined) {
      const more = runner.close(); // nothing more runs once the lock is released
      log.error(
        `HOOK_TIMEOUT: guest=${domainName}: giving up after ${seconds(HOOK_ROLLBACK_GRACE_MS)} more${
          more.length ? `, killed ${more.join("; ")}` : ""
        }; what an interrupted batch changed is left as it is (its devices carry virtqos's names and handles) and the state records are not updated: the next apply for this guest (its next start, or \`virtqos apply --xml\`) converges`,
      );
    }
    if (deadline.strict) process.stderr.write(`virtqos: HOOK_TIMEOUT after ${seconds(deadline.timeoutMs)}\n`);
    return { exitCode: deadline.strict ? 1 : 0, stdout: action === "passthrough" ? stdin : "" };
  } finally {
    opts.prepared?.release();
    if (!opts.deadline) deadline.dispose();
    await within(log.close(), LOG_CLOSE_MS);
  }
}

async function hookWork(
  args: string[],
  stdin: string,
  opts: {
    log: Logger;
    deadline: HookDeadline;
    runner: ProcessRunner;
    prepared?: PreparedHook;
    policy?: Promise<Policy>;
  },
): Promise<HookResult & { deadlinePassed?: boolean }> {
  const [domainName = "", operation = "", subOperation = "", extra = "-"] = args;
  const { log, deadline } = opts;
  const file = policyPath();
  try {
    const action = hookAction(operation, subOperation);
    const runDir = defaultRunDir();
    let policy: Policy;
    try {
      policy = await (opts.policy ?? loadPolicyCached(file, runDir));
    } catch (e) {
      deadline.strict = policyAsksStrict(file);
      // Removing what virtqos created needs no policy: a broken file must not leave IFBs behind a stopped guest.
      if (action !== "remove") throw e;
      log.error(
        `policy ${file} is invalid; removing this guest's shaping anyway: ${(e as Error).message.replace(/\n/g, "; ")}`,
      );
      policy = emptyPolicy(file);
    }
    deadline.strict = policy.strict;
    if (policy.hookTimeoutMs !== undefined) deadline.set(policy.hookTimeoutMs);
    log.setLevel(policy.logLevel);
    log.debug(
      `hook called: domain=${domainName} operation=${operation} sub-operation=${subOperation} extra=${extra}`,
    );
    if (action === "passthrough") return { exitCode: 0, stdout: stdin };
    if (action === "none") return { exitCode: 0, stdout: "" };
    // Past the deadline before the first change (the lock or the XML came too late): change nothing.
    if (deadline.isExpired) return { exitCode: deadline.strict ? 1 : 0, stdout: "", deadlinePassed: true };
    const domain = parseDomainXml(stdin);
    // A new run of the guest: the previous run's live-only limits (`virtqos set --live`) end here.
    if (operation === "start" && action === "apply") {
      try {
        dropLiveSlots(undefined, domain.uuid);
      } catch (e) {
        log.warning(`LIVE_STORE_INVALID: ${(e as Error).message}; the configured limits apply`);
      }
    }
    const result = await reconcile(
      {
        runner: opts.runner,
        runDir,
        log,
        held: opts.prepared ? { base: opts.prepared.base } : undefined,
        lockTimeoutMs: Math.max(1, deadline.remainingMs()),
        who: currentActor("hook"),
      },
      { domains: action === "apply" ? [domain] : [], policy, scope: [domain.uuid], sweep: true },
    );
    const failed = result.failure !== undefined || result.plan.problems.length > 0;
    if (failed && deadline.strict) return { exitCode: 1, stdout: "" };
    return { exitCode: 0, stdout: "" };
  } catch (e) {
    const err = e as Error;
    // The code and the catalogue's fix (a policy error's message has a fix per problem already).
    const code = errorCodeOf(e);
    const fix = code && code !== "POLICY_INVALID" ? `; fix: ${ERRORS[code].fix}` : "";
    log.error(
      `hook ${operation} ${subOperation} for guest=${domainName} failed${deadline.isExpired ? " (stopped by HOOK_TIMEOUT)" : ""}: ${code ? `${code}: ` : ""}${err.message.replace(/\n/g, "; ")}${fix}`,
    );
    if (deadline.strict) {
      process.stderr.write(`virtqos: ${err.message}\n`);
      return { exitCode: 1, stdout: "" };
    }
    return { exitCode: 0, stdout: "" };
  }
}
