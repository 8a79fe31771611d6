import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  type DeviceQuery,
  filtersFromJson,
  linksFromJson,
  observeBatchLines,
  parseClasses,
  parseTcJson,
  parseTcRate,
  parseTcSize,
  printTcRate,
  printTcSize,
  qdiscsFromJson,
  sameSize,
  splitObserveOutput,
} from "../../src/core/tc/normalise.js";

describe("printTcRate (iproute2 print_rate)", () => {
  const cases: [number, string][] = [
    [30e6, "30Mbit"],
    [12_345_678, "12345Kbit"],
    [1e9, "1Gbit"],
    [999, "999bit"],
    [2.5e6, "2500Kbit"],
    [1000, "1Kbit"],
    [1001, "1001bit"],
    [8e6, "8Mbit"],
    [10e9, "10Gbit"],
    [1.5e9, "1500Mbit"],
    [123_456_789_000, "123456Mbit"],
    [4e12, "4Tbit"],
    [4e15, "4000Tbit"],
    [30_000_008, "30Mbit"],
    [0, "0bit"],
  ];
  for (const [bits, text] of cases) {
    test(`${bits} -> ${text}`, () => assert.equal(printTcRate(bits), text));
  }
});

describe("parseTcRate / parseTcSize", () => {
  test("rates as tc prints them", () => {
    assert.equal(parseTcRate("30Mbit"), 30e6);
    assert.equal(parseTcRate("12345Kbit"), 12_345_000);
    assert.equal(parseTcRate("1Gbit"), 1e9);
    assert.equal(parseTcRate("999bit"), 999);
    assert.equal(parseTcRate("1Mibit"), 1024 ** 2);
    assert.ok(Number.isNaN(parseTcRate("30mbit")));
    assert.ok(Number.isNaN(parseTcRate("")));
  });

  test("print and parse round-trip to what tc shows", () => {
    for (const bits of [30e6, 12_345_678, 1e9, 999, 2.5e6]) {
      assert.equal(printTcRate(parseTcRate(printTcRate(bits))), printTcRate(bits));
    }
  });

  test("sizes: b is bytes, Kb/Mb/Gb are binary", () => {
    assert.equal(parseTcSize("62493b"), 62493);
    assert.equal(parseTcSize("64Kb"), 65536);
    assert.equal(parseTcSize("1Mb"), 1024 ** 2);
    assert.equal(parseTcSize("1.5Kb"), 1536);
    assert.equal(parseTcSize("2Gb"), 2 * 1024 ** 3);
    assert.ok(Number.isNaN(parseTcSize("64KiB")));
    assert.ok(Number.isNaN(parseTcSize("")));
  });

  test("printTcSize prints as iproute2's print_size, and parses back to the value it stands for", () => {
    assert.equal(printTcSize(62_493), "62493b");
    assert.equal(printTcSize(65_536), "64Kb");
    assert.equal(printTcSize(65_540), "64Kb");
    assert.equal(printTcSize(65_552), "65552b");
    assert.equal(printTcSize(1024 * 1024 + 100), "1Mb");
    assert.equal(printTcSize(1023), "1023b");
    for (const b of [3028, 62_493, 65_536, 1_250_000, 12_800_000]) {
      assert.ok(Math.abs(parseTcSize(printTcSize(b)) - b) < 1024, String(b));
    }
  });

  test("sameSize tolerates tc's tick rounding", () => {
    assert.ok(sameSize(62493, 62500));
    assert.ok(sameSize(3000, 3028));
    assert.ok(sameSize(64 * 1024, 65000));
    assert.ok(!sameSize(60000, 62500));
    assert.ok(!sameSize(3028 * 2, 3028));
  });
});

const CLASS_TEXT =
  "class htb 7651:1 root leaf 7652: prio 0 quantum 20000 rate 30Mbit ceil 30Mbit linklayer ethernet burst 62493b/1 mpu 0b cburst 62493b/1 mpu 0b level 0 \n" +
  " Sent 336 bytes 4 pkt (dropped 0, overlimits 0 requeues 0) \n" +
  " backlog 0b 0p requeues 0\n" +
  " lended: 4 borrowed: 0 giants: 0\n" +
  " tokens: 260026 ctokens: 260026";

