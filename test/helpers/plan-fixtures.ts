// Small hand-made inputs for the planner's unit tests (test/unit/plan-*.test.ts): desired interfaces, observed
// devices and links, without going through domain XML.
import type { DesiredInterface, DirectionLimit } from "../../src/core/model.js";
import type { Observed } from "../../src/core/plan/index.js";
import type {
  ObservedDevice,
  ObservedFilter,
  ObservedLink,
  ObservedQdisc,
} from "../../src/core/tc/normalise.js";

export const UUID = "6d0e4a6c-5b0f-4c1e-9d7a-1f2e3d4c5b6a";
export const MAC = "52:54:00:00:00:01";

export const limit = (mbit: number, extra: Partial<DirectionLimit> = {}): DirectionLimit => ({
  rateBitsPerSec: mbit * 1e6,
  ceilBitsPerSec: mbit * 1e6,
  mode: "shape",
  source: "bandwidth",
  ...extra,
});

export function iface(extra: Partial<DesiredInterface> = {}): DesiredInterface {
  return {
    key: `${UUID}/${MAC}`,
    domainName: "web1",
    domainUuid: UUID,
    mac: MAC,
    type: "bridge",
    dev: "vnet1",
    swapped: false,
    ovs: false,
    ...extra,
  };
}

export const link = (name: string, extra: Partial<ObservedLink> = {}): ObservedLink => ({
  name,
  ifindex: 10 + name.length,
  up: true,
  ...extra,
});

export const links = (...list: ObservedLink[]) => new Map(list.map((l) => [l.name, l]));

export const noqueue: ObservedQdisc = { kind: "noqueue", handle: "0:", parent: "root", options: {} };
export const clsact: ObservedQdisc = { kind: "clsact", handle: "ffff:", parent: "ffff:fff1", options: {} };

export const device = (dev: string, extra: Partial<ObservedDevice> = {}): ObservedDevice => ({
  dev,
  qdiscs: [noqueue],
  classes: [],
  filters: [],
  ...extra,
});

export const hookFilter = (extra: Partial<ObservedFilter>): ObservedFilter => ({
  hook: "ingress",
  prio: 64000,
  protocol: "all",
  kind: "u32",
  handle: "800::800",
  matches: ["0/0@0"],
  ...extra,
});

export function observed(devices: ObservedDevice[], extraLinks: ObservedLink[] = []): Observed {
  return {
    links: links(...devices.map((d) => link(d.dev)), ...extraLinks),
    devices: new Map(devices.map((d) => [d.dev, d])),
    records: [],
  };
}
