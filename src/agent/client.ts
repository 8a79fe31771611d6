import { request } from "node:http";
import { currentActor } from "../adapters/tx-journal.js";
import { isErrorCode, VirtqosError } from "../core/errors.js";

const cliUser = () =>
  currentActor("cli")
    .user.replace(/[^A-Za-z0-9._-]/g, "_")
    .slice(0, 64) || "unknown";

// The CLI's way to the agent: one HTTP request over its unix socket (file permissions are the credential).
// `undefined` when no agent listens (no socket, a stale one): the CLI then acts directly on the host.

export interface AgentAnswer {
  status: number;
  body: unknown;
}

export function agentRequest(
  socketPath: string,
  method: string,
  path: string,
  body?: unknown,
  timeoutMs = 30_000,
): Promise<AgentAnswer | undefined> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const req = request(
      {
        socketPath,
        method,
        path,
        headers: {
          // Who runs the CLI, for the audit log (the socket's permissions are the credential).
          "x-virtqos-cli-user": cliUser(),
          ...(data ? { "content-type": "application/json", "content-length": data.length } : {}),
        },
        timeout: timeoutMs,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          let parsed: unknown = text;
          try {
            parsed = text ? JSON.parse(text) : undefined;
          } catch {
            // Not JSON: passed on as text, the caller reports it.
          }
          resolve({ status: res.statusCode ?? 0, body: parsed });
        });
      },
    );
    req.on("timeout", () => req.destroy(new Error(`the agent did not answer within ${timeoutMs} ms`)));
    req.on("error", (e: NodeJS.ErrnoException) => {
      if (e.code === "ENOENT" || e.code === "ECONNREFUSED") resolve(undefined);
      else reject(e);
    });
    if (data) req.write(data);
    req.end();
  });
}

/** An error answer of the agent as the VirtqosError it stands for (same code, message). */
export function agentError(a: AgentAnswer): VirtqosError {
  const e = (a.body as { error?: { code?: string; message?: string } } | undefined)?.error;
  const code = isErrorCode(e?.code) ? e.code : "INTERNAL";
  return new VirtqosError(code, e?.message ?? `the agent answered ${a.status}: ${JSON.stringify(a.body)}`);
}