describe("parseClasses", () => {
  test("a root HTB class from `tc -d -s class show`", () => {
    assert.deepEqual(parseClasses(CLASS_TEXT), [
      {
        classid: "7651:1",
        parent: "7651:",
        leaf: "7652:",
        rateText: "30Mbit",
        ceilText: "30Mbit",
        rateBitsPerSec: 30e6,
        ceilBitsPerSec: 30e6,
        burstBytes: 62493,
        cburstBytes: 62493,
        quantumBytes: 20000,
        stats: { bytes: 336, packets: 4, drops: 0, overlimits: 0, backlogBytes: 0 },
      },
    ]);
  });

  test("a parent/child tree with stats, and non-HTB classes skipped", () => {
    const text = [
      "class htb 7651:1 root rate 100Mbit ceil 100Mbit linklayer ethernet burst 125000b/1 mpu 0b cburst 125000b/1 mpu 0b level 7 ",
      " Sent 1000 bytes 10 pkt (dropped 0, overlimits 3 requeues 0) ",
      " backlog 0b 0p requeues 0",
      "class htb 7651:10 parent 7651:1 leaf 7654: prio 0 quantum 1514 rate 12345Kbit ceil 100Mbit linklayer ethernet burst 64Kb/1 mpu 0b cburst 1Mb/1 mpu 0b level 0 ",
      " Sent 900 bytes 9 pkt (dropped 2, overlimits 5 requeues 0) ",
      " backlog 1514b 1p requeues 0",
      "class fq_codel 7654:1 parent 7654: ",
      " Sent 0 bytes 0 pkt (dropped 0, overlimits 0 requeues 0) ",
      " backlog 0b 0p requeues 0",
      "",
    ].join("\n");
    const classes = parseClasses(text);
    assert.equal(classes.length, 2);
    assert.equal(classes[0].classid, "7651:1");
    assert.equal(classes[0].parent, "7651:");
    assert.equal(classes[0].leaf, undefined);
    assert.equal(classes[0].quantumBytes, undefined);
    assert.deepEqual(classes[0].stats, {
      bytes: 1000,
      packets: 10,
      drops: 0,
      overlimits: 3,
      backlogBytes: 0,
    });
    assert.equal(classes[1].classid, "7651:10");
    assert.equal(classes[1].parent, "7651:1");
    assert.equal(classes[1].leaf, "7654:");
    assert.equal(classes[1].rateBitsPerSec, 12_345_000);
    assert.equal(classes[1].ceilBitsPerSec, 100e6);
    assert.equal(classes[1].burstBytes, 65536);
    assert.equal(classes[1].cburstBytes, 1024 ** 2);
    assert.deepEqual(classes[1].stats, {
      bytes: 900,
      packets: 9,
      drops: 2,
      overlimits: 5,
      backlogBytes: 1514,
    });
  });

  test("no classes", () => {
    assert.deepEqual(parseClasses(""), []);
  });
});

const U32_REDIRECT = [
  { protocol: "all", pref: 64000, kind: "u32", chain: 0 },
  { protocol: "all", pref: 64000, kind: "u32", chain: 0, options: { fh: "800:", ht_divisor: 1 } },
  {
    protocol: "all",
    pref: 64000,
    kind: "u32",
    chain: 0,
    options: {
      fh: "800::800",
      order: 2048,
      key_ht: "800",
      bkt: "0",
      not_in_hw: true,
      match: { value: "0", mask: "0", offmask: "", off: 0 },
      actions: [
        {
          order: 1,
          kind: "mirred",
          mirred_action: "redirect",
          direction: "egress",
          to_dev: "ifbx",
          control_action: { type: "stolen" },
          index: 2,
          ref: 1,
          bind: 1,
        },
      ],
    },
  },
];

