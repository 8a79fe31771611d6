import { request } from "node:http";

// Talking to a running `virtqos agent` from the end-to-end tests: one HTTP request over its unix socket or
// TCP, and waiting for a condition with a deadline.

export interface Answer {
  status: number;
  body: unknown;
}

export interface Target {
  /** The agent's unix socket; otherwise TCP on 127.0.0.1:port. */
  socketPath?: string;
  port?: number;
  headers?: Record<string, string>;
}

export function http(to: Target, method: string, path: string, body?: unknown): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = request(
      {
        socketPath: to.socketPath,
        host: to.socketPath ? undefined : "127.0.0.1",
        port: to.port,
        method,
        path,
        headers: { ...(data ? { "content-type": "application/json" } : {}), ...to.headers },
      },
      (res) => {
        let text = "";
        res.setEncoding("utf8").on("data", (c: string) => {
          text += c;
        });
        res.on("end", () => {
          let parsed: unknown = text;
          try {
            parsed = text ? JSON.parse(text) : undefined;
          } catch {
            // Text (the metrics): returned as it is.
          }
          resolve({ status: res.statusCode ?? 0, body: parsed });
        });
      },
    );
    req.on("error", reject);
    if (data) req.write(data);
    req.end();
  });
}

/** Poll `fn` every 20 ms until it holds; the time it took, or an error naming `what` after `timeoutMs`. */
export async function until(what: string, fn: () => Promise<boolean>, timeoutMs = 10_000): Promise<number> {
  const t0 = performance.now();
  while (performance.now() - t0 < timeoutMs) {
    if (await fn().catch(() => false)) return performance.now() - t0;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`${what}: not within ${timeoutMs} ms`);
}
