import type {
  AgentService,
  AuditEntry,
  AuditQuery,
  Authenticator,
  DirectionView,
  DomainSummary,
  Health,
  InterfaceView,
  LimitView,
  LiveChange,
  Persist,
  Principal,
  RateInput,
} from "../../src/agent/types.js";
import { VirtqosError } from "../../src/core/errors.js";
import {
  LIBVIRT_BURST_UNIT_BYTES,
  LIBVIRT_RATE_UNIT_BITS_PER_SEC,
  parseRate,
  parseSize,
} from "../../src/core/units.js";

// An in-memory AgentService and Authenticator for the API's tests (and anyone testing a client against the
// API): three domains, the errors a real service throws for missing or unshapeable things, and a record of
// every call so tests can check what reached the service.

export type ServiceMethod = keyof AgentService;

export interface RecordedCall {
  method: ServiceMethod;
  args: unknown[];
  /** The code of the error the call threw, or "plain" for an error without one; undefined when it returned. */
  threw?: string;
}

interface FakeInterface {
  index: number;
  mac: string;
  dev?: string;
  alias?: string;
  type: string;
  configured: { inbound?: LimitView; outbound?: LimitView };
  live: { inbound?: LimitView | null; outbound?: LimitView | null };
}

interface FakeDomain {
  name: string;
  uuid: string;
  state: string;
  interfaces: FakeInterface[];
}

export const FAKE_UUIDS = {
  web1: "11111111-1111-4111-8111-111111111111",
  db1: "22222222-2222-4222-8222-222222222222",
  batch7: "33333333-3333-4333-8333-333333333333",
} as const;

const limit = (rateBitsPerSec: number, burstBytes?: number): LimitView => ({
  rateBitsPerSec,
  ceilBitsPerSec: rateBitsPerSec,
  ...(burstBytes !== undefined ? { burstBytes } : {}),
  source: "policy",
});

function initialDomains(): FakeDomain[] {
  return [
    {
      name: "web-1",
      uuid: FAKE_UUIDS.web1,
      state: "running",
      interfaces: [
        {
          index: 1,
          mac: "52:54:00:00:00:01",
          dev: "vnet0",
          alias: "net0",
          type: "bridge",
          configured: { inbound: limit(10_000_000, 128_000), outbound: limit(5_000_000) },
          live: {},
        },
        { index: 2, mac: "52:54:00:00:00:02", dev: "vnet1", type: "network", configured: {}, live: {} },
      ],
    },
    {
      name: "db-1",
      uuid: FAKE_UUIDS.db1,
      state: "running",
      interfaces: [
        // No host netdev: what tc cannot shape (NOT_SHAPEABLE).
        { index: 1, mac: "52:54:00:00:01:01", type: "vhostuser", configured: {}, live: {} },
        { index: 2, mac: "52:54:00:00:01:02", dev: "vnet2", type: "bridge", configured: {}, live: {} },
      ],
    },
    {
      name: "batch-7",
      uuid: FAKE_UUIDS.batch7,
      state: "shut off",
      interfaces: [{ index: 1, mac: "52:54:00:00:02:01", type: "network", configured: {}, live: {} }],
    },
  ];
}

const UNSHAPEABLE_TYPES = ["vhostuser", "hostdev", "user"];

const rateBits = (v: number | string) =>
  typeof v === "number" ? v * LIBVIRT_RATE_UNIT_BITS_PER_SEC : parseRate(v);
const sizeBytes = (v: number | string) =>
  typeof v === "number" ? v * LIBVIRT_BURST_UNIT_BYTES : parseSize(v);

function toLimit(r: RateInput): LimitView | null {
  const rate = rateBits(r.average);
  if (rate === 0) return null;
  const view: LimitView = {
    rateBitsPerSec: rate,
    ceilBitsPerSec: r.peak !== undefined ? Math.max(rate, rateBits(r.peak)) : rate,
    source: "live",
  };
  if (r.burst !== undefined) view.burstBytes = sizeBytes(r.burst);
  if (r.floor !== undefined) view.floorBitsPerSec = rateBits(r.floor);
  return view;
}

