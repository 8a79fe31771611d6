import { createLogger } from "../../src/adapters/log.js";
import { LocalService, type ServiceDeps } from "../../src/agent/service.js";
import type { Policy } from "../../src/core/policy.js";
import { MemorySource } from "../../src/lab/memory-source.js";
import type { Harness } from "./netns.js";

// The agent's service on a namespace lab: the real engine and tc, domains from XML text (no libvirtd).

export function labService(
  h: Harness,
  stateDir: string,
  pol: Policy,
  extra: Partial<ServiceDeps> = {},
): { service: LocalService; source: MemorySource } {
  const source = new MemorySource();
  const service = new LocalService({
    source,
    runner: h.runner,
    runDir: h.runDir,
    stateDir,
    log: createLogger({ level: "info", target: "silent" }),
    policy: async () => pol,
    caps: h.caps,
    ...extra,
  });
  return { service, source };
}
