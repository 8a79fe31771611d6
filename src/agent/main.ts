import type { Runner } from "../adapters/exec.js";
import { type EventWatch, type LibvirtEvent, Virsh, watchEvents } from "../adapters/libvirt.js";
import { dropLiveSlots } from "../adapters/live-store.js";
import type { Logger } from "../adapters/log.js";
import { loadPolicyCached } from "../adapters/policy-file.js";
import { cachedCapabilities } from "../adapters/probe.js";
import { collectStatus, readContested } from "../app/status.js";
import { QOS_XMLNS } from "../core/domain-xml.js";
import { VirtqosError } from "../core/errors.js";
import { TokenStore } from "./auth.js";
import { KernelView } from "./kernel-view.js";
import { openLocalService } from "./local.js";
import { Repairer, startDriftWatch } from "./repair.js";
import type { LocalService } from "./service.js";
import type { Authenticator, Health } from "./types.js";

// `virtqos agent`: the long-running door. It serves the REST API and the Nova action (unix socket, and TCP
// with tokens when asked), follows libvirt's events so that a guest started without the hook, or a
// `virsh metadata --live` edit by anyone, is applied within a second, and runs every change through one
// queue in front of the engine. It shares the engine's lock with the hook; the hook never waits for it.

export interface AgentOptions {
  runner: Runner;
  runDir: string;
  stateDir: string;
  policyFile: string;
  tokensFile: string;
  socketPath: string;
  /** host:port for the TCP listener (tokens required); undefined = unix socket only. */
  listen?: string;
  tlsCert?: string;
  tlsKey?: string;
  libvirtUri: string;
  log: Logger;
  /**
   * The network namespace the drift watch follows (the namespace `runner` acts in, for tests); the host's
   * when undefined.
   */
  netns?: string;
  /** The drift repair's full check of every domain; default 30 s, 0: none (events only). */
  checkIntervalMs?: number;
  /** How long a tap must stay gone before its records and IFBs are pruned; default 5 min. */
  pruneGraceMs?: number;
  /** The OVSDB the drift watch follows: default the local socket if OVS is installed; false: none. */
  ovsdb?: string | false;
}

export interface RunningAgent {
  service: LocalService;
  /** The drift repairer (contested objects, repair reports). */
  repairer: Repairer;
  /** Where the TCP listener listens (port 0 picks one), if any. */
  tcpAddress?: { host: string; port: number };
  close(): Promise<void>;
}

/** Lifecycle events after which a domain's shaping must be checked again. */
const REAPPLY_ON = /^(Started|Resumed|Defined|Stopped|Shutdown|Crashed)\b/;

