// The agent's single writer: every change to the kernel it makes (live changes, re-applies after libvirt
// events, drift repair) runs here, one at a time, in arrival order. The engine's file lock still serialises
// the agent with the hook and the CLI; this queue keeps the agent from contending with itself, and
// coalesces re-applies: a re-apply of a domain that is already waiting is not queued twice (ten events
// about one guest within a second cost one reconcile).

interface Job {
  key: string;
  kind: "change" | "reapply";
  run: () => Promise<unknown>;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
  promise: Promise<unknown>;
}

export class WorkQueue {
  private readonly jobs: Job[] = [];
  private running = false;
  private current: Promise<unknown> | undefined;

  /** Jobs waiting plus the one running. */
  get depth(): number {
    return this.jobs.length + (this.running ? 1 : 0);
  }

  /** Run `fn` exclusively, after everything queued before it. */
  run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    return this.push(key, "change", fn) as Promise<T>;
  }

  /** Re-apply a domain: joins a re-apply of the same key that has not started yet. */
  reapply(key: string, fn: () => Promise<unknown>): Promise<void> {
    const waiting = this.jobs.find((j) => j.kind === "reapply" && j.key === key);
    if (waiting) return waiting.promise as Promise<void>;
    return this.push(key, "reapply", fn) as Promise<void>;
  }

  /** Resolves when everything queued so far has run. */
  async idle(): Promise<void> {
    while (this.depth > 0) await Promise.allSettled([this.current, ...this.jobs.map((j) => j.promise)]);
  }

  private push(key: string, kind: Job["kind"], run: () => Promise<unknown>): Promise<unknown> {
    let resolve!: (v: unknown) => void;
    let reject!: (e: unknown) => void;
    const promise = new Promise<unknown>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    this.jobs.push({ key, kind, run, resolve, reject, promise });
    void this.drain();
    return promise;
  }

  private async drain(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      for (let job = this.jobs.shift(); job; job = this.jobs.shift()) {
        this.current = job.promise;
        try {
          job.resolve(await job.run());
        } catch (e) {
          job.reject(e);
        }
      }
    } finally {
      this.running = false;
    }
  }
}
