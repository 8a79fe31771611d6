import { XMLParser, XMLValidator } from "fast-xml-parser";
import { VirtqosError } from "./errors.js";
import type { DomainInfo, GuestInterface, LibvirtRate, MetadataInterface } from "./model.js";
import { LIBVIRT_MAX_VALUE } from "./units.js";

/** The namespace of virtqos's `<metadata>` element. `virsh metadata --uri` must use exactly this. */
export const QOS_XMLNS = "https://virtqos.dev/xmlns/qos/1";

export class DomainXmlError extends VirtqosError {
  constructor(message: string) {
    super("DOMAIN_XML_INVALID", message);
  }
}

type Node = Record<string, unknown>;

const parser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: "@",
  parseAttributeValue: false,
  parseTagValue: false,
  allowBooleanAttributes: true,
  isArray: (name) => !name.startsWith("@"),
});

/** Parse the domain XML libvirt hands to the qemu hook (or `virsh dumpxml`). Throws DomainXmlError. */
export function parseDomainXml(xml: string): DomainInfo {
  const valid = XMLValidator.validate(xml);
  if (valid !== true) {
    throw new DomainXmlError(`domain XML is malformed at line ${valid.err.line}: ${valid.err.msg}`);
  }
  const doc = parser.parse(xml) as Node;
  const domain = first(doc.domain);
  if (!domain) throw new DomainXmlError("domain XML has no <domain> root element");
  const name = text(domain.name);
  const uuid = text(domain.uuid)?.toLowerCase();
  if (!name) throw new DomainXmlError("domain XML has no <name>");
  if (!uuid || !/^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/.test(uuid)) {
    throw new DomainXmlError(`domain ${name}: <uuid> is missing or not a UUID`);
  }
  const warnings: string[] = [];
  const devices = first(domain.devices);
  const interfaces: GuestInterface[] = list(devices?.interface).map((el, index) =>
    parseInterface(el, index, name, warnings),
  );
  const { metadata, metadataGroup } = parseMetadata(first(domain.metadata), name, warnings);
  return { name, uuid, interfaces, metadata, metadataGroup, warnings };
}

function parseInterface(el: Node, index: number, domain: string, warnings: string[]): GuestInterface {
  const type = attr(el, "type") ?? "unknown";
  const source = first(el.source);
  const iface: GuestInterface = {
    index,
    type,
    mac: normaliseMac(attr(first(el.mac), "address")),
    targetDev: attr(first(el.target), "dev"),
    alias: attr(first(el.alias), "name"),
    sourceBridge: attr(source, "bridge"),
    sourceNetwork: attr(source, "network"),
    sourceDev: attr(source, "dev"),
    virtualportType: attr(first(el.virtualport), "type"),
  };
  const bw = first(el.bandwidth);
  if (bw) {
    const where = `domain ${domain} interface ${iface.mac ?? `#${index}`} <bandwidth>`;
    iface.bandwidth = {
      inbound: rateAttrs(first(bw.inbound), `${where}<inbound>`, warnings),
      outbound: rateAttrs(first(bw.outbound), `${where}<outbound>`, warnings),
    };
  }
  return iface;
}

/**
 * libvirt keeps each application's metadata as one child element in its own namespace, with the prefix the
 * writer chose. Match on the namespace URI, never on the prefix or the local name alone: another tool's
 * `<qos>` in another namespace is not ours.
 */
function parseMetadata(
  metadata: Node | undefined,
  domain: string,
  warnings: string[],
): { metadata: MetadataInterface[]; metadataGroup?: string } {
  const result: MetadataInterface[] = [];
  let metadataGroup: string | undefined;
  if (!metadata) return { metadata: result };
  for (const [tag, value] of Object.entries(metadata)) {
    if (tag.startsWith("@") || tag === "#text") continue;
    const [prefix, local] = tag.includes(":") ? tag.split(":", 2) : ["", tag];
    for (const el of list(value)) {
      const ns = attr(el, prefix ? `xmlns:${prefix}` : "xmlns");
      if (ns !== QOS_XMLNS) {
        if (local === "qos") {
          warnings.push(
            `domain ${domain}: <metadata> has a <${tag}> in namespace "${ns ?? "(none)"}", not virtqos's "${QOS_XMLNS}"; ignored`,
          );
        }
        continue;
      }
      if (local !== "qos") {
        warnings.push(
          `domain ${domain}: <metadata> element <${tag}> in the virtqos namespace is not <qos>; ignored`,
        );
        continue;
      }
      const p = prefix ? `${prefix}:` : "";
      metadataGroup = attr(el, "group") ?? metadataGroup;
      for (const ifEl of list(el[`${p}interface`])) {
        const mac = normaliseMac(attr(ifEl, "mac"));
        const where = `domain ${domain} metadata <interface mac="${attr(ifEl, "mac") ?? ""}">`;
        if (!mac) {
          warnings.push(`${where}: the mac attribute is missing or not a MAC address; entry ignored`);
          continue;
        }
        result.push({
          mac,
          inbound: rateAttrs(first(ifEl[`${p}inbound`]), `${where}<inbound>`, warnings),
          outbound: rateAttrs(first(ifEl[`${p}outbound`]), `${where}<outbound>`, warnings),
          group: attr(ifEl, "group"),
        });
      }
    }
  }
  return { metadata: result, metadataGroup };
}

const RATE_ATTRS = ["average", "peak", "burst", "floor"] as const;

/** libvirt attributes are unsigned integers (kB/s, KiB). Anything else is reported and the attribute dropped. */
function rateAttrs(el: Node | undefined, where: string, warnings: string[]): LibvirtRate | undefined {
  if (!el) return undefined;
  const rate: LibvirtRate = {};
  for (const key of RATE_ATTRS) {
    const raw = attr(el, key);
    if (raw === undefined) continue;
    if (!/^\d+$/.test(raw.trim())) {
      warnings.push(
        `${where}: ${key}="${raw}" is not a whole number (libvirt units: kB/s for rates, KiB for burst); ignored`,
      );
      continue;
    }
    const value = Number(raw.trim());
    if (value > LIBVIRT_MAX_VALUE) {
      warnings.push(
        `${where}: ${key}="${raw}" is above libvirt's maximum ${LIBVIRT_MAX_VALUE} (${key === "burst" ? "KiB" : "kB/s"}); ignored`,
      );
      continue;
    }
    rate[key] = value;
  }
  return Object.keys(rate).length ? rate : undefined;
}

export function normaliseMac(mac: string | undefined): string | undefined {
  if (!mac) return undefined;
  const m = mac.trim().toLowerCase();
  return /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/.test(m) ? m : undefined;
}

function first(v: unknown): Node | undefined {
  if (Array.isArray(v)) return v[0] as Node | undefined;
  return v && typeof v === "object" ? (v as Node) : undefined;
}

function list(v: unknown): Node[] {
  if (Array.isArray(v)) return v.filter((x) => x && typeof x === "object") as Node[];
  return v && typeof v === "object" ? [v as Node] : [];
}

function attr(el: Node | undefined, name: string): string | undefined {
  const v = el?.[`@${name}`];
  return typeof v === "string" ? v : undefined;
}

function text(v: unknown): string | undefined {
  const el = Array.isArray(v) ? v[0] : v;
  if (typeof el === "string") return el.trim();
  if (el && typeof el === "object") {
    const t = (el as Node)["#text"];
    if (typeof t === "string") return t.trim();
  }
  return undefined;
}
