import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  ALIAS_PREFIX,
  fnv1a64,
  formatIfbAlias,
  groupIfbName,
  IFB_PREFIX,
  interfaceIfbName,
  parseIfbAlias,
} from "../../src/core/names.js";

const UUID = "a4e00d26-390e-41a1-935e-10edc413232f";
const IFNAMSIZ_MAX = 15;

describe("fnv1a64", () => {
  test("known vectors", () => {
    assert.equal(fnv1a64(""), "cbf29ce484222325");
    assert.equal(fnv1a64("a"), "af63dc4c8601ec8c");
    assert.equal(fnv1a64("foobar"), "85944171f73967e8");
  });

  test("always 16 hex digits", () => {
    for (const s of ["", "x", "a much longer string with ünïcode"])
      assert.match(fnv1a64(s), /^[0-9a-f]{16}$/);
  });
});

describe("IFB names", () => {
  test("interface IFB: vqi + 12 hex, at most 15 characters", () => {
    const name = interfaceIfbName(UUID, "52:54:00:00:01:01");
    assert.match(name, /^vqi[0-9a-f]{12}$/);
    assert.ok(name.length <= IFNAMSIZ_MAX);
    assert.ok(name.startsWith(IFB_PREFIX));
  });

  test("deterministic", () => {
    assert.equal(interfaceIfbName(UUID, "52:54:00:00:01:01"), interfaceIfbName(UUID, "52:54:00:00:01:01"));
    assert.equal(
      interfaceIfbName(UUID, "52:54:00:00:01:01"),
      `vqi${fnv1a64(`${UUID}/52:54:00:00:01:01`).slice(0, 12)}`,
    );
  });

  test("different MACs and different domains give different names", () => {
    const names = new Set<string>();
    for (let i = 0; i < 256; i++) {
      const mac = `52:54:00:00:01:${i.toString(16).padStart(2, "0")}`;
      names.add(interfaceIfbName(UUID, mac));
      names.add(interfaceIfbName("237c8139-1b4e-423f-8846-a22fc3e350d3", mac));
    }
    assert.equal(names.size, 512);
  });

  test("group IFBs: vqd/vqu + 12 hex per direction, at most 15 characters", () => {
    const d = groupIfbName("tenant-a", "inbound");
    const u = groupIfbName("tenant-a", "outbound");
    assert.match(d, /^vqd[0-9a-f]{12}$/);
    assert.match(u, /^vqu[0-9a-f]{12}$/);
    assert.equal(d.slice(3), u.slice(3));
    assert.notEqual(groupIfbName("tenant-b", "inbound"), d);
    const long = groupIfbName("a".repeat(64), "outbound");
    assert.ok(long.length <= IFNAMSIZ_MAX);
  });

  test("interface and group IFB names never collide", () => {
    assert.notEqual(interfaceIfbName(UUID, "x").slice(0, 3), groupIfbName("x", "inbound").slice(0, 3));
  });
});

describe("IFB alias", () => {
  test("interface alias format", () => {
    assert.equal(
      formatIfbAlias({ role: "iface", domainUuid: UUID, mac: "52:54:00:00:01:01", dev: "vnet1" }),
      `virtqos/1,iface,${UUID},52:54:00:00:01:01,vnet1`,
    );
    assert.ok(formatIfbAlias({ role: "iface", domainUuid: UUID, mac: "m" }).startsWith(`${ALIAS_PREFIX},`));
  });

  test("round-trips", () => {
    for (const a of [
      { role: "iface", domainUuid: UUID, mac: "52:54:00:00:01:01", dev: "vnet1" },
      { role: "iface", domainUuid: UUID, mac: "52:54:00:00:01:01", dev: undefined },
      { role: "group", group: "tenant-a", direction: "inbound" },
      { role: "group", group: "tenant-a", direction: "outbound" },
    ] as const) {
      assert.deepEqual(parseIfbAlias(formatIfbAlias(a)), a);
    }
  });

  test("an alias without a dev has an empty last field", () => {
    assert.equal(formatIfbAlias({ role: "iface", domainUuid: UUID, mac: "m" }), `virtqos/1,iface,${UUID},m,`);
  });

  test("other aliases are not ours", () => {
    for (const alias of [
      undefined,
      "",
      "uplink",
      "virtqos/2,iface,u,m,d",
      "virtqos/1",
      "virtqos/1,group,g,sideways",
      "virtqos/1,other",
    ]) {
      assert.equal(parseIfbAlias(alias), undefined, String(alias));
    }
  });
});
