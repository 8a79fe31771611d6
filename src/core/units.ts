// Units are where bandwidth tools go wrong most often (bits vs bytes, 1000 vs 1024). Every value inside
// virtqos is a plain number whose unit is in its name: ...BitsPerSec, ...BytesPerSec, ...Bytes.
// Text with units only exists at the edges: the policy file, libvirt XML and human output.

/** libvirt `average`, `peak` and `floor` are kilobytes per second, 1 kB = 1000 bytes (tc `kbps`). */
export const LIBVIRT_RATE_UNIT_BITS_PER_SEC = 8000;
/** libvirt `burst` is in kibibytes, 1 KiB = 1024 bytes. */
export const LIBVIRT_BURST_UNIT_BYTES = 1024;
/** libvirt keeps `average`, `peak`, `floor` and `burst` as unsigned 32-bit numbers and refuses larger ones. */
export const LIBVIRT_MAX_VALUE = 4_294_967_295;
/**
 * The rates virtqos shapes: from libvirt's smallest (1 kB/s) to its largest (4294967295 kB/s, ~34.36 Tbit/s).
 * Below 1 kB/s a single full-size frame takes 1.5 s and a token bucket cannot hold one GSO packet within
 * tc's limits; above the top no libvirt host could express the limit anyway.
 */
export const MIN_RATE_BITS_PER_SEC = LIBVIRT_RATE_UNIT_BITS_PER_SEC;
export const MAX_RATE_BITS_PER_SEC = LIBVIRT_MAX_VALUE * LIBVIRT_RATE_UNIT_BITS_PER_SEC;
/** tc parses every size (burst, cburst, limit) into an unsigned 32-bit number of bytes. */
export const TC_SIZE_MAX_BYTES = 4_294_967_295;

export class UnitError extends Error {
  constructor(
    message: string,
    readonly fix: string,
  ) {
    super(message);
  }
}

const RATE_UNITS: Record<string, number> = {
  bit: 1,
  kbit: 1e3,
  mbit: 1e6,
  gbit: 1e9,
  tbit: 1e12,
  kibit: 1024,
  mibit: 1024 ** 2,
  gibit: 1024 ** 3,
};

// Byte rates are case-sensitive on the "B": a lower-case "b" means bits everywhere else, so "mb/s" is refused.
const BYTE_RATE_UNITS: Record<string, number> = {
  "B/s": 8,
  "kB/s": 8e3,
  "KB/s": 8e3,
  "MB/s": 8e6,
  "GB/s": 8e9,
  "KiB/s": 8 * 1024,
  "MiB/s": 8 * 1024 ** 2,
  "GiB/s": 8 * 1024 ** 3,
};

const SIZE_UNITS: Record<string, number> = {
  B: 1,
  kB: 1e3,
  KB: 1e3,
  MB: 1e6,
  GB: 1e9,
  KiB: 1024,
  MiB: 1024 ** 2,
  GiB: 1024 ** 3,
};

const NUMBER_AND_UNIT = /^\s*(\d+(?:\.\d+)?)\s*([A-Za-z/]*)\s*$/;

/** Parse a rate such as `30mbit`, `2.5Gbit/s`, `2MB/s`, `512KiB/s` into bits per second. */
export function parseRate(text: string | number): number {
  const m = NUMBER_AND_UNIT.exec(String(text));
  if (!m) {
    throw new UnitError(`"${text}" is not a rate`, 'write a number and a unit, e.g. "30mbit" or "2MB/s"');
  }
  const value = Number(m[1]);
  const unit = m[2];
  if (unit === "") {
    throw new UnitError(
      `"${text}" has no unit`,
      `write "${m[1]}mbit" for megabits per second or "${m[1]}MB/s" for megabytes per second`,
    );
  }
  let factor: number | undefined = BYTE_RATE_UNITS[unit];
  if (factor === undefined) {
    const lower = unit.toLowerCase();
    if (lower.includes("bit")) factor = RATE_UNITS[lower.replace(/\/s$/, "")];
    const ambiguous = /^([kmgt]?i?)(bps|b\/s)$/.exec(lower);
    if (factor === undefined && ambiguous) {
      // "kbps" means kilobytes/s to tc but kilobits/s to most people; never guess.
      const prefix = ambiguous[1];
      const bytePrefix = prefix.charAt(0).toUpperCase() + prefix.slice(1);
      throw new UnitError(
        `"${text}" is ambiguous (bits or bytes per second?)`,
        `write "${m[1]}${prefix}bit" for bits per second or "${m[1]}${bytePrefix}B/s" for bytes per second`,
      );
    }
  }
  if (factor === undefined) {
    throw new UnitError(
      `"${text}" has an unknown rate unit "${unit}"`,
      "use one of bit, kbit, mbit, gbit (bits per second) or B/s, kB/s, MB/s, GB/s, KiB/s, MiB/s (bytes per second)",
    );
  }
  return Math.round(value * factor);
}

