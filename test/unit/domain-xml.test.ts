import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { describe, test } from "node:test";
import { DomainXmlError, normaliseMac, parseDomainXml, QOS_XMLNS } from "../../src/core/domain-xml.js";

const FIXTURES = new URL("../fixtures/libvirt-9.0/", import.meta.url);
const fixture = (name: string) => readFileSync(new URL(name, FIXTURES), "utf8");

const CLIFF_UUID = "237c8139-1b4e-423f-8846-a22fc3e350d3";
const JASON_UUID = "a4e00d26-390e-41a1-935e-10edc413232f";

/** A minimal domain around the given <devices> and <metadata> content. */
function domainXml(devices: string, metadata = ""): string {
  return `<domain type='qemu'>
  <name>t1</name>
  <uuid>11111111-2222-3333-4444-555555555555</uuid>
  ${metadata ? `<metadata>${metadata}</metadata>` : ""}
  <devices>
${devices}
  </devices>
</domain>`;
}

describe("libvirt 9.0 hook fixtures", () => {
  const files = readdirSync(FIXTURES).filter((f) => f.endsWith(".xml"));

  test("the fixture directory holds both domains at every hook phase", () => {
    assert.equal(files.length, 10);
  });

  for (const file of files) {
    test(`${file} parses`, () => {
      const d = parseDomainXml(fixture(file));
      if (file.startsWith("cliff")) {
        assert.equal(d.name, "cliff");
        assert.equal(d.uuid, CLIFF_UUID);
        assert.deepEqual(
          d.interfaces.map((i) => [i.type, i.mac]),
          [
            ["bridge", "52:54:00:00:00:01"],
            ["ethernet", "52:54:00:00:00:02"],
          ],
        );
        assert.equal(d.interfaces[0].sourceBridge, "br0");
        assert.deepEqual(d.warnings, []);
      } else {
        assert.equal(d.name, "jason");
        assert.equal(d.uuid, JASON_UUID);
        assert.deepEqual(
          d.interfaces.map((i) => [i.type, i.mac]),
          [
            ["network", "52:54:00:00:01:01"],
            ["direct", "52:54:00:00:01:02"],
            ["bridge", "52:54:00:00:01:03"],
            ["ethernet", "52:54:00:00:01:04"],
          ],
        );
        assert.equal(d.interfaces[0].sourceNetwork, "lab");
        assert.equal(d.interfaces[1].sourceDev, "uplinkA");
        assert.equal(d.interfaces[2].sourceBridge, "obr0");
        assert.equal(d.interfaces[2].virtualportType, "openvswitch", "OVS virtualport detected");
        assert.equal(d.interfaces[0].virtualportType, undefined);
      }
      assert.deepEqual(
        d.interfaces.map((i) => i.index),
        d.interfaces.map((_, n) => n),
      );
      for (const i of d.interfaces) assert.equal(i.bandwidth, undefined, "the fixtures carry no <bandwidth>");
    });
  }

  test("jason: auto-named taps exist only while the guest runs (start/started), not at prepare/stopped/release", () => {
    const devs = (phase: string) =>
      parseDomainXml(fixture(`jason-${phase}.xml`)).interfaces.map((i) => i.targetDev);
    assert.deepEqual(devs("start-begin"), ["vnet1", "macvtap0", "vnet2", "vnet3"]);
    assert.deepEqual(devs("started-begin"), ["vnet1", "macvtap0", "vnet2", "vnet3"]);
    for (const phase of ["prepare-begin", "stopped-end", "release-end"]) {
      assert.deepEqual(devs(phase), [undefined, undefined, undefined, undefined], phase);
    }
  });

  test("jason: aliases appear once the guest is defined live", () => {
    const d = parseDomainXml(fixture("jason-started-begin.xml"));
    assert.deepEqual(
      d.interfaces.map((i) => i.alias),
      ["net0", "net1", "net2", "net3"],
    );
    assert.deepEqual(
      parseDomainXml(fixture("jason-prepare-begin.xml")).interfaces.map((i) => i.alias),
      [undefined, undefined, undefined, undefined],
    );
  });

  test("jason: the live network interface names its bridge", () => {
    const i = parseDomainXml(fixture("jason-started-begin.xml")).interfaces[0];
    assert.equal(i.sourceNetwork, "lab");
    assert.equal(i.sourceBridge, "virbr-lab");
  });

  test("cliff: requested tap names are kept; the managed ethernet tap has no name at release", () => {
    const devs = (phase: string) =>
      parseDomainXml(fixture(`cliff-${phase}.xml`)).interfaces.map((i) => i.targetDev);
    for (const phase of ["prepare-begin", "start-begin", "started-begin", "stopped-end"]) {
      assert.deepEqual(devs(phase), ["tap-cliff0", "tap-cliff1"], phase);
    }
    assert.deepEqual(devs("release-end"), ["tap-cliff0", undefined]);
  });

  test("jason: a foreign-namespace <qos> in <metadata> is ignored with a warning", () => {
    for (const phase of ["prepare-begin", "start-begin", "started-begin", "stopped-end", "release-end"]) {
      const d = parseDomainXml(fixture(`jason-${phase}.xml`));
      assert.deepEqual(d.metadata, [], phase);
      assert.equal(d.metadataGroup, undefined);
      assert.equal(d.warnings.length, 1, phase);
      assert.match(d.warnings[0], /urn:example:virtqos/);
      assert.ok(d.warnings[0].includes(QOS_XMLNS));
      assert.match(d.warnings[0], /ignored/);
    }
  });
});