function direction(configured: LimitView | undefined, live: LimitView | null | undefined): DirectionView {
  const d: DirectionView = {};
  if (configured) d.configured = { ...configured };
  if (live !== undefined) d.live = live === null ? null : { ...live };
  const inForce = live === undefined ? configured : live;
  if (inForce) d.inForce = { ...inForce };
  return d;
}

function view(i: FakeInterface): InterfaceView {
  const v: InterfaceView = {
    index: i.index,
    mac: i.mac,
    type: i.type,
    inbound: direction(i.configured.inbound, i.live.inbound),
    outbound: direction(i.configured.outbound, i.live.outbound),
  };
  if (i.dev !== undefined) {
    v.dev = i.dev;
    v.matches = true;
    v.counters = { txBytes: 1000 * i.index, rxBytes: 500 * i.index };
  }
  if (i.alias !== undefined) v.alias = i.alias;
  return v;
}

const AUDIT: AuditEntry[] = [
  {
    id: 1,
    at: "2025-01-01T00:00:00.000Z",
    who: "operator",
    door: "api",
    domainUuid: FAKE_UUIDS.web1,
    domainName: "web-1",
    iface: "52:54:00:00:00:01",
    before: null,
    after: { inbound: { rateBitsPerSec: 8_000_000 } },
    result: "ok",
  },
  {
    id: 2,
    at: "2025-02-01T00:00:00.000Z",
    who: "admin",
    door: "nova",
    domainUuid: FAKE_UUIDS.db1,
    domainName: "db-1",
    result: "refused",
    code: "NOT_SHAPEABLE",
    message: "vhostuser",
  },
  { id: 3, at: "2025-03-01T00:00:00.000Z", who: "uid:0", door: "agent", result: "ok" },
];

export class FakeAgentService implements AgentService {
  readonly calls: RecordedCall[] = [];
  private readonly domains = initialDomains();
  private readonly failures = new Map<ServiceMethod, unknown>();
  private readonly answers = new Map<ServiceMethod, unknown>();

  /** The next call of `method` throws `error` (once). */
  failNext(method: ServiceMethod, error: unknown): void {
    this.failures.set(method, error);
  }

  /** The next call of `method` returns `value` (once), after its usual checks. */
  answerNext(method: ServiceMethod, value: unknown): void {
    this.answers.set(method, value);
  }

  private run<T>(method: ServiceMethod, args: unknown[], body: () => T): T {
    const call: RecordedCall = { method, args };
    this.calls.push(call);
    try {
      const failure = this.failures.get(method);
      if (failure !== undefined) {
        this.failures.delete(method);
        throw failure;
      }
      const result = body();
      if (this.answers.has(method)) {
        const answer = this.answers.get(method) as T;
        this.answers.delete(method);
        return answer;
      }
      return result;
    } catch (e) {
      const code = (e as { code?: unknown } | null)?.code;
      call.threw = typeof code === "string" ? code : "plain";
      throw e;
    }
  }

  /** A domain by name or UUID (any case), as libvirt looks them up. */
  lookup(domain: string): FakeDomain | undefined {
    const lower = domain.toLowerCase();
    return this.domains.find((d) => d.name === domain || d.uuid === lower);
  }

  private domain(domain: string): FakeDomain {
    const d = this.lookup(domain);
    if (!d) throw new VirtqosError("DOMAIN_NOT_FOUND", `no domain ${JSON.stringify(domain)}`);
    return d;
  }

  private iface(d: FakeDomain, iface: string): FakeInterface {
    const i = d.interfaces.find(
      (x) =>
        x.dev === iface || x.mac === iface.toLowerCase() || x.alias === iface || String(x.index) === iface,
    );
    if (!i) {
      throw new VirtqosError("INTERFACE_NOT_FOUND", `${d.name} has no interface ${JSON.stringify(iface)}`);
    }
    return i;
  }

  private summary(d: FakeDomain): DomainSummary {
    return { name: d.name, uuid: d.uuid, state: d.state, interfaces: d.interfaces.length };
  }

