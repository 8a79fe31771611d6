import type { Command } from "commander";
import { agentError, agentRequest } from "../agent/client.js";
import { openLocalService } from "../agent/local.js";
import type { InterfaceView, LimitView, LiveChange, Persist, Principal } from "../agent/types.js";
import { findInterfaceView } from "../agent/views.js";
import { formatTable } from "../app/table.js";
import { apiSocketPath, libvirtUri } from "../config.js";
import { VirtqosError } from "../core/errors.js";
import { parseDomiftune } from "../core/live.js";
import { formatRate, formatSize } from "../core/units.js";
import { cliLogger, context, globals, out } from "./context.js";

// `virtqos set` and `virtqos get`: live changes in `virsh domiftune` syntax and units. Through the agent's
// unix socket when an agent runs (it owns the single-writer queue), directly on the host otherwise; the
// result is the same engine call either way.

interface SetOpts {
  clear?: boolean;
  inbound?: string;
  outbound?: string;
  live?: boolean;
  config?: boolean;
  current?: boolean;
  json?: boolean;
  direct?: boolean;
}

function persistOf(o: SetOpts, running: () => Promise<boolean>): Promise<Persist> | Persist {
  if (o.current && (o.live || o.config)) {
    throw new VirtqosError("USAGE", "--current cannot be combined with --live or --config (as in virsh)");
  }
  // Clearing without a flag means "back to the configuration", live and at the next start.
  if (o.clear && !o.live && !o.config && !o.current) return "both";
  if (o.live && o.config) return "both";
  if (o.live) return "live";
  if (o.config) return "config";
  // --current (the default): the running domain if it runs, else its persistent definition.
  return running().then((r) => (r ? "live" : "config"));
}

const limitText = (l: LimitView | null | undefined): string => {
  if (l === null) return "no limit (live)";
  if (!l) return "-";
  const peak = l.ceilBitsPerSec > l.rateBitsPerSec ? ` peak ${formatRate(l.ceilBitsPerSec)}` : "";
  const burst = l.burstBytes ? ` burst ${formatSize(l.burstBytes)}` : "";
  const floor = l.floorBitsPerSec ? ` floor ${formatRate(l.floorBitsPerSec)}` : "";
  return `${formatRate(l.rateBitsPerSec)}${peak}${burst}${floor}`;
};

export function interfacesTable(domain: string, views: InterfaceView[]): string {
  const rows = [
    ["DOMAIN", "IFACE", "DEV", "MAC", "DIRECTION", "IN FORCE", "SOURCE", "CONFIGURED", "LIVE", "MATCHES"],
  ];
  for (const v of views) {
    for (const d of ["inbound", "outbound"] as const) {
      const x = v[d];
      rows.push([
        domain,
        String(v.index),
        v.dev ?? "-",
        v.mac ?? "-",
        `${d} (${d === "inbound" ? "download" : "upload"})`,
        x.inForce ? limitText(x.inForce) : "unlimited",
        x.inForce?.source ?? "-",
        limitText(x.configured),
        x.live === undefined ? "-" : limitText(x.live),
        v.matches === undefined ? "-" : v.matches ? "yes" : "NO",
      ]);
    }
  }
  return formatTable(rows);
}

/** The agent's view of a domain's interfaces; undefined when no agent listens. */
const agentInterfaces = (domain: string) =>
  agentRequest(apiSocketPath(), "GET", `/v1/domains/${encodeURIComponent(domain)}/interfaces`);

/** The service on this host, without an agent: what `set`/`get --direct` use. */
function localService(ctx: ReturnType<typeof context>, audit: boolean) {
  return openLocalService({
    runner: ctx.runner,
    runDir: ctx.runDir,
    stateDir: ctx.stateDir,
    policyFile: ctx.policyFile,
    log: ctx.log,
    libvirtUri: libvirtUri(),
    audit,
  });
}