describe("virtqos metadata", () => {
  test("our namespace is matched by URI whatever the prefix", () => {
    for (const prefix of ["vq", "virtqos", "x"]) {
      const d = parseDomainXml(
        domainXml(
          "",
          `<${prefix}:qos xmlns:${prefix}="${QOS_XMLNS}" group="tenant-a">
            <${prefix}:interface mac="52:54:00:AA:BB:01" group="web">
              <${prefix}:inbound average="1000" peak="2000" burst="256"/>
              <${prefix}:outbound average="500" floor="100"/>
            </${prefix}:interface>
            <${prefix}:interface mac="52:54:00:aa:bb:02">
              <${prefix}:outbound average="125"/>
            </${prefix}:interface>
          </${prefix}:qos>`,
        ),
      );
      assert.deepEqual(d.warnings, [], prefix);
      assert.equal(d.metadataGroup, "tenant-a");
      assert.deepEqual(d.metadata, [
        {
          mac: "52:54:00:aa:bb:01",
          inbound: { average: 1000, peak: 2000, burst: 256 },
          outbound: { average: 500, floor: 100 },
          group: "web",
        },
        { mac: "52:54:00:aa:bb:02", inbound: undefined, outbound: { average: 125 }, group: undefined },
      ]);
    }
  });

  test('the default-namespace form <qos xmlns="...">', () => {
    const d = parseDomainXml(
      domainXml(
        "",
        `<qos xmlns="${QOS_XMLNS}"><interface mac="52:54:00:00:00:09"><inbound average="3750" burst="64"/></interface></qos>`,
      ),
    );
    assert.deepEqual(d.warnings, []);
    assert.deepEqual(d.metadata, [
      {
        mac: "52:54:00:00:00:09",
        inbound: { average: 3750, burst: 64 },
        outbound: undefined,
        group: undefined,
      },
    ]);
  });

  test("a foreign <qos> next to ours: ours is used, the other warned about", () => {
    const d = parseDomainXml(
      domainXml(
        "",
        `<other:qos xmlns:other="urn:example:virtqos"><other:interface mac="52:54:00:00:00:01"><other:inbound average="1"/></other:interface></other:qos>
         <vq:qos xmlns:vq="${QOS_XMLNS}"><vq:interface mac="52:54:00:00:00:01"><vq:inbound average="2"/></vq:interface></vq:qos>`,
      ),
    );
    assert.deepEqual(
      d.metadata.map((m) => m.inbound),
      [{ average: 2 }],
    );
    assert.equal(d.warnings.length, 1);
    assert.match(d.warnings[0], /urn:example:virtqos/);
  });

  test("a <qos> with no namespace at all is not ours", () => {
    const d = parseDomainXml(
      domainXml("", `<qos><interface mac="52:54:00:00:00:01"><inbound average="1"/></interface></qos>`),
    );
    assert.deepEqual(d.metadata, []);
    assert.equal(d.warnings.length, 1);
    assert.match(d.warnings[0], /\(none\)/);
  });

  test("other applications' metadata (not <qos>) is ignored silently", () => {
    const d = parseDomainXml(
      domainXml(
        "",
        `<libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0"><libosinfo:os id="http://debian.org/debian/12"/></libosinfo:libosinfo>`,
      ),
    );
    assert.deepEqual(d.metadata, []);
    assert.deepEqual(d.warnings, []);
  });

  test("an element in our namespace that is not <qos> is warned about", () => {
    const d = parseDomainXml(domainXml("", `<vq:limits xmlns:vq="${QOS_XMLNS}"/>`));
    assert.deepEqual(d.metadata, []);
    assert.equal(d.warnings.length, 1);
    assert.match(d.warnings[0], /not <qos>/);
  });

  test("a metadata interface without a valid MAC is skipped with a warning", () => {
    const d = parseDomainXml(
      domainXml(
        "",
        `<vq:qos xmlns:vq="${QOS_XMLNS}"><vq:interface mac="nope"><vq:inbound average="1"/></vq:interface></vq:qos>`,
      ),
    );
    assert.deepEqual(d.metadata, []);
    assert.equal(d.warnings.length, 1);
    assert.match(d.warnings[0], /mac/);
  });
});

