import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { parseDomainXml } from "../../src/core/domain-xml.js";
import type { DesiredInterface } from "../../src/core/model.js";
import { emptyPolicy, parsePolicy } from "../../src/core/policy.js";
import { resolveDomain } from "../../src/core/resolve.js";

const UUID = "11111111-2222-3333-4444-555555555555";
const QOS = "https://virtqos.dev/xmlns/qos/1";

function domain(interfaces: string, metadata = ""): string {
  return `<domain type='kvm'>
  <name>web1</name>
  <uuid>${UUID}</uuid>
  ${metadata ? `<metadata><vq:qos xmlns:vq="${QOS}">${metadata}</vq:qos></metadata>` : ""}
  <devices>${interfaces}</devices>
</domain>`;
}

function iface(type: string, mac: string, dev: string | undefined, alias: string, inner = ""): string {
  return `<interface type='${type}'><mac address='${mac}'/>${dev ? `<target dev='${dev}'/>` : ""}<alias name='${alias}'/>${inner}</interface>`;
}

function resolve(xml: string, policyText?: string) {
  const policy = policyText === undefined ? emptyPolicy() : parsePolicy(policyText, "policy.yaml");
  return resolveDomain(parseDomainXml(xml), policy);
}

const byMac = (list: DesiredInterface[], mac: string) => {
  const found = list.find((i) => i.mac === mac);
  assert.ok(found, `interface ${mac}`);
  return found;
};

const M1 = "52:54:00:00:00:01";
const M2 = "52:54:00:00:00:02";
const M3 = "52:54:00:00:00:03";

// Four interfaces: bandwidth both ways (1), bandwidth inbound only (2), nothing (3), metadata+bandwidth (4).
const XML = domain(
  [
    iface(
      "bridge",
      M1,
      "vnet0",
      "net0",
      "<bandwidth><inbound average='1000' peak='2000' burst='256'/><outbound average='500'/></bandwidth>",
    ),
    iface("network", M2, "vnet1", "net1", "<bandwidth><inbound average='125'/></bandwidth>"),
    iface("ethernet", M3, "vnet2", "net2"),
  ].join("\n"),
  `<vq:interface mac="${M1}"><vq:inbound average="3750"/></vq:interface>`,
);

