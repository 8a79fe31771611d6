import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { filtersFromJson, type ObservedFilter, parseTcJson } from "../../src/core/tc/normalise.js";
import {
  macBucket,
  renderTreeFilter,
  sameTreeFilter,
  type TreeFilter,
  treeFilterFromObserved,
  treeFilterHandle,
  u32HandleKey,
} from "../../src/core/tc/tree.js";

const TABLE: TreeFilter = { kind: "hash-table", table: "100:", buckets: 256 };
const LINK_DOWN: TreeFilter = { kind: "hash-link", table: "100:", field: "dst" };
const LINK_UP: TreeFilter = { kind: "hash-link", table: "100:", field: "src" };
const member = (mac: string, node: number, field: "dst" | "src" = "dst"): TreeFilter => ({
  kind: "member",
  table: "100:",
  bucket: macBucket(mac),
  node,
  field,
  mac,
  flowid: `7651:${node.toString(16)}`,
});

describe("tree filters: render", () => {
  test("the three forms, exactly as the group goldens have them", () => {
    assert.equal(renderTreeFilter(TABLE), "handle 100: u32 divisor 256");
    assert.equal(
      renderTreeFilter(LINK_DOWN),
      "u32 ht 800:: match u32 0 0 hashkey mask 0x000000ff at -12 link 100:",
    );
    assert.equal(
      renderTreeFilter(LINK_UP),
      "u32 ht 800:: match u32 0 0 hashkey mask 0x00ff0000 at -4 link 100:",
    );
    assert.equal(
      renderTreeFilter(member("52:54:00:00:02:1f", 0x3c0)),
      "handle 100:1f:3c0 u32 ht 100:1f: match ether dst 52:54:00:00:02:1f flowid 7651:3c0",
    );
    assert.equal(
      renderTreeFilter(member("52:54:00:00:01:01", 0x1a2, "src")),
      "handle 100:1:1a2 u32 ht 100:1: match ether src 52:54:00:00:01:01 flowid 7651:1a2",
    );
  });

  test("handles: the table, the kernel's first node in 800:, bucket:node for a member", () => {
    assert.equal(treeFilterHandle(TABLE), "100:");
    assert.equal(treeFilterHandle(LINK_DOWN), "800::800");
    assert.equal(treeFilterHandle(member("52:54:00:00:02:1f", 0x3c0)), "100:1f:3c0");
    assert.equal(treeFilterHandle(member("52:54:00:00:03:00", 0x1a4)), "100:0:1a4");
  });

  test("u32HandleKey: tc prints bucket 0 as nothing, virtqos writes it", () => {
    assert.equal(u32HandleKey("100::1a4"), u32HandleKey("100:0:1a4"));
    assert.equal(u32HandleKey("800::800"), u32HandleKey("800:0:800"));
    assert.equal(u32HandleKey("100:"), u32HandleKey("100:0:0"));
    assert.notEqual(u32HandleKey("100:1f:1a2"), u32HandleKey("100:1f:1a3"));
    assert.equal(u32HandleKey("not a handle"), "not a handle");
  });
});

// Captured from iproute2 6.1 on kernel 6.18 (`tc -j filter show dev X parent 7651:`), a download tree with
// members in buckets 1 and 0 (the latter printed "100::1a4").
const DOWNLOAD_TREE =
  '[{"protocol":"all","pref":64010,"kind":"u32","chain":0},' +
  '{"protocol":"all","pref":64010,"kind":"u32","chain":0,"options":{"fh":"100:","ht_divisor":256}},' +
  '{"protocol":"all","pref":64010,"kind":"u32","chain":0,"options":{"fh":"100::1a4","order":420,"key_ht":"100","bkt":"0","flowid":"7651:1a4","not_in_hw":true,"match":{"value":"0","mask":"ffff","offmask":"","off":-16},"match":{"value":"0","mask":"ffffffff","offmask":"","off":-12}}},' +
  '{"protocol":"all","pref":64010,"kind":"u32","chain":0,"options":{"fh":"100:1:1a3","order":419,"key_ht":"100","bkt":"1","flowid":"7651:1a3","not_in_hw":true,"match":{"value":"5254","mask":"ffff","offmask":"","off":-16},"match":{"value":"ab0001","mask":"ffffffff","offmask":"","off":-12}}},' +
  '{"protocol":"all","pref":64010,"kind":"u32","chain":0,"options":{"fh":"800:","ht_divisor":1}},' +
  '{"protocol":"all","pref":64010,"kind":"u32","chain":0,"options":{"fh":"800::800","order":2048,"key_ht":"800","bkt":"0","link":"100:","not_in_hw":true,"match":{"value":"0","mask":"0","offmask":"","off":0},"hash_mask":"ff","hash_off":-12}}]';