describe("filtersFromJson", () => {
  test("u32 redirect: the per-priority header and the 800: hash table are skipped", () => {
    assert.deepEqual(filtersFromJson(U32_REDIRECT, "ingress"), [
      {
        hook: "ingress",
        parent: undefined,
        prio: 64000,
        protocol: "all",
        kind: "u32",
        handle: "800::800",
        flowid: undefined,
        redirectDev: "ifbx",
        matches: ["0/0@0"],
      },
    ]);
  });

  test("the same JSON text as tc prints it", () => {
    const text = JSON.stringify(U32_REDIRECT);
    const [f] = filtersFromJson(JSON.parse(text), "egress");
    assert.equal(f.hook, "egress");
    assert.equal(f.redirectDev, "ifbx");
  });

  test("matchall with a police action and stats", () => {
    const json = [
      { protocol: "all", pref: 64000, kind: "matchall", chain: 0 },
      {
        protocol: "all",
        pref: 64000,
        kind: "matchall",
        chain: 0,
        options: {
          handle: 1,
          not_in_hw: true,
          actions: [
            {
              order: 1,
              kind: "police",
              index: 1,
              control_action: { type: "drop" },
              overhead: 0,
              rate: "8Mbit",
              burst: "62500b",
              mtu: "64Kb",
              ref: 1,
              bind: 1,
              stats: { bytes: 1234, packets: 5, drops: 0, overlimits: 0, requeues: 0 },
            },
          ],
        },
      },
    ];
    const [f] = filtersFromJson(json, "ingress");
    assert.equal(f.kind, "matchall");
    assert.equal(f.handle, "1");
    assert.deepEqual(f.police, { rateBitsPerSec: 8e6, burstBytes: 62500 });
    assert.deepEqual(f.stats, { bytes: 1234, packets: 5 });
    assert.equal(f.redirectDev, undefined);
    assert.deepEqual(f.matches, []);
  });

  test("a foreign flower filter at another priority is kept as is", () => {
    const json = [
      { protocol: "ip", pref: 10, kind: "flower", chain: 0 },
      {
        protocol: "ip",
        pref: 10,
        kind: "flower",
        chain: 0,
        options: { handle: 1, keys: { ip_proto: "tcp" }, not_in_hw: true },
      },
    ];
    const [f] = filtersFromJson(json, "ingress");
    assert.equal(f.prio, 10);
    assert.equal(f.protocol, "ip");
    assert.equal(f.kind, "flower");
  });

  test("class filters keep their parent; u32 classification to a flowid", () => {
    const json = [
      {
        protocol: "all",
        pref: 64010,
        kind: "u32",
        chain: 0,
        options: {
          fh: "800::800",
          order: 2048,
          key_ht: "800",
          bkt: "0",
          flowid: "7651:10",
          match: { value: "0", mask: "0", offmask: "", off: 0 },
        },
      },
    ];
    const [f] = filtersFromJson(json, "class", "7651:");
    assert.equal(f.parent, "7651:");
    assert.equal(f.flowid, "7651:10");
  });

  test("a u32 hash table with a real divisor is kept", () => {
    const [f] = filtersFromJson(
      [{ protocol: "all", pref: 64000, kind: "u32", options: { fh: "1:", ht_divisor: 256 } }],
      "ingress",
    );
    assert.equal(f.divisor, 256);
  });

  // Captured from iproute2 6.1 on kernel 6.18: a group tree's filters (`tc -j filter show dev X parent 7651:`).
  const GROUP_TREE_TEXT =
    '[{"protocol":"all","pref":64010,"kind":"u32","chain":0},' +
    '{"protocol":"all","pref":64010,"kind":"u32","chain":0,"options":{"fh":"100:","ht_divisor":256}},' +
    '{"protocol":"all","pref":64010,"kind":"u32","chain":0,"options":{"fh":"100:1f:1a2","order":418,"key_ht":"100","bkt":"1f","flowid":"7651:1a2","not_in_hw":true,' +
    '"match":{"value":"52540000","mask":"ffffffff","offmask":"","off":-8},"match":{"value":"21f0000","mask":"ffff0000","offmask":"","off":-4}}},' +
    '{"protocol":"all","pref":64010,"kind":"u32","chain":0,"options":{"fh":"800:","ht_divisor":1}},' +
    '{"protocol":"all","pref":64010,"kind":"u32","chain":0,"options":{"fh":"800::800","order":2048,"key_ht":"800","bkt":"0","link":"100:","not_in_hw":true,' +
    '"match":{"value":"0","mask":"0","offmask":"","off":0},"hash_mask":"ff0000","hash_off":-4}}]';

  test("parseTcJson keeps every key of a u32 node (tc repeats the `match` member)", () => {
    const plain = filtersFromJson(JSON.parse(GROUP_TREE_TEXT), "class", "7651:");
    assert.deepEqual(plain[1].matches, ["21f0000/ffff0000@-4"], "JSON.parse alone keeps the last key");
    const [table, member, link] = filtersFromJson(parseTcJson(GROUP_TREE_TEXT), "class", "7651:");
    assert.equal(table.divisor, 256);
    assert.deepEqual(member.matches, ["52540000/ffffffff@-8", "21f0000/ffff0000@-4"]);
    assert.equal(member.flowid, "7651:1a2");
    assert.equal(link.link, "100:");
    assert.deepEqual(link.hashKey, { mask: 0x00ff0000, offsetBytes: -4 });
    assert.deepEqual(link.matches, ["0/0@0"]);
  });

  test("parseTcJson leaves JSON without repeated keys as JSON.parse reads it", () => {
    const text = JSON.stringify(U32_REDIRECT);
    assert.deepEqual(parseTcJson(text), JSON.parse(text));
  });

  test("not an array: nothing", () => {
    assert.deepEqual(filtersFromJson(undefined, "ingress"), []);
    assert.deepEqual(filtersFromJson({}, "ingress"), []);
  });
});