describe("precedence per direction: policy > metadata > bandwidth > defaults", () => {
  test("without a policy: metadata beats bandwidth for the same direction only", () => {
    const { interfaces, warnings } = resolve(XML);
    assert.deepEqual(warnings, []);
    const a = byMac(interfaces, M1);
    assert.deepEqual(a.inbound, {
      rateBitsPerSec: 30e6,
      ceilBitsPerSec: 30e6,
      burstBytes: undefined,
      floorBitsPerSec: undefined,
      mode: "shape",
      source: "metadata",
    });
    assert.deepEqual(a.outbound, {
      rateBitsPerSec: 4e6,
      ceilBitsPerSec: 4e6,
      burstBytes: undefined,
      floorBitsPerSec: undefined,
      mode: "shape",
      source: "bandwidth",
    });
    assert.equal(byMac(interfaces, M2).inbound?.source, "bandwidth");
    assert.equal(byMac(interfaces, M2).inbound?.rateBitsPerSec, 1e6);
    assert.equal(byMac(interfaces, M2).outbound, undefined);
    assert.equal(byMac(interfaces, M3).inbound, undefined);
    assert.equal(byMac(interfaces, M3).outbound, undefined);
  });

  test("bandwidth peak and burst are converted (kB/s -> bit/s, KiB -> bytes)", () => {
    const { interfaces } = resolve(
      domain(
        iface(
          "bridge",
          M1,
          "vnet0",
          "net0",
          "<bandwidth><inbound average='1000' peak='2000' burst='256' floor='100'/></bandwidth>",
        ),
      ),
    );
    assert.deepEqual(interfaces[0].inbound, {
      rateBitsPerSec: 8e6,
      ceilBitsPerSec: 16e6,
      burstBytes: 262144,
      floorBitsPerSec: 800e3,
      mode: "shape",
      source: "bandwidth",
    });
  });

  test("the policy beats metadata and bandwidth; defaults fill only directions with no other limit", () => {
    const { interfaces } = resolve(
      XML,
      `defaults:
  inbound: { average: 100mbit }
  outbound: { average: 50mbit }
domains:
  - name: web1
    outbound: { average: 10mbit, peak: 20mbit, burst: 64KiB }
`,
    );
    const a = byMac(interfaces, M1);
    assert.equal(a.inbound?.source, "metadata");
    assert.deepEqual(a.outbound, {
      rateBitsPerSec: 10e6,
      ceilBitsPerSec: 20e6,
      burstBytes: 65536,
      floorBitsPerSec: undefined,
      mode: "shape",
      source: "policy",
    });
    const b = byMac(interfaces, M2);
    assert.equal(b.inbound?.source, "bandwidth");
    assert.equal(b.outbound?.source, "policy", "the domain rule applies to every interface of the domain");
    const c = byMac(interfaces, M3);
    assert.equal(c.inbound?.source, "defaults");
    assert.equal(c.inbound?.rateBitsPerSec, 100e6);
    assert.equal(c.outbound?.source, "policy");
  });

  test("defaults apply when nothing else limits a direction", () => {
    const { interfaces } = resolve(XML, "defaults:\n  outbound: { average: 50mbit }\n");
    assert.equal(byMac(interfaces, M1).outbound?.source, "bandwidth");
    assert.equal(byMac(interfaces, M2).outbound?.source, "defaults");
    assert.equal(byMac(interfaces, M2).outbound?.rateBitsPerSec, 50e6);
    assert.equal(byMac(interfaces, M3).outbound?.source, "defaults");
    assert.equal(byMac(interfaces, M3).inbound, undefined);
  });

  test("`unlimited` in the policy overrides the XML and the defaults", () => {
    const { interfaces } = resolve(
      XML,
      `defaults:
  inbound: { average: 100mbit }
domains:
  - name: web1
    inbound: unlimited
`,
    );
    for (const mac of [M1, M2, M3]) assert.equal(byMac(interfaces, mac).inbound, undefined, mac);
    assert.equal(byMac(interfaces, M1).outbound?.source, "bandwidth");
  });

  test("an interface rule beats the domain rule", () => {
    const { interfaces } = resolve(
      XML,
      `domains:
  - name: web1
    inbound: { average: 5mbit }
    interfaces:
      - mac: "${M2}"
        inbound: { average: 7mbit }
`,
    );
    assert.equal(byMac(interfaces, M1).inbound?.rateBitsPerSec, 5e6);
    assert.equal(byMac(interfaces, M2).inbound?.rateBitsPerSec, 7e6);
    assert.equal(byMac(interfaces, M3).inbound?.rateBitsPerSec, 5e6);
  });

  test("a domain rule by uuid beats one by name", () => {
    const { interfaces } = resolve(
      XML,
      `domains:
  - name: web1
    outbound: { average: 1mbit }
  - uuid: "${UUID.replace(/-/g, "").toUpperCase()}"
    outbound: { average: 2mbit }
`,
    );
    assert.equal(byMac(interfaces, M3).outbound?.rateBitsPerSec, 2e6);
  });

  test("a rule for another domain does not apply", () => {
    const { interfaces } = resolve(XML, "domains:\n  - name: web2\n    outbound: { average: 1mbit }\n");
    assert.equal(byMac(interfaces, M3).outbound, undefined);
  });
});

describe("interface matching", () => {
  for (const [field, value] of [
    ["mac", M2],
    ["mac", M2.toUpperCase()],
    ["target", "vnet1"],
    ["alias", "net1"],
  ] as const) {
    test(`by ${field}: ${value}`, () => {
      const { interfaces } = resolve(
        XML,
        `domains:\n  - name: web1\n    interfaces:\n      - ${field}: "${value}"\n        outbound: { average: 3mbit }\n`,
      );
      assert.equal(byMac(interfaces, M2).outbound?.rateBitsPerSec, 3e6);
      assert.equal(byMac(interfaces, M3).outbound, undefined);
      assert.equal(byMac(interfaces, M1).outbound?.source, "bandwidth");
    });
  }

  test("all given selectors must match", () => {
    const { interfaces } = resolve(
      XML,
      `domains:\n  - name: web1\n    interfaces:\n      - mac: "${M2}"\n        alias: net0\n        outbound: { average: 3mbit }\n`,
    );
    assert.ok(interfaces.every((i) => i.outbound?.source !== "policy"));
  });

  test("the first matching rule wins", () => {
    const { interfaces } = resolve(
      XML,
      `domains:\n  - name: web1\n    interfaces:\n      - alias: net1\n        outbound: { average: 3mbit }\n      - mac: "${M2}"\n        outbound: { average: 4mbit }\n`,
    );
    assert.equal(byMac(interfaces, M2).outbound?.rateBitsPerSec, 3e6);
  });
});

