import assert from "node:assert/strict";
import { test } from "node:test";
import type { ObservedDevice } from "../../src/core/normalise.js";
import {
  compareDevices,
  fingerprint,
  holdsVirtqos,
  kernelState,
  observedFrom,
} from "../../src/core/snapshot.js";

// What a transaction compares after a rollback: configuration, not counters or the kernel's own picks.

const tap = (over: Partial<ObservedDevice> = {}): ObservedDevice => ({
  dev: "vnet1",
  qdiscs: [
    {
      kind: "htb",
      handle: "7651:",
      parent: "root",
      options: { default: "0x1", r2q: 10, direct_packets_stat: 0 },
      stats: { bytes: 10, packets: 1, drops: 0, overlimits: 0 },
    },
  ],
  classes: [],
  filters: [
    {
      hook: "ingress",
      prio: 64000,
      protocol: "all",
      kind: "u32",
      handle: "800::800",
      redirectDev: "vqiaaaaaaaaaaaa",
      matches: ["00000000/00000000@0"],
    },
  ],
  ...over,
});
const link = { name: "vnet1", ifindex: 7, up: true };

test("counters, HTB's direct_packets_stat and u32 handles the kernel picked do not count", () => {
  const a = tap();
  const b = tap({
    qdiscs: [
      {
        ...tap().qdiscs[0]!,
        options: { default: "0x1", r2q: 10, direct_packets_stat: 42 },
        stats: undefined,
      },
    ],
    filters: [{ ...tap().filters[0]!, handle: "803::800" }],
  });
  assert.deepEqual(fingerprint(a, link), fingerprint(b, link));
  const before = kernelState(observedFrom({ links: [link], devices: [a] }, []));
  assert.deepEqual(before.devices[0]?.qdiscs[0]?.stats, undefined, "snapshots keep no counters");
  assert.deepEqual(compareDevices(before, observedFrom({ links: [link], devices: [b] }, []), ["vnet1"]), []);
});

test("a changed redirect or a missing qdisc is a difference, named by device", () => {
  const before = kernelState(observedFrom({ links: [link], devices: [tap()] }, []));
  const moved = tap({ filters: [{ ...tap().filters[0]!, redirectDev: "vqibbbbbbbbbbbb" }] });
  const diff = compareDevices(before, observedFrom({ links: [link], devices: [moved] }, []), ["vnet1"]);
  assert.equal(diff.length, 2);
  assert.ok(diff.every((l) => l.startsWith("vnet1: ")));
  assert.ok(diff.some((l) => l.includes("- filter") && l.includes("vqiaaaaaaaaaaaa")));
  const gone = compareDevices(before, observedFrom({ links: [], devices: [] }, []), ["vnet1"]);
  assert.ok(gone.length > 0 && gone.every((l) => l.includes(": - ")));
});

test("virtqos's own objects are recognised by root handle, priority range and IFB alias", () => {
  assert.ok(holdsVirtqos(tap(), link));
  assert.ok(!holdsVirtqos({ dev: "x", qdiscs: [], classes: [], filters: [] }, link));
  assert.ok(holdsVirtqos(undefined, { ...link, alias: "virtqos/1,iface,u,m,vnet1" }));
});
