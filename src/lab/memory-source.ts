import type { DomainSource, DomainSummaryRef } from "../agent/service.js";
import { VirtqosError } from "../core/errors.js";

// A DomainSource for the namespace lab and the benchmarks, where there is no libvirtd: domains as XML text, the way libvirt
// would return them, with virtqos's <metadata> element kept apart (live and persistent) as libvirt keeps it.
// Only the lab's domain list is fake; the service, the engine and the kernel under it are real.

interface Dom {
  ref: DomainSummaryRef;
  xml: string;
  metadataLive?: string;
  metadataConfig?: string;
}

export class MemorySource implements DomainSource {
  readonly doms = new Map<string, Dom>();
  /** Every setMetadata call, for assertions. */
  readonly metadataWrites: { uuid: string; xml: string | undefined; live: boolean; config: boolean }[] = [];

  add(name: string, uuid: string, xml: string, state = "running"): void {
    this.doms.set(uuid, { ref: { name, uuid, state }, xml });
  }

  private find(nameOrUuid: string): Dom {
    const d = this.doms.get(nameOrUuid) ?? [...this.doms.values()].find((x) => x.ref.name === nameOrUuid);
    if (!d) throw new VirtqosError("DOMAIN_NOT_FOUND", `no domain "${nameOrUuid}"`);
    return d;
  }

  async list(): Promise<DomainSummaryRef[]> {
    return [...this.doms.values()].map((d) => ({ ...d.ref }));
  }

  async lookup(nameOrUuid: string): Promise<DomainSummaryRef> {
    return { ...this.find(nameOrUuid).ref };
  }

  async dumpXml(nameOrUuid: string, opts: { inactive?: boolean } = {}): Promise<string> {
    const d = this.find(nameOrUuid);
    const m = opts.inactive || d.ref.state !== "running" ? d.metadataConfig : d.metadataLive;
    return m ? d.xml.replace("</uuid>", `</uuid>\n  <metadata>${m}</metadata>`) : d.xml;
  }

  async setMetadata(
    nameOrUuid: string,
    xml: string | undefined,
    opts: { live: boolean; config: boolean },
  ): Promise<void> {
    const d = this.find(nameOrUuid);
    this.metadataWrites.push({ uuid: d.ref.uuid, xml, ...opts });
    if (opts.live) d.metadataLive = xml;
    if (opts.config) d.metadataConfig = xml;
  }
}
