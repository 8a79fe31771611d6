// Names that must not collide with another process's (temporary files, probe devices, transaction ids), not
// secrets. Math.random is enough, and unlike node:crypto costs the hook nothing to load on every guest start.

/** `digits` random lowercase hex digits. */
export function randomHex(digits: number): string {
  let out = "";
  while (out.length < digits)
    out += Math.floor(Math.random() * 0x100000000)
      .toString(16)
      .padStart(8, "0");
  return out.slice(0, digits);
}
