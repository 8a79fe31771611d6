import { LIBVIRT_BURST_UNIT_BYTES, LIBVIRT_RATE_UNIT_BITS_PER_SEC } from "../../core/units.js";
import type { DirectionView, InterfaceView, LiveChange, RateInput } from "../types.js";
import { resolveDomain } from "./authz.js";
import { defineRoute, type Route } from "./route.js";
import {
  NoQueryPart,
  NovaAcceptedResponse,
  NovaActionPart,
  NovaParamsPart,
  NovaServerParamsPart,
  type Part,
} from "./schemas.js";
import { LIVE_CHANGE_ERRORS } from "./v1.js";

// The server action OpenStack's seed sends (`{"setInterface": {"interface": n, "rate": kB/s}}`), answered as
// Nova would: 202 with the interface's parameters as libvirt reports them, faults in Nova's shape.

/** The seed's change: one rate for average, peak and burst of both directions, kept across a hard reboot. */
export function novaChange(rateKiloBytesPerSec: number): LiveChange {
  const direction = (): RateInput => ({
    average: rateKiloBytesPerSec,
    peak: rateKiloBytesPerSec,
    burst: rateKiloBytesPerSec,
  });
  // "both": the seed's TODO asks for limits that survive a hard reboot, which only the config gives.
  return { inbound: direction(), outbound: direction(), persist: "both", door: "nova" };
}

const kiloBytesPerSec = (bitsPerSec: number) => Math.round(bitsPerSec / LIBVIRT_RATE_UNIT_BITS_PER_SEC);
const kibibytes = (bytes: number | undefined) =>
  bytes === undefined ? 0 : Math.round(bytes / LIBVIRT_BURST_UNIT_BYTES);

function libvirtDirection(d: DirectionView): { average: number; peak: number; burst: number } {
  const l = d.inForce;
  // libvirt reports an unlimited direction as zeros.
  if (l === undefined) return { average: 0, peak: 0, burst: 0 };
  return {
    average: kiloBytesPerSec(l.rateBitsPerSec),
    peak: kiloBytesPerSec(l.ceilBitsPerSec),
    burst: kibibytes(l.burstBytes),
  };
}

/** The in-force limits as `virsh domiftune` names them, in libvirt's units (kB/s, KiB). */
export function interfaceParameters(view: InterfaceView): Record<string, number> {
  const inbound = libvirtDirection(view.inbound);
  const outbound = libvirtDirection(view.outbound);
  const out: Record<string, number> = {
    "inbound.average": inbound.average,
    "inbound.peak": inbound.peak,
    "inbound.burst": inbound.burst,
  };
  const floor = view.inbound.inForce?.floorBitsPerSec;
  if (floor !== undefined) out["inbound.floor"] = kiloBytesPerSec(floor);
  out["outbound.average"] = outbound.average;
  out["outbound.peak"] = outbound.peak;
  out["outbound.burst"] = outbound.burst;
  return out;
}

function novaRoute(url: string, operationId: string, params: Part<{ server_id: string }>): Route {
  return defineRoute({
    method: "POST",
    url,
    operationId,
    summary: "Nova-compatible server action: set both directions of an interface to one rate.",
    description:
      "`rate` (kB/s) becomes average and peak of inbound and outbound, and their burst (KiB); persist both " +
      "(live and config). Answers 202 with the limits now in force in libvirt's units. Token: " +
      "`X-Auth-Token` or `Authorization: Bearer`.",
    tag: "nova",
    action: "write",
    params,
    query: NoQueryPart,
    body: NovaActionPart,
    domainParam: "server_id",
    success: {
      status: 202,
      description: "Applied; the interface's parameters now in force.",
      schema: NovaAcceptedResponse,
    },
    errors: [...LIVE_CHANGE_ERRORS],
    shape: "nova",
    handle: async ({ service, principal, params, body }) => {
      // libvirt prints UUIDs in lower case; one form keeps scope checks and the audit log consistent.
      const { target } = await resolveDomain(service, principal, params.server_id.toLowerCase(), false);
      const { interface: index, rate } = body.setInterface;
      const view = await service.setInterface(target, String(index), novaChange(rate), principal);
      return { interfaceParameters: interfaceParameters(view) };
    },
  });
}

export function novaRoutes(): Route[] {
  return [
    novaRoute("/v2.1/:project_id/servers/:server_id/action", "novaServerAction", NovaParamsPart),
    novaRoute("/v2.1/servers/:server_id/action", "novaServerActionNoProject", NovaServerParamsPart),
  ];
}
