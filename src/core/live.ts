import { QOS_XMLNS } from "./domain-xml.js";
import { VirtqosError } from "./errors.js";
import type {
  DirectionLimit,
  DomainInfo,
  GuestInterface,
  LibvirtRate,
  LiveLimit,
  MetadataInterface,
} from "./model.js";
import {
  LIBVIRT_BURST_UNIT_BYTES,
  LIBVIRT_RATE_UNIT_BITS_PER_SEC,
  libvirtBurstToBytes,
  libvirtRateToBitsPerSec,
  parseRate,
  parseSize,
  UnitError,
} from "./units.js";

// Live changes, pure: what a request's numbers mean, which interface it names, and how limits look in
// libvirt's units and in virtqos's <metadata>. Numbers are libvirt's units (average, peak, floor in kB/s =
// 1000 bytes/s; burst in KiB), as `virsh domiftune` takes them; strings carry explicit units ("20mbit",
// "64KiB"). An average of 0 clears the direction, as domiftune does.

/** libvirt stores these as unsigned int: larger numbers would wrap in libvirt and are refused here. */
export const LIBVIRT_UINT_MAX = 4294967295;

export interface RateFields {
  average: number | string;
  peak?: number | string;
  burst?: number | string;
  floor?: number | string;
}

/** A request that fails validation: names the field (a JSON pointer such as /inbound/average) and the fix. */
export class RequestInvalidError extends VirtqosError {
  constructor(
    readonly field: string,
    message: string,
    readonly fix?: string,
  ) {
    super("REQUEST_INVALID", `${field}: ${message}${fix ? `; ${fix}` : ""}`);
  }
}

/** One field in bits/s (average, peak, floor) or bytes (burst), from libvirt units or a string with a unit. */
function fieldValue(value: number | string, kind: "rate" | "size", field: string): number {
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value) || value < 0 || value > LIBVIRT_UINT_MAX) {
      throw new RequestInvalidError(
        field,
        `${value} is not an integer from 0 to ${LIBVIRT_UINT_MAX}`,
        kind === "rate"
          ? 'give kB/s as libvirt does (1250 = 10 Mbit/s) or a string with a unit ("10mbit")'
          : 'give KiB as libvirt does, or a string with a unit ("64KiB")',
      );
    }
    return kind === "rate" ? libvirtRateToBitsPerSec(value) : libvirtBurstToBytes(value);
  }
  if (typeof value !== "string" || value.length > 32) {
    throw new RequestInvalidError(field, "must be a number (libvirt units) or a short string with a unit");
  }
  let n: number;
  try {
    n = kind === "rate" ? parseRate(value) : parseSize(value);
  } catch (e) {
    if (e instanceof UnitError) throw new RequestInvalidError(field, e.message, e.fix);
    throw e;
  }
  // The same ceiling as libvirt's numbers, in base units: beyond it the kernel's 32-bit fields overflow too.
  const max =
    kind === "rate" ? libvirtRateToBitsPerSec(LIBVIRT_UINT_MAX) : libvirtBurstToBytes(LIBVIRT_UINT_MAX);
  if (!Number.isFinite(n) || n > max) throw new RequestInvalidError(field, `${value} is too large`);
  return n;
}

/**
 * A direction of a live change as a limit, or `null` when its average is 0 (no limit in this direction).
 * `field` is the JSON pointer of the direction (`/inbound`), for errors.
 */
export function liveLimitFrom(r: RateFields, field: string): LiveLimit | null {
  if (r === null || typeof r !== "object")
    throw new RequestInvalidError(field, "must be an object with an average");
  if (r.average === undefined) throw new RequestInvalidError(`${field}/average`, "is required");
  const rate = fieldValue(r.average, "rate", `${field}/average`);
  if (rate === 0) return null;
  const peak = r.peak === undefined ? 0 : fieldValue(r.peak, "rate", `${field}/peak`);
  if (peak !== 0 && peak < rate) {
    throw new RequestInvalidError(
      `${field}/peak`,
      "is below the average",
      "give a peak at or above the average, or none",
    );
  }
  const burst = r.burst === undefined ? 0 : fieldValue(r.burst, "size", `${field}/burst`);
  const floor = r.floor === undefined ? 0 : fieldValue(r.floor, "rate", `${field}/floor`);
  if (floor > Math.max(rate, peak)) {
    throw new RequestInvalidError(
      `${field}/floor`,
      "is above the limit",
      "a floor is a guarantee within the limit",
    );
  }
  const limit: LiveLimit = { rateBitsPerSec: rate, ceilBitsPerSec: Math.max(rate, peak) };
  if (burst > 0) limit.burstBytes = burst;
  if (floor > 0) limit.floorBitsPerSec = floor;
  return limit;
}

