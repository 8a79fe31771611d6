import { Type } from "@sinclair/typebox";
import { VirtqosError } from "../../core/errors.js";
import { inScope, isScoped, resolveDomain } from "./authz.js";
import { defineRoute, type Route } from "./route.js";
import {
  AuditQueryPart,
  AuditResponse,
  ClearQueryPart,
  DomainParamsPart,
  DomainsResponse,
  HealthSchema,
  InterfaceParamsPart,
  InterfaceResponse,
  InterfacesResponse,
  NoQueryPart,
  SetInterfacePart,
} from "./schemas.js";

// The agent's own REST routes. Each handler is the thin part: parsing, authentication and the error body
// are the pipeline's (server.ts), so a handler only decides what to ask the service and what to answer.

/** What the service may answer a live change with (the document lists them; Nova's action shares them). */
export const LIVE_CHANGE_ERRORS = [
  "DOMAIN_NOT_FOUND",
  "INTERFACE_NOT_FOUND",
  "DOMAIN_NOT_RUNNING",
  "NOT_SHAPEABLE",
  "GROUP_ADMISSION",
  "LOCK_TIMEOUT",
  "TC_BATCH_FAILED",
  "AUDIT_FAILED",
  "LIBVIRT_UNAVAILABLE",
] as const;

export function v1Routes(): Route[] {
  return [
    defineRoute({
      method: "GET",
      url: "/v1/health",
      operationId: "getHealth",
      summary: "The agent's health: libvirt connection, last reconcile, queue depth, uptime.",
      tag: "agent",
      action: "read",
      query: NoQueryPart,
      success: { status: 200, description: "The agent's health.", schema: HealthSchema },
      errors: [],
      shape: "v1",
      handle: ({ service }) => service.health(),
    }),
    defineRoute({
      method: "GET",
      url: "/metrics",
      operationId: "getMetrics",
      summary:
        "Prometheus metrics: limits, counters and in-force state per interface and direction; the agent's own.",
      description: "Prometheus text exposition format 0.0.4; docs/observability.md lists every metric.",
      tag: "agent",
      action: "read",
      query: NoQueryPart,
      success: { status: 200, description: "The metrics, as text.", schema: Type.String() },
      errors: ["ROUTE_NOT_FOUND"],
      shape: "v1",
      raw: true,
      handle: async ({ service }) => {
        if (!service.metrics) throw new VirtqosError("ROUTE_NOT_FOUND", "this agent serves no metrics");
        return service.metrics();
      },
    }),
    defineRoute({
      method: "GET",
      url: "/v1/domains",
      operationId: "listDomains",
      summary: "The domains libvirt knows, limited to the token's scope.",
      tag: "domains",
      action: "read",
      query: NoQueryPart,
      success: { status: 200, description: "The domains in scope.", schema: DomainsResponse },
      errors: ["LIBVIRT_UNAVAILABLE"],
      shape: "v1",
      handle: async ({ service, principal }) => {
        const domains = await service.listDomains();
        return { domains: domains.filter((d) => inScope(principal, d.name)) };
      },
    }),
    defineRoute({
      method: "GET",
      url: "/v1/domains/:domain/interfaces",
      operationId: "getInterfaces",
      summary: "A domain and its interfaces: configured, live and in-force limits per direction.",
      tag: "domains",
      action: "read",
      params: DomainParamsPart,
      query: NoQueryPart,
      domainParam: "domain",
      success: { status: 200, description: "The domain and its interfaces.", schema: InterfacesResponse },
      errors: ["DOMAIN_NOT_FOUND", "LIBVIRT_UNAVAILABLE"],
      shape: "v1",
      handle: async ({ service, principal, params }) => {
        const { summary } = await resolveDomain(service, principal, params.domain, true);
        const domain = summary!;
        return { domain, interfaces: await service.getInterfaces(domain.uuid) };
      },
    }),
    defineRoute({
      method: "PATCH",
      url: "/v1/domains/:domain/interfaces/:iface",
      operationId: "setInterface",
      summary: "Set an interface's live limits (one direction or both).",
      description:
        'Numbers are libvirt\'s units (average/peak/floor kB/s, burst KiB); strings carry a unit ("20mbit", "64KiB"). ' +
        'An average of 0 clears that direction\'s live limit. persist: "live" (default), "config" or "both".',
      tag: "interfaces",
      action: "write",
      params: InterfaceParamsPart,
      query: NoQueryPart,
      body: SetInterfacePart,
      domainParam: "domain",
      success: { status: 200, description: "The interface after the change.", schema: InterfaceResponse },
      errors: [...LIVE_CHANGE_ERRORS],
      shape: "v1",
      handle: async ({ service, principal, params, body }) => {
        const { target } = await resolveDomain(service, principal, params.domain, false);
        const change = { ...body, door: principal.via === "cli" ? ("cli" as const) : ("api" as const) };
        return { interface: await service.setInterface(target, params.iface, change, principal) };
      },
    }),
    defineRoute({
      method: "DELETE",
      url: "/v1/domains/:domain/interfaces/:iface",
      operationId: "clearInterface",
      summary: "Drop an interface's live limits: its configured limits apply again.",
      tag: "interfaces",
      action: "write",
      params: InterfaceParamsPart,
      query: ClearQueryPart,
      domainParam: "domain",
      success: { status: 200, description: "The interface after the change.", schema: InterfaceResponse },
      errors: [...LIVE_CHANGE_ERRORS],
      shape: "v1",
      handle: async ({ service, principal, params, query: persist }) => {
        const { target } = await resolveDomain(service, principal, params.domain, false);
        return { interface: await service.clearInterface(target, params.iface, persist, principal) };
      },
    }),
    defineRoute({
      method: "GET",
      url: "/v1/audit",
      operationId: "getAudit",
      summary: "The audit log: who changed which limits, when, and how it ended (admin).",
      description:
        "A token limited to some domains sees only their entries (so fewer than `limit` may come back).",
      tag: "agent",
      action: "admin",
      query: AuditQueryPart,
      success: { status: 200, description: "Matching entries.", schema: AuditResponse },
      errors: ["AUDIT_FAILED"],
      shape: "v1",
      handle: ({ service, principal, query }) => {
        const entries = service.audit(query);
        if (!isScoped(principal)) return { entries };
        return {
          entries: entries.filter((e) => e.domainName !== undefined && inScope(principal, e.domainName)),
        };
      },
    }),
  ];
}