describe("linksFromJson / qdiscsFromJson", () => {
  test("ip -j -d link show", () => {
    const json = [
      { ifindex: 1, ifname: "lo", flags: ["LOOPBACK", "UP", "LOWER_UP"], mtu: 65536 },
      {
        ifindex: 42,
        ifname: "vqi0123456789ab",
        flags: ["BROADCAST", "NOARP", "UP", "LOWER_UP"],
        ifalias: "virtqos/1,iface,u,m,vnet1",
        linkinfo: { info_kind: "ifb" },
      },
      { ifindex: 43, ifname: "vnet1", flags: ["BROADCAST"], master: "br0", linkinfo: { info_kind: "tun" } },
      { ifindex: 44 },
    ];
    assert.deepEqual(linksFromJson(json), [
      { name: "lo", ifindex: 1, kind: undefined, alias: undefined, up: true, master: undefined, mtu: 65536 },
      {
        name: "vqi0123456789ab",
        ifindex: 42,
        kind: "ifb",
        alias: "virtqos/1,iface,u,m,vnet1",
        up: true,
        master: undefined,
        mtu: undefined,
      },
      { name: "vnet1", ifindex: 43, kind: "tun", alias: undefined, up: false, master: "br0", mtu: undefined },
    ]);
    assert.deepEqual(linksFromJson(null), []);
  });

  test("tc -j -s qdisc show, grouped by device", () => {
    const json = [
      {
        kind: "noqueue",
        handle: "0:",
        dev: "lo",
        root: true,
        refcnt: 2,
        options: {},
        bytes: 0,
        packets: 0,
        drops: 0,
        overlimits: 0,
        requeues: 0,
        backlog: 0,
        qlen: 0,
      },
      {
        kind: "htb",
        handle: "7651:",
        dev: "vnet1",
        root: true,
        refcnt: 2,
        options: { r2q: 10, default: "0x1", direct_packets_stat: 0 },
        bytes: 100,
        packets: 2,
        drops: 1,
        overlimits: 3,
        requeues: 0,
        backlog: 0,
        qlen: 0,
      },
      { kind: "fq_codel", handle: "7654:", dev: "vnet1", parent: "7651:1", options: { limit: 10240 } },
      { kind: "clsact", handle: "ffff:", dev: "vnet1", parent: "ffff:fff1", options: {} },
    ];
    const byDev = qdiscsFromJson(json);
    assert.deepEqual([...byDev.keys()], ["lo", "vnet1"]);
    const v = byDev.get("vnet1") ?? [];
    assert.deepEqual(
      v.map((q) => [q.kind, q.handle, q.parent]),
      [
        ["htb", "7651:", "root"],
        ["fq_codel", "7654:", "7651:1"],
        ["clsact", "ffff:", "ffff:fff1"],
      ],
    );
    assert.equal(v[0].options.default, "0x1");
    assert.deepEqual(v[0].stats, { bytes: 100, packets: 2, drops: 1, overlimits: 3, backlogBytes: 0 });
    assert.equal(v[1].stats, undefined);
  });
});