export async function startAgent(o: AgentOptions): Promise<RunningAgent> {
  const { log } = o;
  const libvirt: Health["libvirt"] = { connected: false, uri: o.libvirtUri };
  // Loaded here: prom-client is for the agent only, not for every CLI command.
  const { Metrics } = await import("./metrics.js");
  let health: () => Health = () => ({ libvirt, queueDepth: 0, uptimeSeconds: 0 });
  const metrics = new Metrics({
    rows: async () =>
      collectStatus(
        o.runner,
        o.runDir,
        await cachedCapabilities(o.runner, o.runDir),
        await loadPolicyCached(o.policyFile, o.runDir),
      ),
    health: () => health(),
    log,
  });
  // Live changes and drift checks read one domain's devices through it (kernel-view.ts); the drift watch
  // below keeps its qdisc cache honest.
  const view = new KernelView({ runner: o.runner, netns: o.netns });
  const { service, close: closeService } = await openLocalService({
    runner: o.runner,
    runDir: o.runDir,
    stateDir: o.stateDir,
    policyFile: o.policyFile,
    log,
    libvirtUri: o.libvirtUri,
    audit: true,
    libvirtState: () => ({ ...libvirt }),
    metrics,
    kernelView: view,
    // The drift repair's contested objects, as the repairer keeps them in <runDir>/contested.json.
    contested: () => readContested(o.runDir),
  });
  health = () => service.health();
  const { buildApi } = await import("./api/server.js");
  const { listenTcp, listenUnix, socketAuthenticator } = await import("./api/listen.js");
  const closers: (() => Promise<void> | void)[] = [closeService, () => view.close()];

  const unixApp = buildApi({ service, auth: socketAuthenticator(), log });
  await listenUnix(unixApp, o.socketPath, { group: "virtqos" });
  closers.unshift(() => unixApp.close());
  let tcpAddress: RunningAgent["tcpAddress"];
  if (o.listen) {
    const { host, port } = parseListen(o.listen);
    const store = new TokenStore(o.tokensFile);
    // A tokens file that cannot be read or is invalid fails closed (401 for everyone) and says why in the log:
    // a broken file must not keep a revoked token working, nor answer clients with its parse errors.
    const tokens: Authenticator = {
      authenticate: (headers) => {
        try {
          return store.authenticate(headers);
        } catch (e) {
          log.error(
            `tokens file ${o.tokensFile}: ${(e as Error).message}; refusing every token until it is fixed`,
          );
          return undefined;
        }
      },
    };
    const { readFileSync } = await import("node:fs");
    const https =
      o.tlsCert && o.tlsKey ? { cert: readFileSync(o.tlsCert), key: readFileSync(o.tlsKey) } : undefined;
    const tcpApp = buildApi({ service, auth: tokens, log, https });
    tcpAddress = await listenTcp(tcpApp, { host, port, tls: https !== undefined });
    closers.unshift(() => tcpApp.close());
  }

  const onEvent = (e: LibvirtEvent) => {
    const metadata = e.kind === "metadata-change" && e.detail.includes(QOS_XMLNS);
    const lifecycle = e.kind === "lifecycle" && REAPPLY_ON.test(e.detail);
    if (!metadata && !lifecycle) return;
    log.debug(`libvirt event: ${e.kind} ${e.domain}: ${e.detail}`);
    if (e.kind === "lifecycle" && /^(Stopped|Shutdown|Crashed)/.test(e.detail)) {
      // The run ended: its live-only limits end with it (the hook drops them too, at the next start).
      void service
        .findDomain(e.domain)
        .then((d) => dropLiveSlots(o.stateDir, d.uuid))
        .catch(() => {});
    }
    service.reapply(e.domain, e.kind === "metadata-change" ? "metadata" : "agent").catch((err: Error) => {
      log.error(`re-applying ${e.domain} after ${e.kind} ${e.detail}: ${err.message}`);
    });
  };
  const watch: EventWatch = watchEvents({
    uri: o.libvirtUri,
    onEvent,
    onState: (connected, error) => {
      libvirt.connected = connected;
      libvirt.since = new Date().toISOString();
      if (error) libvirt.error = error;
      else delete libvirt.error;
      if (connected) {
        log.info(`libvirt ${o.libvirtUri}: connected; checking every running guest`);
        void reapplyRunning(service, new Virsh({ uri: o.libvirtUri }), log);
      } else
        log.warning(`libvirt ${o.libvirtUri}: connection lost${error ? ` (${error})` : ""}; reconnecting`);
    },
  });
  closers.unshift(() => watch.close());

  // Drift repair: what removes or changes virtqos's kernel state is put back through the same queue.
  const repairer = new Repairer({
    service,
    runner: o.runner,
    runDir: o.runDir,
    stateDir: o.stateDir,
    policy: () => loadPolicyCached(o.policyFile, o.runDir),
    log,
    metrics,
    pruneGraceMs: o.pruneGraceMs,
    observer: view,
  });
  try {
    const drift = startDriftWatch({
      repairer,
      log,
      netns: o.netns,
      ovsdb: o.ovsdb,
      checkIntervalMs: o.checkIntervalMs,
      kernelListener: view,
    });
    // Until both monitors listen, a change could go unseen: nothing is cached before.
    drift.kernel.ready.then(() => view.enableCache()).catch(() => {});
    closers.unshift(() => drift.close());
  } catch (e) {
    // The API and libvirt's events are worth running without drift repair.
    log.error(`drift repair not started: ${(e as Error).message}`);
  }

  return {
    service,
    repairer,
    tcpAddress,
    async close() {
      for (const c of closers) {
        try {
          await c();
        } catch (e) {
          log.warning(`agent shutdown: ${(e as Error).message}`);
        }
      }
      await service.queue.idle();
    },
  };
}

/**
 * Every running guest, through the queue: at start and after each reconnect, events may have been missed (a
 * guest started while the agent or libvirtd was down, a metadata edit in between).
 */
async function reapplyRunning(service: LocalService, virsh: Virsh, log: Logger): Promise<void> {
  try {
    const running = (await virsh.list()).filter((d) => d.state === "running");
    await Promise.all(
      running.map((d) =>
        service.reapply(d.uuid).catch((e: Error) => log.error(`re-applying ${d.name}: ${e.message}`)),
      ),
    );
  } catch (e) {
    log.warning(`listing guests: ${(e as Error).message}`);
  }
}

/** "127.0.0.1:8474", "[::1]:8474", ":8474" (loopback). */
export function parseListen(text: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : Number.NaN;
  if (!m || port > 65535) {
    throw new VirtqosError("USAGE", `--listen "${text}" is not HOST:PORT (e.g. 127.0.0.1:8474)`);
  }
  return { host: m[1] ?? (m[2] || "127.0.0.1"), port };
}