export function addLiveCommands(program: Command): void {
  program
    .command("set")
    .description(
      "change a running guest's limits in place, in `virsh domiftune` syntax: --inbound AVERAGE[,PEAK[,BURST[,FLOOR]]] (kB/s, KiB, or with units: 20mbit); an average of 0 lifts that direction",
    )
    .argument("<domain>", "domain name or UUID")
    .argument("<iface>", "target dev (vnet3), MAC, alias or 1-based index")
    .option("--inbound <spec>", "guest download: AVERAGE[,PEAK[,BURST[,FLOOR]]]")
    .option("--outbound <spec>", "guest upload: AVERAGE[,PEAK[,BURST]]")
    .option("--clear", "drop the interface's live limits: the configured ones apply again")
    .option("--live", "the running domain (kept in the live store until it stops)")
    .option("--config", "its persistent definition: <metadata> and the live store, applied at every start")
    .option("--current", "live if the domain runs, else config (the default)")
    .option("--direct", "act on the host directly even when an agent runs")
    .option("--json", "machine-readable output")
    .action(async (domain: string, iface: string, o: SetOpts) => {
      const g = globals(program, o.json);
      if (o.clear && (o.inbound !== undefined || o.outbound !== undefined)) {
        throw new VirtqosError(
          "USAGE",
          "--clear drops the live limits; give it without --inbound/--outbound",
        );
      }
      if (!o.clear && o.inbound === undefined && o.outbound === undefined) {
        throw new VirtqosError(
          "USAGE",
          "give --inbound, --outbound or both (an average of 0 lifts a direction), or --clear",
        );
      }
      const change: LiveChange = { persist: "live", door: "cli" };
      if (o.inbound !== undefined) change.inbound = parseDomiftune(o.inbound, "--inbound");
      if (o.outbound !== undefined) change.outbound = parseDomiftune(o.outbound, "--outbound");
      const path = `/v1/domains/${encodeURIComponent(domain)}/interfaces/${encodeURIComponent(iface)}`;
      const log = cliLogger(g);
      const ctx = context(g, log);
      const local = () => localService(ctx, true);
      let view: InterfaceView | undefined;
      if (!o.direct) {
        const probe = await agentInterfaces(domain);
        if (probe) {
          if (probe.status >= 400) throw agentError(probe);
          const state = (probe.body as { domain?: { state?: string } }).domain?.state;
          change.persist = await persistOf(o, async () => state === "running");
          const { door: _door, ...body } = change;
          const a = o.clear
            ? await agentRequest(apiSocketPath(), "DELETE", `${path}?persist=${change.persist}`)
            : await agentRequest(apiSocketPath(), "PATCH", path, body);
          if (!a) throw new VirtqosError("INTERNAL", "the agent went away during the request");
          if (a.status >= 400) throw agentError(a);
          view = (a.body as { interface: InterfaceView }).interface;
        }
      }
      if (!view) {
        const { service, close } = await local();
        try {
          change.persist = await persistOf(
            o,
            async () => (await service.findDomain(domain)).state === "running",
          );
          const who: Principal = { name: ctx.who.user, role: "admin", via: "cli" };
          view = o.clear
            ? await service.clearInterface(domain, iface, change.persist, who)
            : await service.setInterface(domain, iface, change, who);
        } finally {
          close();
        }
      }
      out(g, { interface: view }, interfacesTable(domain, [view]));
      await log.close();
    });

  program
    .command("get")
    .description(
      "what is in force on a guest's interfaces and where it comes from (live, policy, metadata, bandwidth)",
    )
    .argument("<domain>", "domain name or UUID")
    .argument("[iface]", "target dev, MAC, alias or 1-based index (default: all)")
    .option("--direct", "read the host directly even when an agent runs")
    .option("--json", "machine-readable output")
    .action(async (domain: string, iface: string | undefined, o: { json?: boolean; direct?: boolean }) => {
      const g = globals(program, o.json);
      const log = cliLogger(g);
      let views: InterfaceView[] | undefined;
      if (!o.direct) {
        const a = await agentInterfaces(domain);
        if (a) {
          if (a.status >= 400) throw agentError(a);
          views = (a.body as { interfaces: InterfaceView[] }).interfaces;
        }
      }
      if (!views) {
        const { service, close } = await localService(context(g, log), false);
        try {
          views = await service.getInterfaces(domain);
        } finally {
          close();
        }
      }
      if (iface !== undefined) {
        const v = findInterfaceView(views, iface);
        if (!v) throw new VirtqosError("INTERFACE_NOT_FOUND", `domain ${domain} has no interface "${iface}"`);
        views = [v];
      }
      out(g, { domain, interfaces: views }, interfacesTable(domain, views));
      await log.close();
    });
}