describe("observe batch", () => {
  test("observeBatchLines asks for classes and filters as needed", () => {
    assert.deepEqual(observeBatchLines({ dev: "vnet1", classes: true, egress: true, rootFilters: true }), [
      "class show dev vnet1",
      "filter show dev vnet1 ingress",
      "filter show dev vnet1 egress",
      "filter show dev vnet1 parent 7651:",
    ]);
    assert.deepEqual(observeBatchLines({ dev: "vnet2", classes: false, egress: false, rootFilters: false }), [
      "filter show dev vnet2 ingress",
    ]);
  });

  test("splitObserveOutput assigns class text and JSON lines to each device", () => {
    const queries: DeviceQuery[] = [
      { dev: "vnet1", classes: true, egress: false, rootFilters: false },
      { dev: "vnet2", classes: false, egress: false, rootFilters: false },
      { dev: "vnet3", classes: true, egress: true, rootFilters: false },
      { dev: "vqi0123456789ab", classes: true, egress: true, rootFilters: true },
    ];
    const text = [
      ...CLASS_TEXT.split("\n"),
      "",
      JSON.stringify(U32_REDIRECT),
      "[]",
      // vnet3: asked for classes, has none
      "[]",
      "[]",
      "class htb 7651:1 root leaf 7652: prio 0 quantum 1514 rate 1Mbit ceil 1Mbit linklayer ethernet burst 6250b/1 mpu 0b cburst 6250b/1 mpu 0b level 0 ",
      " Sent 0 bytes 0 pkt (dropped 0, overlimits 0 requeues 0) ",
      " backlog 0b 0p requeues 0",
      "[]",
      "[]",
      "[]",
      "",
    ].join("\n");
    for (const q of queries) {
      // Sanity: the fixture answers exactly the lines observe would ask.
      assert.ok(observeBatchLines(q).length >= 1);
    }
    const out = splitObserveOutput(text, queries);
    assert.deepEqual([...out.keys()], ["vnet1", "vnet2", "vnet3", "vqi0123456789ab"]);
    const v1 = out.get("vnet1");
    assert.equal(v1?.classes.length, 1);
    assert.equal(v1?.classes[0].rateText, "30Mbit");
    assert.deepEqual(
      v1?.filters.map((f) => [f.hook, f.prio, f.redirectDev]),
      [["ingress", 64000, "ifbx"]],
    );
    assert.deepEqual(out.get("vnet2"), { dev: "vnet2", classes: [], filters: [] });
    assert.deepEqual(out.get("vnet3"), { dev: "vnet3", classes: [], filters: [] });
    const ifb = out.get("vqi0123456789ab");
    assert.equal(ifb?.classes.length, 1);
    assert.equal(ifb?.classes[0].rateText, "1Mbit");
    assert.equal(ifb?.classes[0].burstBytes, 6250);
    assert.deepEqual(ifb?.filters, []);
  });

  test("splitObserveOutput fails loudly when the output ends early", () => {
    assert.throws(
      () => splitObserveOutput("[]\n", [{ dev: "a", classes: false, egress: true, rootFilters: false }]),
      /ended early/,
    );
  });
});