/**
 * `virsh domiftune` syntax: AVERAGE[,PEAK[,BURST[,FLOOR]]] in libvirt units, each field also accepted with an
 * explicit unit ("20mbit,40mbit,64KiB"). Empty fields are absent ("1000,,64").
 */
export function parseDomiftune(text: string, field: string): RateFields {
  const parts = text.split(",");
  if (parts.length > 4 || text.length > 128) {
    throw new RequestInvalidError(field, `"${text}" has more than AVERAGE,PEAK,BURST,FLOOR`);
  }
  const value = (s: string | undefined): number | string | undefined => {
    if (s === undefined || s.trim() === "") return undefined;
    return /^\d+$/.test(s.trim()) ? Number(s.trim()) : s.trim();
  };
  const [average, peak, burst, floor] = parts.map(value);
  if (average === undefined)
    throw new RequestInvalidError(`${field}/average`, "is required (0 clears the direction)");
  const r: RateFields = { average };
  if (peak !== undefined) r.peak = peak;
  if (burst !== undefined) r.burst = burst;
  if (floor !== undefined) r.floor = floor;
  return r;
}

/**
 * The interface a request names: target dev, MAC (any case), alias, or 1-based index in the domain's
 * <interface> order (Nova's `interface`). Undefined when none matches.
 */
export function findInterface(domain: DomainInfo, ref: string): GuestInterface | undefined {
  const ifs = domain.interfaces;
  if (/^\d{1,4}$/.test(ref)) {
    const i = Number(ref);
    return i >= 1 ? ifs[i - 1] : undefined;
  }
  const mac = ref.toLowerCase();
  return (
    ifs.find((f) => f.targetDev === ref) ??
    ifs.find((f) => f.mac !== undefined && f.mac.toLowerCase() === mac) ??
    ifs.find((f) => f.alias === ref)
  );
}

/** A limit in libvirt's units (kB/s, KiB), rounded as libvirt reports them; 0 for no limit. */
export function toLibvirtRate(
  l:
    | Pick<DirectionLimit, "rateBitsPerSec" | "ceilBitsPerSec" | "burstBytes" | "floorBitsPerSec">
    | undefined
    | null,
): Required<LibvirtRate> {
  if (!l) return { average: 0, peak: 0, burst: 0, floor: 0 };
  const kBps = (bits: number) => Math.round(bits / LIBVIRT_RATE_UNIT_BITS_PER_SEC);
  return {
    average: kBps(l.rateBitsPerSec),
    peak: l.ceilBitsPerSec > l.rateBitsPerSec ? kBps(l.ceilBitsPerSec) : 0,
    burst: l.burstBytes ? Math.round(l.burstBytes / LIBVIRT_BURST_UNIT_BYTES) : 0,
    floor: l.floorBitsPerSec ? kBps(l.floorBitsPerSec) : 0,
  };
}

const escapeAttr = (s: string) =>
  s.replace(/&/g, "&amp;").replace(/"/g, "&quot;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/**
 * virtqos's <metadata> element as `virsh metadata --set` takes it (parseDomainXml reads it back). Rates in
 * libvirt's units; a direction of 0 average is left out (libvirt's own <bandwidth> has no "no limit" either).
 */
export function renderQosMetadata(interfaces: MetadataInterface[], group?: string): string {
  const lines = [`<qos xmlns="${QOS_XMLNS}"${group ? ` group="${escapeAttr(group)}"` : ""}>`];
  for (const i of interfaces) {
    const inner: string[] = [];
    for (const d of ["inbound", "outbound"] as const) {
      const r = i[d];
      if (!r?.average) continue;
      const attrs = (["average", "peak", "burst", "floor"] as const)
        .filter((k) => r[k])
        .map((k) => `${k}="${r[k]}"`)
        .join(" ");
      inner.push(`<${d} ${attrs}/>`);
    }
    const g = i.group ? ` group="${escapeAttr(i.group)}"` : "";
    lines.push(`  <interface mac="${escapeAttr(i.mac)}"${g}>${inner.join("")}</interface>`);
  }
  lines.push("</qos>");
  return lines.join("\n");
}