describe("<bandwidth>", () => {
  test("inbound and outbound attributes are read in libvirt units", () => {
    const d = parseDomainXml(
      domainXml(`<interface type='bridge'>
        <mac address='52:54:00:00:00:01'/>
        <source bridge='br0'/>
        <target dev='vnet0'/>
        <bandwidth>
          <inbound average='1000' peak='5000' burst='1024' floor='200'/>
          <outbound average='128'/>
        </bandwidth>
      </interface>`),
    );
    assert.deepEqual(d.interfaces[0].bandwidth, {
      inbound: { average: 1000, peak: 5000, burst: 1024, floor: 200 },
      outbound: { average: 128 },
    });
    assert.deepEqual(d.warnings, []);
  });

  test("non-integer attributes are dropped with a warning each", () => {
    const d = parseDomainXml(
      domainXml(`<interface type='bridge'>
        <mac address='52:54:00:00:00:01'/>
        <bandwidth>
          <inbound average='1000.5' peak='2000'/>
          <outbound average='30mbit' burst='-1'/>
        </bandwidth>
      </interface>`),
    );
    assert.deepEqual(d.interfaces[0].bandwidth, { inbound: { peak: 2000 }, outbound: undefined });
    assert.equal(d.warnings.length, 3);
    assert.match(d.warnings[0], /average="1000\.5" is not a whole number/);
    assert.match(d.warnings[1], /average="30mbit"/);
    assert.match(d.warnings[2], /burst="-1"/);
    for (const w of d.warnings) assert.match(w, /52:54:00:00:00:01/);
  });

  test("an empty <bandwidth/> yields no limits", () => {
    const d = parseDomainXml(
      domainXml(`<interface type='network'><mac address='52:54:00:00:00:01'/><bandwidth/></interface>`),
    );
    assert.equal(d.interfaces[0].bandwidth?.inbound, undefined);
    assert.equal(d.interfaces[0].bandwidth?.outbound, undefined);
  });
});

describe("interfaces", () => {
  test("MACs are normalised to lower case; invalid MACs become undefined", () => {
    const d = parseDomainXml(
      domainXml(`<interface type='bridge'><mac address='52:54:00:AB:CD:EF'/></interface>
        <interface type='bridge'><mac address='52-54-00-ab-cd-ef'/></interface>
        <interface type='user'/>`),
    );
    assert.deepEqual(
      d.interfaces.map((i) => i.mac),
      ["52:54:00:ab:cd:ef", undefined, undefined],
    );
    assert.deepEqual(
      d.interfaces.map((i) => i.type),
      ["bridge", "bridge", "user"],
    );
  });

  test("an interface without a type attribute is 'unknown'", () => {
    const d = parseDomainXml(domainXml(`<interface><mac address='52:54:00:00:00:01'/></interface>`));
    assert.equal(d.interfaces[0].type, "unknown");
  });

  test("a domain without devices has no interfaces", () => {
    const d = parseDomainXml(`<domain><name>x</name><uuid>11111111222233334444555555555555</uuid></domain>`);
    assert.deepEqual(d.interfaces, []);
    assert.equal(d.uuid, "11111111222233334444555555555555");
  });

  test("the UUID is lower-cased", () => {
    const d = parseDomainXml(
      `<domain><name>x</name><uuid>A4E00D26-390E-41A1-935E-10EDC413232F</uuid></domain>`,
    );
    assert.equal(d.uuid, JASON_UUID);
  });

  test("normaliseMac", () => {
    assert.equal(normaliseMac(" 52:54:00:AA:bb:01 "), "52:54:00:aa:bb:01");
    assert.equal(normaliseMac("52:54:00:aa:bb"), undefined);
    assert.equal(normaliseMac(undefined), undefined);
  });
});

describe("invalid domain XML", () => {
  function xmlError(xml: string): DomainXmlError {
    try {
      parseDomainXml(xml);
    } catch (e) {
      assert.ok(e instanceof DomainXmlError, `expected DomainXmlError, got ${String(e)}`);
      assert.equal(e.code, "DOMAIN_XML_INVALID");
      return e;
    }
    assert.fail("expected DomainXmlError");
  }

  test("malformed XML names the line", () => {
    const e = xmlError(`<domain type='qemu'>
  <name>x</name>
  <uuid>11111111-2222-3333-4444-555555555555</uuid>
  <devices>
    <interface type='bridge'>
  </devices>
</domain>`);
    assert.match(e.message, /malformed at line \d+/);
    const line = Number(/line (\d+)/.exec(e.message)?.[1]);
    assert.ok(line >= 5 && line <= 6, `line ${line} should point at the mismatched tag (5 or 6)`);
  });

  test("an unclosed attribute quote names its line", () => {
    const e = xmlError(`<domain>\n<name>x</name>\n<uuid a='1>y</uuid>\n</domain>`);
    assert.match(e.message, /line 3/);
  });

  test("no <domain> root", () => {
    assert.match(xmlError(`<network><name>x</name></network>`).message, /no <domain>/);
  });

  test("missing <name>", () => {
    assert.match(
      xmlError(`<domain><uuid>11111111-2222-3333-4444-555555555555</uuid></domain>`).message,
      /<name>/,
    );
  });

  test("missing or invalid <uuid>", () => {
    assert.match(xmlError(`<domain><name>x</name></domain>`).message, /uuid/);
    assert.match(xmlError(`<domain><name>x</name><uuid>not-a-uuid</uuid></domain>`).message, /not a UUID/);
  });
});