  private changeable(d: FakeDomain, i: FakeInterface, persist: Persist): void {
    if (persist !== "config" && d.state !== "running") {
      throw new VirtqosError("DOMAIN_NOT_RUNNING", `${d.name} is ${d.state}`);
    }
    if (UNSHAPEABLE_TYPES.includes(i.type)) {
      throw new VirtqosError("NOT_SHAPEABLE", `${d.name} interface ${i.index} is ${i.type}: no host device`);
    }
  }

  listDomains(): Promise<DomainSummary[]> {
    return this.runAsync("listDomains", [], () => this.domains.map((d) => this.summary(d)));
  }

  findDomain(domain: string): Promise<DomainSummary> {
    return this.runAsync("findDomain", [domain], () => this.summary(this.domain(domain)));
  }

  getInterfaces(domain: string): Promise<InterfaceView[]> {
    return this.runAsync("getInterfaces", [domain], () => this.domain(domain).interfaces.map(view));
  }

  setInterface(domain: string, iface: string, change: LiveChange, who: Principal): Promise<InterfaceView> {
    return this.runAsync("setInterface", [domain, iface, change, who], () => {
      const d = this.domain(domain);
      const i = this.iface(d, iface);
      this.changeable(d, i, change.persist);
      if (change.inbound) i.live.inbound = toLimit(change.inbound);
      if (change.outbound) i.live.outbound = toLimit(change.outbound);
      return view(i);
    });
  }

  clearInterface(domain: string, iface: string, persist: Persist, who: Principal): Promise<InterfaceView> {
    return this.runAsync("clearInterface", [domain, iface, persist, who], () => {
      const d = this.domain(domain);
      const i = this.iface(d, iface);
      this.changeable(d, i, persist);
      i.live = {};
      return view(i);
    });
  }

  audit(query: AuditQuery): AuditEntry[] {
    return this.run("audit", [query], () => {
      let entries = AUDIT.filter(
        (e) => query.domain === undefined || e.domainName === query.domain || e.domainUuid === query.domain,
      );
      if (query.since !== undefined) entries = entries.filter((e) => e.at >= (query.since as string));
      return entries.slice(0, query.limit ?? entries.length).map((e) => ({ ...e }));
    });
  }

  health(): Health {
    return this.run("health", [], () => ({
      libvirt: { connected: true, uri: "qemu:///system", since: "2025-01-01T00:00:00.000Z" },
      lastReconcile: { at: "2025-01-01T00:00:01.000Z", ok: true },
      queueDepth: 0,
      uptimeSeconds: 42,
    }));
  }

  private runAsync<T>(method: ServiceMethod, args: unknown[], body: () => T): Promise<T> {
    try {
      return Promise.resolve(this.run(method, args, body));
    } catch (e) {
      return Promise.reject(e);
    }
  }
}

/** Tokens of the fake authenticator and who they are. */
export const FAKE_TOKENS: Readonly<Record<string, Principal>> = {
  "tok-admin": { name: "admin", role: "admin", via: "token" },
  "tok-operator": { name: "operator", role: "operator", via: "token" },
  "tok-reader": { name: "reader", role: "reader", via: "token" },
  "tok-scoped": { name: "web-operator", role: "operator", domains: ["web-*"], via: "token" },
  "tok-scoped-admin": { name: "web-admin", role: "admin", domains: ["web-?"], via: "token" },
};

/** `Authorization: Bearer <token>` or `X-Auth-Token: <token>`, looked up in FAKE_TOKENS. */
export function fakeAuthenticator(tokens: Readonly<Record<string, Principal>> = FAKE_TOKENS): Authenticator {
  return {
    authenticate(headers) {
      const authz = headers.authorization;
      const x = headers["x-auth-token"];
      let token: string | undefined;
      if (typeof authz === "string") token = /^Bearer\s+(\S+)$/i.exec(authz)?.[1];
      else if (typeof x === "string") token = x;
      if (token === undefined || !Object.hasOwn(tokens, token)) return undefined;
      const p = tokens[token];
      return { ...p, ...(p.domains ? { domains: [...p.domains] } : {}) };
    },
  };
}