// The upload side of the same kernel: source MAC keys at -8 and -4.
const UPLOAD_TREE =
  '[{"protocol":"all","pref":64010,"kind":"u32","chain":0,"options":{"fh":"100:1f:1a2","order":418,"key_ht":"100","bkt":"1f","flowid":"7651:1a2","not_in_hw":true,"match":{"value":"52540000","mask":"ffffffff","offmask":"","off":-8},"match":{"value":"21f0000","mask":"ffff0000","offmask":"","off":-4}}},' +
  '{"protocol":"all","pref":64010,"kind":"u32","chain":0,"options":{"fh":"800::800","order":2048,"key_ht":"800","bkt":"0","link":"100:","not_in_hw":true,"match":{"value":"0","mask":"0","offmask":"","off":0},"hash_mask":"ff0000","hash_off":-4}}]';

const observed = (text: string) => filtersFromJson(parseTcJson(text), "class", "7651:");

describe("tree filters: read back from what the kernel shows", () => {
  test("a download tree: the table, members (bucket 0 included), the hashing link", () => {
    assert.deepEqual(observed(DOWNLOAD_TREE).map(treeFilterFromObserved), [
      TABLE,
      member("00:00:00:00:00:00", 0x1a4),
      member("52:54:00:ab:00:01", 0x1a3),
      LINK_DOWN,
    ]);
  });

  test("an upload tree: source MACs, the source hash key", () => {
    assert.deepEqual(observed(UPLOAD_TREE).map(treeFilterFromObserved), [
      member("52:54:00:00:02:1f", 0x1a2, "src"),
      LINK_UP,
    ]);
  });

  test("each read-back filter renders as the line that made it", () => {
    for (const f of observed(DOWNLOAD_TREE)) {
      const t = treeFilterFromObserved(f);
      assert.ok(t);
      assert.ok(sameTreeFilter(f, t));
    }
  });

  test("anything else is not a tree filter", () => {
    const base: ObservedFilter = { hook: "class", prio: 64010, protocol: "all", kind: "u32", matches: [] };
    assert.equal(treeFilterFromObserved({ ...base, kind: "flower", handle: "1" }), undefined);
    assert.equal(
      treeFilterFromObserved({ ...base, handle: "800::800", link: "100:" }),
      undefined,
      "no hash key",
    );
    assert.equal(
      treeFilterFromObserved({
        ...base,
        handle: "800::800",
        link: "100:",
        hashKey: { mask: 0xff, offsetBytes: 0 },
      }),
      undefined,
      "another hash key",
    );
    assert.equal(
      treeFilterFromObserved({
        ...base,
        handle: "100:1:1a2",
        flowid: "7651:1a2",
        matches: ["5254/ffff@-16"],
      }),
      undefined,
      "half a MAC",
    );
    assert.equal(
      treeFilterFromObserved({
        ...base,
        handle: "100:1:1a2",
        flowid: "7651:1a2",
        matches: ["5254/ffff@-16", "ab0001/ffffff00@-12"],
      }),
      undefined,
      "a partial byte",
    );
  });
});

describe("sameTreeFilter", () => {
  const [, , m1a3, link] = observed(DOWNLOAD_TREE);
  test("another MAC or class under the same handle is another filter", () => {
    assert.ok(sameTreeFilter(m1a3, member("52:54:00:ab:00:01", 0x1a3)));
    assert.ok(!sameTreeFilter(m1a3, member("52:54:00:cd:00:01", 0x1a3)));
    const elsewhere: TreeFilter = {
      kind: "member",
      table: "100:",
      bucket: 1,
      node: 0x1a3,
      field: "dst",
      mac: "52:54:00:ab:00:01",
      flowid: "7651:2",
    };
    assert.ok(!sameTreeFilter(m1a3, elsewhere), "another class");
    assert.ok(!sameTreeFilter(link, LINK_UP), "the other direction's hash key");
  });

  test("where tc shows too little to read a filter back, its class, link and divisor decide", () => {
    const bare: ObservedFilter = {
      hook: "class",
      prio: 64010,
      protocol: "all",
      kind: "u32",
      handle: "100:1:1a3",
      flowid: "7651:1a3",
      matches: [],
    };
    assert.ok(sameTreeFilter(bare, member("52:54:00:ab:00:01", 0x1a3)));
    assert.ok(!sameTreeFilter(bare, member("52:54:00:ab:00:01", 0x1a4)));
    const bareLink: ObservedFilter = { ...bare, handle: "800::800", flowid: undefined, link: "100:" };
    assert.ok(sameTreeFilter(bareLink, LINK_DOWN));
    assert.ok(sameTreeFilter(bareLink, LINK_UP), "the key is not shown: the link alone decides");
  });
});