describe("interface types", () => {
  const TYPES_XML = domain(
    [
      iface("bridge", "52:54:00:00:01:01", "vnet0", "net0"),
      iface("network", "52:54:00:00:01:02", "vnet1", "net1"),
      iface("ethernet", "52:54:00:00:01:03", "tap0", "net2"),
      iface("direct", "52:54:00:00:01:04", "macvtap0", "net3"),
      iface("vhostuser", "52:54:00:00:01:05", undefined, "net4"),
      iface("hostdev", "52:54:00:00:01:06", "ignored0", "hostdev0"),
      iface("user", "52:54:00:00:01:07", undefined, "net6"),
      `<interface type='bridge'><mac address='52:54:00:00:01:08'/><source bridge='obr0'/><virtualport type='openvswitch'/><target dev='vnet7'/></interface>`,
    ].join("\n"),
  );
  const all = resolve(TYPES_XML, "defaults:\n  inbound: { average: 10mbit }\n").interfaces;

  test("keys are domain UUID + MAC; dev is the target", () => {
    assert.equal(all[0].key, `${UUID}/52:54:00:00:01:01`);
    assert.equal(all[0].domainName, "web1");
    assert.equal(all[0].domainUuid, UUID);
    assert.deepEqual(
      all.slice(0, 4).map((i) => i.dev),
      ["vnet0", "vnet1", "tap0", "macvtap0"],
    );
  });

  test("only direct (macvtap) interfaces are swapped", () => {
    assert.deepEqual(
      all.map((i) => i.swapped),
      [false, false, false, true, false, false, false, false],
    );
  });

  test("OVS ports are recognised by their virtualport", () => {
    assert.deepEqual(
      all.map((i) => i.ovs),
      [false, false, false, false, false, false, false, true],
    );
  });

  test("vhostuser, hostdev and user are not enforceable, with a reason, and have no dev", () => {
    for (const [n, type] of [
      [4, "vhostuser"],
      [5, "hostdev"],
      [6, "user"],
    ] as const) {
      const i = all[n];
      assert.equal(i.type, type);
      assert.ok(i.notEnforceable, `${type} is marked`);
      assert.match(i.notEnforceable, new RegExp(type));
      assert.equal(i.dev, undefined);
    }
    for (const n of [0, 1, 2, 3, 7]) assert.equal(all[n].notEnforceable, undefined);
  });

  test("an interface without a MAC gets a positional key", () => {
    const { interfaces } = resolve(domain("<interface type='user'/>"));
    assert.equal(interfaces[0].mac, "#0");
    assert.equal(interfaces[0].key, `${UUID}/#0`);
  });
});

describe("upload mode", () => {
  test("policy `upload: police` applies to XML limits on outbound only", () => {
    const { interfaces } = resolve(XML, "upload: police\n");
    const a = byMac(interfaces, M1);
    assert.equal(a.outbound?.mode, "police");
    assert.equal(a.inbound?.mode, "shape");
  });

  test("a direction's own mode beats the policy-wide upload mode", () => {
    const { interfaces } = resolve(
      XML,
      "upload: police\ndomains:\n  - name: web1\n    outbound: { average: 1mbit, mode: shape }\n",
    );
    assert.equal(byMac(interfaces, M3).outbound?.mode, "shape");
  });
});

describe("XML oddities", () => {
  test("peak below average in XML warns and uses the average", () => {
    const { interfaces, warnings } = resolve(
      domain(
        iface("bridge", M1, "vnet0", "net0", "<bandwidth><inbound average='1000' peak='500'/></bandwidth>"),
      ),
    );
    assert.equal(interfaces[0].inbound?.rateBitsPerSec, 8e6);
    assert.equal(interfaces[0].inbound?.ceilBitsPerSec, 8e6);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0], /peak 500 is below average 1000/);
    assert.match(warnings[0], new RegExp(M1));
  });

  test("peak or burst without average is ignored with a warning", () => {
    const { interfaces, warnings } = resolve(
      domain(
        iface("bridge", M1, "vnet0", "net0", "<bandwidth><outbound peak='500' burst='64'/></bandwidth>"),
      ),
    );
    assert.equal(interfaces[0].outbound, undefined);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0], /without average/);
  });

  test("metadata without average falls through to <bandwidth>", () => {
    const { interfaces, warnings } = resolve(
      domain(
        iface("bridge", M1, "vnet0", "net0", "<bandwidth><inbound average='1000'/></bandwidth>"),
        `<vq:interface mac="${M1}"><vq:inbound burst="64"/></vq:interface>`,
      ),
    );
    assert.equal(interfaces[0].inbound?.source, "bandwidth");
    assert.equal(warnings.length, 1);
  });

  test("the XML's warnings (foreign metadata) are passed on", () => {
    const xml = domain(iface("bridge", M1, "vnet0", "net0")).replace(
      "<devices>",
      `<metadata><x:qos xmlns:x="urn:example:virtqos"/></metadata><devices>`,
    );
    const { warnings } = resolve(xml);
    assert.equal(warnings.length, 1);
    assert.match(warnings[0], /urn:example:virtqos/);
  });

  test("metadata for a MAC the domain does not have is unused", () => {
    const { interfaces } = resolve(
      domain(
        iface("bridge", M1, "vnet0", "net0"),
        `<vq:interface mac="${M2}"><vq:inbound average="1"/></vq:interface>`,
      ),
    );
    assert.equal(interfaces[0].inbound, undefined);
  });
});