/** Parse a size such as `64KiB`, `1.5MB`, `1514B` into bytes. */
export function parseSize(text: string | number): number {
  const m = NUMBER_AND_UNIT.exec(String(text));
  if (!m) throw new UnitError(`"${text}" is not a size`, 'write a number and a unit, e.g. "64KiB"');
  const unit = m[2];
  if (unit === "") {
    throw new UnitError(`"${text}" has no unit`, `write "${m[1]}KiB" (kibibytes) or "${m[1]}B" (bytes)`);
  }
  const factor = SIZE_UNITS[unit];
  if (factor === undefined) {
    throw new UnitError(
      `"${text}" has an unknown size unit "${unit}"`,
      "use one of B, kB, MB, GB (powers of 1000) or KiB, MiB, GiB (powers of 1024)",
    );
  }
  return Math.round(Number(m[1]) * factor);
}

/** Human form of a rate in bits per second: "30 Mbit/s", "2.5 Gbit/s", "800 kbit/s". */
export function formatRate(bitsPerSec: number): string {
  const steps: [number, string][] = [
    [1e12, "Tbit/s"],
    [1e9, "Gbit/s"],
    [1e6, "Mbit/s"],
    [1e3, "kbit/s"],
  ];
  for (const [factor, name] of steps) {
    if (bitsPerSec >= factor) return `${trim(bitsPerSec / factor)} ${name}`;
  }
  return `${trim(bitsPerSec)} bit/s`;
}

/** Human form of a size in bytes, IEC: "64 KiB", "1.5 MiB", "1514 B". */
export function formatSize(bytes: number): string {
  if (bytes >= 1024 ** 3) return `${trim(bytes / 1024 ** 3)} GiB`;
  if (bytes >= 1024 ** 2) return `${trim(bytes / 1024 ** 2)} MiB`;
  if (bytes >= 1024) return `${trim(bytes / 1024)} KiB`;
  return `${bytes} B`;
}

function trim(n: number): string {
  return Number(n.toFixed(3)).toString();
}

/** libvirt `average`/`peak`/`floor` attribute (kilobytes per second) to bits per second. */
export function libvirtRateToBitsPerSec(kiloBytesPerSec: number): number {
  return kiloBytesPerSec * LIBVIRT_RATE_UNIT_BITS_PER_SEC;
}

/** libvirt `burst` attribute (KiB) to bytes. */
export function libvirtBurstToBytes(kibibytes: number): number {
  return kibibytes * LIBVIRT_BURST_UNIT_BYTES;
}

/** The kernel keeps rates in whole bytes per second; round here so plans compare equal to what tc reads back. */
export function toKernelBytesPerSec(bitsPerSec: number): number {
  return Math.max(1, Math.round(bitsPerSec / 8));
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, min: 60_000, h: 3_600_000 };

/** Parse a duration such as `20s`, `1500ms`, `2min`, `1h` into milliseconds; a bare number is refused. */
export function parseDuration(text: string | number): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(String(text));
  if (!m) throw new UnitError(`"${text}" is not a duration`, 'write a number and a unit, e.g. "60s"');
  if (m[2] === "") {
    throw new UnitError(`"${text}" has no unit`, `write "${m[1]}s" for seconds (units: ms, s, min, h)`);
  }
  const factor = DURATION_UNITS[m[2].toLowerCase()];
  if (factor === undefined) {
    throw new UnitError(`"${text}" has an unknown duration unit "${m[2]}"`, "use one of ms, s, min, h");
  }
  return Math.round(Number(m[1]) * factor);
}
