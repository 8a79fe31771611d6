// What iproute2 6.1 and the kernel accept in the numbers of a tc line, as a checker for rendered batches:
// sizes are parsed into 32-bit unsigned bytes (lib/utils_math.c get_size), a token bucket is handed to the
// kernel as the time the rate needs to send it in 64 ns ticks, also 32 bits (tc/tc_core.c tc_calc_xmittime,
// which 6.1 wraps around silently), rates are 64-bit bytes per second and never zero, SFQ keeps at most
// 127 x 128 packets (the kernel lowers a larger limit, which then never compares equal again).

const U32_MAX = 2 ** 32 - 1;
const TICKS_PER_SEC = 1e6 * (1000 / 64);

export function ticks(bytes: number, bytesPerSec: number): number {
  return (bytes / bytesPerSec) * TICKS_PER_SEC;
}

/** Reasons a tc batch line would be refused or silently mangled; empty when tc takes it as written. */
export function tcRejects(line: string): string[] {
  const why: string[] = [];
  const num = (re: RegExp) => {
    const m = re.exec(line);
    return m ? Number(m[1]) : undefined;
  };
  // Every number is written in plain digits: tc reads "1e+21bit" differently from what was meant.
  for (const token of line.split(" "))
    if (/^\d+(\.\d+)?e[+-]?\d+[a-z]*$/i.test(token)) why.push(`"${token}" in exponent notation`);
  for (const m of line.matchAll(/\b(?:rate|ceil) (\S+)/g)) {
    const r = /^(\d+)bit$/.exec(m[1]);
    if (!r) {
      why.push(`rate "${m[1]}" is not whole bits`);
      continue;
    }
    const bytesPerSec = Number(r[1]) / 8;
    if (bytesPerSec < 1) why.push(`rate ${m[1]} is below 1 byte/s`);
    if (bytesPerSec >= 2 ** 64) why.push(`rate ${m[1]} overflows 64 bits`);
  }
  for (const m of line.matchAll(/\b(burst|cburst|limit|quantum) (\d+)b?\b/g)) {
    if (!Number.isSafeInteger(Number(m[2])) || Number(m[2]) > U32_MAX || Number(m[2]) < 1)
      why.push(`${m[1]} ${m[2]} outside 1..${U32_MAX}`);
  }
  const rate = num(/\brate (\d+)bit/);
  const ceil = num(/\bceil (\d+)bit/);
  const burst = num(/\bburst (\d+)b?\b/);
  const cburst = num(/\bcburst (\d+)b?\b/);
  if (rate !== undefined && burst !== undefined && ticks(burst, rate / 8) > U32_MAX)
    why.push(`burst ${burst} at rate ${rate}bit is ${(burst / (rate / 8)).toFixed(0)} s, over 32-bit ticks`);
  if (ceil !== undefined && cburst !== undefined && ticks(cburst, ceil / 8) > U32_MAX)
    why.push(`cburst ${cburst} at ceil ${ceil}bit is over 32-bit ticks`);
  const sfq = num(/\bsfq limit (\d+)/);
  if (sfq !== undefined && sfq > 127 * 128) why.push(`sfq limit ${sfq} above 16256 packets`);
  return why;
}
