import type { Runner } from "../adapters/exec.js";
import { Virsh } from "../adapters/libvirt.js";
import type { Logger } from "../adapters/log.js";
import { loadPolicyCached } from "../adapters/policy-file.js";
import { auditDbPath } from "../config.js";
import { type DomainSource, LocalService, type MetricsSink, type ServiceDeps } from "./service.js";
import type { Health } from "./types.js";

// The service on this host, wired to libvirt (virsh), the policy file and the audit log: what the agent runs
// and what `virtqos set/get` use when no agent runs.

export interface LocalOptions {
  runner: Runner;
  runDir: string;
  stateDir: string;
  policyFile: string;
  log: Logger;
  libvirtUri?: string;
  /** Another DomainSource (the namespace lab's); default: virsh on libvirtUri. */
  source?: DomainSource;
  /** Open the audit log (writes need it; `get` does not). */
  audit?: boolean;
  libvirtState?: () => Health["libvirt"];
  metrics?: MetricsSink;
  kernelView?: ServiceDeps["kernelView"];
  contested?: ServiceDeps["contested"];
}

export async function openLocalService(o: LocalOptions): Promise<{ service: LocalService; close(): void }> {
  const virsh = o.source ? undefined : new Virsh({ uri: o.libvirtUri });
  const source: DomainSource = o.source ?? (virsh as Virsh);
  let audit: ServiceDeps["audit"];
  let close = () => {};
  if (o.audit) {
    // Loaded here, not at the top: the native SQLite addon is only for the commands that write or read it.
    const { AuditStore } = await import("../adapters/audit.js");
    const store = AuditStore.open(auditDbPath(o.stateDir));
    audit = store;
    close = () => store.close();
  }
  const service = new LocalService({
    source,
    runner: o.runner,
    runDir: o.runDir,
    stateDir: o.stateDir,
    log: o.log,
    policy: () => loadPolicyCached(o.policyFile, o.runDir),
    audit,
    libvirtUri: virsh?.uri ?? o.libvirtUri,
    libvirtState: o.libvirtState,
    metrics: o.metrics,
    kernelView: o.kernelView,
    contested: o.contested,
  });
  return { service, close };
}
