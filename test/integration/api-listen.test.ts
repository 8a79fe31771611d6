import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, lstatSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { request as httpRequest, type RequestOptions } from "node:http";
import { request as httpsRequest } from "node:https";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import type { FastifyInstance } from "fastify";
import { listenTcp, listenUnix, readTls, socketAuthenticator } from "../../src/agent/api/listen.js";
import { buildApi } from "../../src/agent/api/server.js";
import type { Principal } from "../../src/agent/types.js";
import { errorCodeOf } from "../../src/core/errors.js";
import { FAKE_UUIDS, FakeAgentService, fakeAuthenticator } from "../helpers/fake-agent.js";

// biome-ignore lint/suspicious/noExplicitAny: answers are JSON, probed field by field (after a schema check)
type Json = any;

// The real listeners: a unix socket (its mode and group, a stale socket left by a dead agent, a live one),
// TCP on loopback with tokens, the refusal to serve tokens in clear beyond loopback, and HTTPS.

const dirs: string[] = [];
const apps: FastifyInstance[] = [];
after(async () => {
  for (const a of apps) await a.close();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tmp(): string {
  const d = mkdtempSync(join(tmpdir(), "vq-api-"));
  dirs.push(d);
  return d;
}

function app(auth = fakeAuthenticator(), extra: Partial<Parameters<typeof buildApi>[0]> = {}) {
  const service = new FakeAgentService();
  const a = buildApi({ service, auth, ...extra });
  apps.push(a);
  return { app: a, service };
}

interface Reply {
  status: number;
  json: Record<string, Json>;
  headers: Record<string, unknown>;
}

function send(opts: RequestOptions & { body?: unknown; tls?: { ca: Buffer } }): Promise<Reply> {
  const { body, tls, ...rest } = opts;
  const payload = body === undefined ? undefined : JSON.stringify(body);
  const headers: Record<string, string | number> = { ...(rest.headers as Record<string, string>) };
  if (payload !== undefined) {
    headers["content-type"] = "application/json";
    headers["content-length"] = Buffer.byteLength(payload);
  }
  return new Promise((resolve, reject) => {
    const req = (tls ? httpsRequest : httpRequest)(
      { ...rest, headers, ...(tls ? { ca: tls.ca } : {}) },
      (res) => {
        const chunks: Buffer[] = [];
        res.on("data", (c: Buffer) => chunks.push(c));
        res.on("end", () => {
          try {
            resolve({
              status: res.statusCode ?? 0,
              json: JSON.parse(Buffer.concat(chunks).toString("utf8")),
              headers: res.headers,
            });
          } catch (e) {
            reject(e);
          }
        });
      },
    );
    req.on("error", reject);
    req.end(payload);
  });
}

async function rejectsWith(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.equal(errorCodeOf(e), code, String(e));
    return true;
  });
}

describe("unix socket", () => {
  test("mode 0660, group set, requests act as the socket's admin", async () => {
    const dir = tmp();
    const socketPath = join(dir, "run", "virtqos", "api.sock");
    // Root may give the socket any group; anyone else only one of their own.
    const gid = process.getuid?.() === 0 ? 54_321 : (process.getgid?.() ?? 0);
    const groupFile = join(dir, "group");
    writeFileSync(groupFile, `root:x:0:\nvq-test:x:${gid}:\n`);
    const { app: a, service } = app(socketAuthenticator());
    assert.equal(await listenUnix(a, socketPath, { group: "vq-test", groupFile }), socketPath);
    const st = statSync(socketPath);
    assert.ok(lstatSync(socketPath).isSocket());
    assert.equal(st.mode & 0o777, 0o660, `mode ${(st.mode & 0o777).toString(8)}`);
    assert.equal(st.gid, gid);

    const health = await send({ socketPath, path: "/v1/health", method: "GET" });
    assert.equal(health.status, 200);
    const change = await send({
      socketPath,
      path: "/v1/domains/web-1/interfaces/vnet0",
      method: "PATCH",
      body: { inbound: { average: "10mbit" } },
    });
    assert.equal(change.status, 200, JSON.stringify(change.json));
    const who = service.calls.find((c) => c.method === "setInterface")?.args[3] as Principal;
    assert.deepEqual(who, { name: "socket", role: "admin", via: "socket" });
    const audit = await send({ socketPath, path: "/v1/audit", method: "GET" });
    assert.equal(audit.status, 200, "the socket's principal is admin");
  });

  test("a group the system lacks is skipped silently; the mode is still 0660", async () => {
    const dir = tmp();
    const socketPath = join(dir, "api.sock");
    const groupFile = join(dir, "group");
    writeFileSync(groupFile, "root:x:0:\n");
    const { app: a } = app(socketAuthenticator());
    await listenUnix(a, socketPath, { groupFile });
    assert.equal(statSync(socketPath).mode & 0o777, 0o660);
  });

  test("a stale socket (its agent killed) is replaced", async () => {
    const dir = tmp();
    const socketPath = join(dir, "api.sock");
    // A process that binds the socket and dies by SIGKILL leaves the file behind, as a crashed agent would.
    const child = spawn(process.execPath, [
      "-e",
      `require("net").createServer().listen(${JSON.stringify(socketPath)}, () => console.log("up"))`,
    ]);
    await new Promise<void>((resolve) => child.stdout.once("data", () => resolve()));
    child.kill("SIGKILL");
    await new Promise((resolve) => child.once("exit", resolve));
    assert.ok(lstatSync(socketPath).isSocket(), "the dead process left its socket");
    const { app: a } = app(socketAuthenticator());
    await listenUnix(a, socketPath, { groupFile: join(dir, "none") });
    assert.equal((await send({ socketPath, path: "/v1/health", method: "GET" })).status, 200);
  });

  test("a file that is not a socket, or a socket someone listens on, is left alone", async () => {
    const dir = tmp();
    const file = join(dir, "api.sock");
    writeFileSync(file, "precious");
    const { app: a } = app(socketAuthenticator());
    await rejectsWith(listenUnix(a, file), "INTERNAL");
    assert.equal(readFileSync(file, "utf8"), "precious");

    const live = join(dir, "live.sock");
    const { app: first } = app(socketAuthenticator());
    await listenUnix(first, live, { groupFile: join(dir, "none") });
    const { app: second } = app(socketAuthenticator());
    await rejectsWith(listenUnix(second, live, { groupFile: join(dir, "none") }), "INTERNAL");
    assert.equal((await send({ socketPath: live, path: "/v1/health", method: "GET" })).status, 200);
  });
});

