import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  formatRate,
  formatSize,
  LIBVIRT_BURST_UNIT_BYTES,
  LIBVIRT_RATE_UNIT_BITS_PER_SEC,
  libvirtBurstToBytes,
  libvirtRateToBitsPerSec,
  parseRate,
  parseSize,
  toKernelBytesPerSec,
  UnitError,
} from "../../src/core/units.js";

function unitError(fn: () => unknown): UnitError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof UnitError, `expected a UnitError, got ${String(e)}`);
    return e;
  }
  assert.fail("expected a UnitError, nothing was thrown");
}

describe("parseRate", () => {
  const cases: [string, number][] = [
    ["30mbit", 30e6],
    ["30Mbit", 30e6],
    ["30 mbit", 30e6],
    ["30mbit/s", 30e6],
    ["1bit", 1],
    ["800kbit", 800e3],
    ["2.5Gbit/s", 2.5e9],
    ["1tbit", 1e12],
    ["1kibit", 1024],
    ["1mibit", 1024 ** 2],
    ["1gibit", 1024 ** 3],
    ["100B/s", 800],
    ["1kB/s", 8000],
    ["1KB/s", 8000],
    ["2MB/s", 16e6],
    ["1GB/s", 8e9],
    ["512KiB/s", 512 * 1024 * 8],
    ["1MiB/s", 8 * 1024 ** 2],
    ["1GiB/s", 8 * 1024 ** 3],
  ];
  for (const [text, bits] of cases) {
    test(`${text} = ${bits} bit/s`, () => assert.equal(parseRate(text), bits));
  }

  test("a bare number is refused, and the fix names both mbit and MB/s", () => {
    for (const input of ["30", 30, " 30 "]) {
      const e = unitError(() => parseRate(input));
      assert.match(e.message, /no unit/);
      assert.match(e.fix, /30mbit/);
      assert.match(e.fix, /30MB\/s/);
    }
  });

  for (const text of ["30mbps", "30kbps", "30Mbps", "30Mb/s", "30mb/s", "30bps", "30Gbps"]) {
    test(`"${text}" is refused as ambiguous (bits or bytes?)`, () => {
      const e = unitError(() => parseRate(text));
      assert.match(e.message, /ambiguous/);
      assert.match(e.fix, /bit/);
      assert.match(e.fix, /B\/s/);
    });
  }

  test("the ambiguity fix suggests the same prefix in both spellings", () => {
    const e = unitError(() => parseRate("30kbps"));
    assert.match(e.fix, /"30kbit"/);
    assert.match(e.fix, /"30KB\/s"/);
  });

  for (const text of ["30furlongs", "30mbits", "30MB", "30xbit", "30b"]) {
    test(`"${text}" has an unknown rate unit`, () => {
      const e = unitError(() => parseRate(text));
      assert.match(e.message, /unknown rate unit|ambiguous/);
    });
  }

  for (const text of ["", "fast", "-5mbit", "mbit", "1e6bit", "30 mbit extra"]) {
    test(`"${text}" is not a rate`, () => {
      unitError(() => parseRate(text));
    });
  }
});

describe("parseSize", () => {
  const cases: [string, number][] = [
    ["1514B", 1514],
    ["1kB", 1000],
    ["1KB", 1000],
    ["64KiB", 65536],
    ["1.5MB", 1.5e6],
    ["1MiB", 1024 ** 2],
    ["1GB", 1e9],
    ["2GiB", 2 * 1024 ** 3],
    ["2 KiB", 2048],
  ];
  for (const [text, bytes] of cases) {
    test(`${text} = ${bytes} bytes`, () => assert.equal(parseSize(text), bytes));
  }

  test("a bare number is refused with a fix naming KiB and B", () => {
    const e = unitError(() => parseSize(64));
    assert.match(e.message, /no unit/);
    assert.match(e.fix, /64KiB/);
    assert.match(e.fix, /64B/);
  });

  for (const text of ["64kib", "64mb", "64KiB/s", "64bit", "64k"]) {
    test(`"${text}" has an unknown size unit`, () => {
      const e = unitError(() => parseSize(text));
      assert.match(e.message, /unknown size unit/);
    });
  }

  test("text that is not a number is refused", () => {
    unitError(() => parseSize("big"));
  });
});

describe("libvirt units", () => {
  test("average/peak/floor are kB/s (1000 bytes): average 1000 = 8 Mbit/s", () => {
    assert.equal(LIBVIRT_RATE_UNIT_BITS_PER_SEC, 8000);
    assert.equal(libvirtRateToBitsPerSec(1000), 8e6);
    assert.equal(libvirtRateToBitsPerSec(1), 8000);
    assert.equal(libvirtRateToBitsPerSec(3750), 30e6);
  });

  test("burst is KiB (1024 bytes): burst 256 = 262144 bytes", () => {
    assert.equal(LIBVIRT_BURST_UNIT_BYTES, 1024);
    assert.equal(libvirtBurstToBytes(256), 262144);
    assert.equal(libvirtBurstToBytes(1), 1024);
  });

  test("kernel rates are whole bytes per second, at least 1", () => {
    assert.equal(toKernelBytesPerSec(30e6), 3_750_000);
    assert.equal(toKernelBytesPerSec(12), 2); // 1.5 rounds up
    assert.equal(toKernelBytesPerSec(1), 1);
    assert.equal(toKernelBytesPerSec(0), 1);
  });
});

describe("formatRate / formatSize", () => {
  const rates: [number, string][] = [
    [30e6, "30 Mbit/s"],
    [2.5e9, "2.5 Gbit/s"],
    [800e3, "800 kbit/s"],
    [999, "999 bit/s"],
    [1e12, "1 Tbit/s"],
    [1e9, "1 Gbit/s"],
    [12_345_678, "12.346 Mbit/s"],
  ];
  for (const [bits, text] of rates) {
    test(`formatRate(${bits}) = "${text}"`, () => assert.equal(formatRate(bits), text));
  }

  const sizes: [number, string][] = [
    [1514, "1.479 KiB"],
    [1000, "1000 B"],
    [65536, "64 KiB"],
    [1.5 * 1024 ** 2, "1.5 MiB"],
    [1024 ** 3, "1 GiB"],
    [0, "0 B"],
  ];
  for (const [bytes, text] of sizes) {
    test(`formatSize(${bytes}) = "${text}"`, () => assert.equal(formatSize(bytes), text));
  }

  test("formatted rates parse back to the same value where exact", () => {
    for (const bits of [30e6, 2.5e9, 800e3, 1e12]) {
      const text = formatRate(bits).replace(" ", "").replace("/s", "").toLowerCase();
      assert.equal(parseRate(text), bits);
    }
  });
});
