import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { describeDrift, ovsdbToWatch } from "../../src/agent/repair.js";
import { goneInterfaces } from "../../src/app/prune.js";
import type { StoredRecord } from "../../src/core/model.js";
import { interfaceIfbName } from "../../src/core/names.js";
import type { Op } from "../../src/core/plan.js";

// The pure parts of pruning and drift repair: which recorded interfaces are gone, and how a check's ops are
// worded in the repair's log line (and keyed for the drift policy). The kernel side is
// test/integration/repair.test.ts.

const UUID = "11111111-2222-3333-4444-555555555555";
const MAC = "52:54:00:00:00:01";
const IFACE = `${UUID}/${MAC}`;
const IFB = interfaceIfbName(UUID, MAC);
const limit = { rateBitsPerSec: 1e7, ceilBitsPerSec: 1e7, source: "policy" as const, mode: "shape" as const };

function record(interfaces: StoredRecord["interfaces"], extra: Partial<StoredRecord> = {}): StoredRecord {
  return { version: 2, generation: 1, domainName: "web1", domainUuid: UUID, interfaces, ...extra };
}

describe("goneInterfaces", () => {
  test("an interface whose tap is not among the links is gone; one without a dev never is", () => {
    const r = record([
      { mac: MAC, dev: "vnet3", type: "bridge", inbound: limit },
      { mac: "52:54:00:00:00:02", dev: "vnet4", type: "bridge", inbound: limit },
      { mac: "52:54:00:00:00:03", type: "hostdev", notEnforceable: "no host netdev" },
    ]);
    assert.deepEqual(goneInterfaces([r], new Set(["lo", "vnet4"])), [
      { domainUuid: UUID, domainName: "web1", mac: MAC, dev: "vnet3" },
    ]);
    assert.deepEqual(goneInterfaces([r], new Set(["vnet3", "vnet4"])), []);
  });
});

describe("describeDrift", () => {
  const rec = record([{ mac: MAC, dev: "vnet3", type: "bridge", inbound: limit, outbound: limit }]);
  const tag = { iface: IFACE };
  const htb = { rateBitsPerSec: 1e7, ceilBitsPerSec: 1e7 } as never;

  test("a deleted root: the tree under it is the root's, not three objects", () => {
    const ops: Op[] = [
      { op: "root-replace", dev: "vnet3", defaultMinor: 1, ...tag, direction: "inbound" },
      { op: "class-replace", dev: "vnet3", parent: "7651:", classid: "7651:1", htb, ...tag },
      { op: "leaf-replace", dev: "vnet3", parent: "7651:1", handle: "7652:", leaf: {} as never, ...tag },
    ];
    assert.deepEqual(describeDrift(ops, rec), {
      devs: ["vnet3"],
      missing: ["root qdisc"],
      extra: [],
      keys: ["vnet3|root qdisc"],
    });
  });

  test("a deleted IFB: named from the tap, its tree implied, the redirect re-pointed (not an extra)", () => {
    const redirect = { action: "redirect" as const, toDev: IFB };
    const ops: Op[] = [
      { op: "ifb-add", dev: IFB, alias: "virtqos/1,iface", ...tag },
      { op: "link-up", dev: IFB, ...tag },
      { op: "root-replace", dev: IFB, defaultMinor: 1, ...tag },
      { op: "filter-del", dev: "vnet3", hook: "ingress", prio: 64000, ...tag },
      {
        op: "filter-add",
        dev: "vnet3",
        hook: "ingress",
        prio: 64000,
        classifier: "u32",
        filter: redirect,
        ...tag,
      },
    ];
    const d = describeDrift(ops, rec);
    assert.deepEqual(d.devs, ["vnet3"]);
    assert.deepEqual(d.missing, ["ifb", "ingress redirect"]);
    assert.deepEqual(d.extra, []);
    assert.deepEqual(d.keys, [`${IFB}|ifb`, "vnet3|ingress redirect"]);
  });

  test("ops on an interface's IFB that still exists say so; removals are extra", () => {
    const ops: Op[] = [
      { op: "class-replace", dev: IFB, parent: "7651:", classid: "7651:1", htb, ...tag },
      { op: "hook-add", dev: "vnet3", kind: "clsact", ...tag },
      { op: "class-del", dev: "vnet3", classid: "7651:2", ...tag },
    ];
    const d = describeDrift(ops, rec);
    assert.deepEqual(d.missing, ["ifb class", "clsact qdisc"]);
    assert.deepEqual(d.extra, ["class"]);
    assert.deepEqual(d.keys, [`${IFB}|class`, "vnet3|clsact qdisc", "vnet3|extra class"]);
  });
});

describe("ovsdbToWatch", () => {
  test("false: no OVSDB watch; a unix socket that does not exist: none either", () => {
    assert.equal(ovsdbToWatch(false), undefined);
    assert.equal(ovsdbToWatch("unix:/nonexistent/virtqos-test/db.sock"), undefined);
  });
});