describe("TCP", () => {
  test("127.0.0.1, port 0: tokens required, Bearer and X-Auth-Token, Nova's action", async () => {
    const { app: a } = app();
    const addr = await listenTcp(a, { host: "127.0.0.1", port: 0 });
    assert.equal(addr.tls, false);
    assert.ok(addr.port > 0);
    const base = { host: "127.0.0.1", port: addr.port };
    const none = await send({ ...base, path: "/v1/health", method: "GET" });
    assert.equal(none.status, 401);
    assert.equal(none.json.error.code, "AUTH_REQUIRED");
    assert.match(String(none.headers["www-authenticate"]), /^Bearer/);
    const ok = await send({
      ...base,
      path: "/v1/health",
      method: "GET",
      headers: { authorization: "Bearer tok-reader" },
    });
    assert.equal(ok.status, 200);
    const nova = await send({
      ...base,
      path: `/v2.1/p/servers/${FAKE_UUIDS.web1}/action`,
      method: "POST",
      headers: { "x-auth-token": "tok-operator" },
      body: { setInterface: { interface: 1, rate: 1250 } },
    });
    assert.equal(nova.status, 202, JSON.stringify(nova.json));
    assert.equal(nova.json.interfaceParameters["outbound.average"], 1250);
    // A dot segment reaches the router as sent over the wire (inject() would resolve it).
    const dots = await send({
      ...base,
      path: "/v1/domains/../health",
      method: "GET",
      headers: { authorization: "Bearer tok-reader" },
    });
    assert.equal(dots.status, 404);
    assert.equal(dots.json.error.code, "ROUTE_NOT_FOUND");
  });

  test("a non-loopback host without TLS is refused before binding", async () => {
    for (const host of ["0.0.0.0", "::", "192.0.2.1", "example.com"]) {
      const { app: a } = app();
      await rejectsWith(listenTcp(a, { host, port: 0 }), "TLS_REQUIRED");
      assert.equal(a.server.listening, false, host);
    }
    const { app: a } = app();
    await rejectsWith(
      listenTcp(a, { host: "127.0.0.1", port: 0, tlsCert: "/x/cert.pem", tlsKey: "/x/key.pem" }),
      "TLS_REQUIRED",
    );
    await rejectsWith(listenTcp(a, { host: "0.0.0.0", port: 0, tlsCert: "/x/cert.pem" }), "TLS_REQUIRED");
    await rejectsWith(listenTcp(a, { host: "127.0.0.1", port: 0, tls: true }), "TLS_REQUIRED");
    assert.equal(a.server.listening, false);
  });

  const openssl = spawnSync("openssl", ["version"]).status === 0;
  test(
    "HTTPS on 127.0.0.1 with a self-signed certificate",
    { skip: !openssl && "openssl is missing" },
    async () => {
      const dir = tmp();
      const cert = join(dir, "cert.pem");
      const key = join(dir, "key.pem");
      const r = spawnSync(
        "openssl",
        [
          "req",
          "-x509",
          "-newkey",
          "rsa:2048",
          "-nodes",
          "-keyout",
          key,
          "-out",
          cert,
          "-days",
          "1",
          "-subj",
          "/CN=127.0.0.1",
          "-addext",
          "subjectAltName=IP:127.0.0.1",
        ],
        { encoding: "utf8" },
      );
      assert.equal(r.status, 0, r.stderr);
      assert.ok(existsSync(cert) && existsSync(key));
      const { app: a } = app(fakeAuthenticator(), { https: await readTls(cert, key) });
      const addr = await listenTcp(a, { host: "127.0.0.1", port: 0, tlsCert: cert, tlsKey: key });
      assert.equal(addr.tls, true);
      const ca = readFileSync(cert);
      const ok = await send({
        host: "127.0.0.1",
        port: addr.port,
        path: "/v1/domains",
        method: "GET",
        headers: { authorization: "Bearer tok-reader" },
        tls: { ca },
      });
      assert.equal(ok.status, 200);
      assert.equal(ok.json.domains.length, 3);
      // Plain HTTP to the TLS port gets no answer from the API.
      await assert.rejects(send({ host: "127.0.0.1", port: addr.port, path: "/v1/health", method: "GET" }));
    },
  );
});
