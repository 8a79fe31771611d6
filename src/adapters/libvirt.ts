/**
 * libvirt, through `virsh`: the domains (list, lookup, XML, virtqos's `<metadata>`) and the event stream.
 *
 * Why virsh and not a binding: npm has no maintained libvirt binding for Node 20 (`libvirt` 1.2.1 is
 * hooklift/node-libvirt, a NAN addon for node >= 0.10 that pulls in bluebird and has had no release in years;
 * `node-libvirt` and `libvirt-node` do not exist). virsh is in libvirt-clients, which every host running
 * libvirtd has; each call costs a process (~20-40 ms), cheap next to what the agent does per call.
 *
 * How virsh is run: argument arrays, never a shell, LC_ALL=C (the messages below are matched in English),
 * a timeout after which the child is SIGKILLed (COMMAND_KILLED), and output capped. With exactly one
 * argument after its options virsh parses that argument as a command line of its own (`;` separates
 * commands); only constant strings are ever passed that way (`list()`, `ping()`, the event loop), every
 * call carrying a name or XML has more arguments and is not re-parsed.
 *
 * Names and UUIDs: a domain is always passed as `--domain X` (a name starting with "-" is not an option).
 * virsh resolves X as an ID first when it is all digits, then as a UUID, then as a name: a domain named "5"
 * would be shadowed by the running domain with ID 5. So an all-digit name is first resolved to its UUID
 * through `list()`, and `lookup()` checks that what virsh found has the name or the UUID asked for. A UUID
 * (with or without dashes, any case) is looked up as a UUID; callers that hold one should use it (a
 * rename does not change it). Names cannot contain a newline (libvirt refuses them), which is what makes
 * virsh's line-based output parseable; everything else (spaces, quotes, UTF-8, tabs) is taken verbatim.
 *
 * Errors (virsh's stderr, `error: ...` lines, quoted in the message):
 * - virsh missing; "failed to connect to the hypervisor", "Failed to connect socket", "Connection refused",
 *   a connection lost mid-call; `ping()` not answered in time → LIBVIRT_UNAVAILABLE (503)
 * - "failed to get domain 'X'", "Domain not found" → DOMAIN_NOT_FOUND (404)
 * - "domain is not running" (a `--live` change of a stopped domain) → DOMAIN_NOT_RUNNING (409)
 * - any other call killed by its timeout → COMMAND_KILLED; anything else, or output that does not look
 *   like what the command prints → INTERNAL with virsh's message.
 *
 * virtqos's metadata: libvirt keeps one element per namespace URI (QOS_XMLNS) and writes it with the prefix
 * given as key ("virtqos"): `--set '<qos><interface .../></qos>'` is stored as
 * `<virtqos:qos xmlns:virtqos="https://virtqos.dev/xmlns/qos/1"><virtqos:interface .../></virtqos:qos>`,
 * which parseDomainXml reads. libvirt does not rewrite namespaces the element declares itself: a root in
 * another namespace is stored under our key but can never be found or removed through it again, so
 * setMetadata refuses any namespace declaration or prefix except a root `xmlns` equal to QOS_XMLNS (what
 * renderQosMetadata writes), which it drops. `virsh metadata` prints the element back without any namespace
 * (`<qos group="g">...`); getMetadata returns it as printed.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { StringDecoder } from "node:string_decoder";
import { XMLParser, XMLValidator } from "fast-xml-parser";
import { libvirtUri } from "../config.js";
import { QOS_XMLNS } from "../core/domain-xml.js";
import { VirtqosError } from "../core/errors.js";
import { CommandKilledError } from "./exec.js";

export interface DomainRef {
  name: string;
  uuid: string;
  /** As `virsh domstate` prints it: running, idle, paused, in shutdown, shut off, crashed, pmsuspended, no state. */
  state: string;
  /** Only while the domain runs. */
  id?: number;
}

export type LibvirtErrorCode = "LIBVIRT_UNAVAILABLE" | "DOMAIN_NOT_FOUND" | "DOMAIN_NOT_RUNNING" | "INTERNAL";

export class LibvirtError extends VirtqosError {
  constructor(code: LibvirtErrorCode, message: string) {
    super(code, message);
    this.name = "LibvirtError";
  }
}

/** The key (element prefix) virtqos's metadata is written with. */
export const METADATA_KEY = "virtqos";

const DEFAULT_TIMEOUT_MS = 15_000;
// dumpxml of a large guest is tens of KiB; anything near this is not virsh output we want to hold in memory.
const OUTPUT_CAP = 8 * 1024 * 1024;
const UUID_RE = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;

// virDomainState → the text `virsh domstate` prints for it (domstats gives only the number).
const STATES = ["no state", "running", "idle", "paused", "in shutdown", "shut off", "crashed", "pmsuspended"];

const UNAVAILABLE_RE =
  /failed to connect to the hypervisor|Failed to connect socket|Connection refused|no connection driver available|unable to connect to server|Disconnected from|client socket is closed|End of file while reading data|Cannot (?:recv|write) data|authentication (?:failed|unavailable)/i;
const NOT_FOUND_RE = /failed to get domain|Domain not found|no domain with matching/i;
const NOT_RUNNING_RE = /domain is not running/i;
const NO_METADATA_RE = /metadata not found|Requested metadata element is not present/i;

// ------------------------------------------------------------------------------------------ processes

interface VirshResult {
  code: number;
  stdout: string;
  stderr: string;
}

// virsh children still running, killed when this process exits: an event loop left behind would sit on
// libvirtd's connection until its next write hits the closed pipe, which may be never.
const live = new Set<ChildProcess>();
let exitHook = false;

function track(child: ChildProcess): void {
  live.add(child);
  child.once("close", () => live.delete(child));
  if (!exitHook) {
    exitHook = true;
    process.on("exit", () => {
      for (const c of live) kill(c);
    });
  }
}

/** SIGKILL a child that really runs (one whose spawn failed has no pid; see exec.ts's stop()). */
function kill(child: ChildProcess): void {
  if (child.pid === undefined || child.pid <= 0) return;
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill("SIGKILL");
}

function virshEnv(): NodeJS.ProcessEnv {
  return { ...process.env, LC_ALL: "C" };
}

function spawnVirsh(bin: string, args: string[]): ChildProcess {
  const child = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"], env: virshEnv() });
  track(child);
  return child;
}

function commandLine(bin: string, args: string[]): string {
  const line = [bin, ...args].join(" ");
  return line.length > 200 ? `${line.slice(0, 200)}...` : line;
}

function runVirsh(bin: string, args: string[], timeoutMs: number): Promise<VirshResult> {
  return new Promise((resolve, reject) => {
    const child = spawnVirsh(bin, args);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let size = 0;
    let failure: Error | undefined;
    // Our own timer rather than spawn's `timeout`: that one is cleared only on 'exit', which a binary that
    // does not exist never emits.
    const timer = setTimeout(() => {
      failure = new CommandKilledError(`\`${commandLine(bin, args)}\` was killed after ${timeoutMs} ms`);
      kill(child);
    }, timeoutMs);
    const collect = (into: Buffer[]) => (b: Buffer) => {
      size += b.length;
      if (size > OUTPUT_CAP) {
        failure ??= new LibvirtError(
          "INTERNAL",
          `\`${commandLine(bin, args)}\` printed more than ${OUTPUT_CAP} bytes; killed`,
        );
        kill(child);
        return;
      }
      into.push(b);
    };
    child.stdout?.on("data", collect(out));
    child.stderr?.on("data", collect(err));
    child.on("error", (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(
        e.code === "ENOENT"
          ? new LibvirtError("LIBVIRT_UNAVAILABLE", `${bin} is not installed or not on PATH`)
          : new LibvirtError("INTERNAL", `could not run ${bin}: ${e.message}`),
      );
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      if (failure) return reject(failure);
      if (signal) {
        return reject(new CommandKilledError(`\`${commandLine(bin, args)}\` was killed by ${signal}`));
      }
      resolve({
        code: code ?? 1,
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8"),
      });
    });
  });
}

/** virsh's `error: ...` lines, one line, printable, bounded: it ends up in logs and API answers. */
function virshError(stderr: string): string {
  const lines = stderr
    .split("\n")
    .map((l) => l.trim())
    .filter(Boolean);
  const errors = lines.filter((l) => l.startsWith("error: ")).map((l) => l.slice(7));
  const text = (errors.length ? errors : lines).join("; ") || "no message";
  // biome-ignore lint/suspicious/noControlCharactersInRegex: stripping them is the point
  const clean = text.replace(/[\u0000-\u001f\u007f]/g, " ");
  return clean.length > 500 ? `${clean.slice(0, 500)}...` : clean;
}

function classify(r: VirshResult, what: string): LibvirtError {
  const msg = virshError(r.stderr);
  if (UNAVAILABLE_RE.test(r.stderr)) return new LibvirtError("LIBVIRT_UNAVAILABLE", `${what}: ${msg}`);
  if (NOT_FOUND_RE.test(r.stderr)) return new LibvirtError("DOMAIN_NOT_FOUND", `${what}: ${msg}`);
  if (NOT_RUNNING_RE.test(r.stderr)) return new LibvirtError("DOMAIN_NOT_RUNNING", `${what}: ${msg}`);
  return new LibvirtError("INTERNAL", `${what}: virsh exited ${r.code}: ${msg}`);
}

function quote(s: string): string {
  return JSON.stringify(s.length > 200 ? `${s.slice(0, 200)}...` : s);
}

// ----------------------------------------------------------------------------------------- metadata

const metaParser = new XMLParser({
  ignoreAttributes: false,
  attributeNamePrefix: "@",
  preserveOrder: true,
  parseTagValue: false,
  parseAttributeValue: false,
});

type OrderedNode = Record<string, unknown> & { ":@"?: Record<string, string> };

/** Checks the element setMetadata writes and drops a root xmlns that names virtqos's namespace. */
function prepareMetadata(xml: string): string {
  const text = xml.trim();
  const bad = (why: string) =>
    new LibvirtError("INTERNAL", `virtqos <metadata> element refused (${why}): ${quote(text)}`);
  // Nothing before the root (no declaration, no comment): libvirt stores the element alone.
  if (!/^<qos[\s/>]/.test(text)) throw bad("it must start with <qos");
  const valid = XMLValidator.validate(text);
  if (valid !== true) throw bad(`malformed at line ${valid.err.line}: ${valid.err.msg}`);
  const nodes = (metaParser.parse(text) as OrderedNode[]).filter((n) => !("#text" in n));
  if (nodes.length !== 1) throw bad("it must be exactly one element");
  const walk = (node: OrderedNode, root: boolean): void => {
    for (const [key, value] of Object.entries(node)) {
      if (key === ":@" || key === "#text") continue;
      if (key.includes(":")) throw bad(`prefixed name <${key}>`);
      for (const attr of Object.keys(node[":@"] ?? {})) {
        const name = attr.slice(1);
        if (name.startsWith("xmlns:") || (name === "xmlns" && !root))
          throw bad(`namespace declaration ${name}`);
        if (name === "xmlns" && node[":@"]?.[attr] !== QOS_XMLNS) throw bad(`root in another namespace`);
        if (name.includes(":") && !name.startsWith("xmlns")) throw bad(`prefixed attribute ${name}`);
      }
      if (Array.isArray(value)) for (const child of value as OrderedNode[]) walk(child, false);
    }
  };
  const rootTag = Object.keys(nodes[0]).find((k) => k !== ":@");
  if (rootTag !== "qos") throw bad(`the element is <${rootTag}>, not <qos>`);
  walk(nodes[0], true);
  return dropRootXmlns(text);
}

/** libvirt puts the element in QOS_XMLNS itself; a default namespace left on the root shows up twice. */
function dropRootXmlns(text: string): string {
  const open = /^<[^\s/>]+/.exec(text);
  if (!open) return text;
  // Attribute by attribute, so an attribute value that happens to contain `xmlns="..."` is left alone.
  const attr = /\s+([^\s=/>]+)\s*=\s*("[^"]*"|'[^']*')/y;
  let out = open[0];
  let i = open[0].length;
  for (;;) {
    attr.lastIndex = i;
    const m = attr.exec(text);
    if (!m) break;
    if (!(m[1] === "xmlns" && m[2].slice(1, -1) === QOS_XMLNS)) out += m[0];
    i = attr.lastIndex;
  }
  return out + text.slice(i);
}

// -------------------------------------------------------------------------------------------- Virsh

export interface VirshOptions {
  /** Default: libvirtUri() ($VIRTQOS_LIBVIRT_URI, else qemu:///system). */
  uri?: string;
  /** Per call; default 15000. */
  timeoutMs?: number;
  /** The binary; default "virsh" on PATH. */
  virsh?: string;
}

export class Virsh {
  readonly uri: string;
  private readonly timeoutMs: number;
  private readonly bin: string;

  constructor(opts: VirshOptions = {}) {
    this.uri = libvirtUri(opts.uri);
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.bin = opts.virsh ?? "virsh";
  }

  private run(args: string[]): Promise<VirshResult> {
    return runVirsh(this.bin, ["-c", this.uri, ...args], this.timeoutMs);
  }

  private async ok(args: string[], what: string): Promise<string> {
    const r = await this.run(args);
    if (r.code !== 0) throw classify(r, what);
    return r.stdout;
  }

  /** Every domain, running or not, with its state; one virsh process (one connection) for all of them. */
  async list(): Promise<DomainRef[]> {
    const out = await this.ok(["list --all --uuid --id --name; domstats --state"], "list domains");
    const found: DomainRef[] = [];
    const states = new Map<string, number>();
    let current: string | undefined;
    for (const line of out.split("\n")) {
      // `list --uuid --id --name`: "UUID ID NAME", ID "-" when not running.
      const row = /^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}) (\d+|-) (.+)$/.exec(line);
      if (row) {
        const id = row[2] === "-" ? undefined : Number(row[2]);
        if (id !== undefined && !Number.isSafeInteger(id)) continue;
        found.push({ name: row[3], uuid: row[1], state: "", ...(id !== undefined ? { id } : {}) });
        continue;
      }
      // `domstats --state`: "Domain: 'NAME'" then indented "state.state=N".
      if (line.startsWith("Domain: '") && line.endsWith("'") && line.length > 10) {
        current = line.slice(9, -1);
        continue;
      }
      const st = /^\s+state\.state=(\d+)$/.exec(line);
      if (st && current !== undefined) states.set(current, Number(st[1]));
    }
    // A domain undefined between the two commands has no state: it is gone, leave it out.
    return found
      .filter((d) => states.has(d.name))
      .map((d) => ({ ...d, state: STATES[states.get(d.name) as number] ?? "no state" }));
  }

  /** DOMAIN_NOT_FOUND when no domain has that name or UUID. */
  async lookup(nameOrUuid: string): Promise<DomainRef> {
    checkRef(nameOrUuid);
    if (/^\d+$/.test(nameOrUuid)) return this.lookupDigits(nameOrUuid);
    const ref = await this.dominfo(nameOrUuid);
    if (!matches(ref, nameOrUuid)) {
      throw new LibvirtError(
        "DOMAIN_NOT_FOUND",
        `domain ${quote(nameOrUuid)}: virsh answered with domain ${quote(ref.name)} (${ref.uuid})`,
      );
    }
    return ref;
  }

  /** An all-digit name: virsh would take it for an ID, so find the UUID by name first. */
  private async lookupDigits(name: string): Promise<DomainRef> {
    const hit = (await this.list()).find((d) => d.name === name);
    if (!hit) throw new LibvirtError("DOMAIN_NOT_FOUND", `domain ${quote(name)}: no domain has that name`);
    return this.dominfo(hit.uuid);
  }

  private async dominfo(ref: string): Promise<DomainRef> {
    const out = await this.ok(["dominfo", "--domain", ref], `domain ${quote(ref)}`);
    const fields = new Map<string, string>();
    for (const line of out.split("\n")) {
      // "%-15s %s": labels are padded to 15 columns, so the value starts at 16 even if it starts with blanks.
      const m = /^([A-Za-z][A-Za-z ()]*):/.exec(line);
      if (!m) continue;
      const value = m[0].length <= 15 && line.length > 16 ? line.slice(16) : line.slice(m[0].length).trim();
      if (!fields.has(m[1])) fields.set(m[1], value);
    }
    const name = fields.get("Name");
    const uuid = fields.get("UUID")?.trim().toLowerCase();
    const state = fields.get("State")?.trim();
    const id = fields.get("Id")?.trim();
    if (!name || !uuid || !UUID_RE.test(uuid) || !state || !/^[a-z ]+$/.test(state)) {
      throw new LibvirtError("INTERNAL", `virsh dominfo ${quote(ref)}: unexpected output ${quote(out)}`);
    }
    const n = id && /^\d+$/.test(id) ? Number(id) : undefined;
    return { name, uuid, state, ...(n !== undefined && Number.isSafeInteger(n) ? { id: n } : {}) };
  }

  /** What to pass as --domain: the argument itself, or the UUID of an all-digit name. */
  private async target(nameOrUuid: string): Promise<string> {
    checkRef(nameOrUuid);
    return /^\d+$/.test(nameOrUuid) ? (await this.lookupDigits(nameOrUuid)).uuid : nameOrUuid;
  }

  /** The live XML of a running domain, else (or with `inactive`) the persistent definition. */
  async dumpXml(nameOrUuid: string, opts: { inactive?: boolean } = {}): Promise<string> {
    const dom = await this.target(nameOrUuid);
    const xml = await this.ok(
      ["dumpxml", ...(opts.inactive ? ["--inactive"] : []), "--domain", dom],
      `domain ${quote(nameOrUuid)}`,
    );
    if (!/^\s*<domain[\s>]/.test(xml) || !/<\/domain>\s*$/.test(xml)) {
      throw new LibvirtError("INTERNAL", `virsh dumpxml ${quote(nameOrUuid)}: not domain XML: ${quote(xml)}`);
    }
    return xml;
  }

  /**
   * Write (xml) or remove (undefined) virtqos's `<metadata>` element (namespace QOS_XMLNS, key "virtqos"),
   * in the running domain (`live`; DOMAIN_NOT_RUNNING if it is not), its persistent definition (`config`), or
   * both in one call. Removing an element that is not there is not an error.
   */
  async setMetadata(
    nameOrUuid: string,
    xml: string | undefined,
    opts: { live: boolean; config: boolean },
  ): Promise<void> {
    if (!opts.live && !opts.config) {
      throw new LibvirtError("INTERNAL", "setMetadata needs live, config or both");
    }
    const element = xml === undefined ? undefined : prepareMetadata(xml);
    const dom = await this.target(nameOrUuid);
    const args = ["metadata", "--domain", dom, "--uri", QOS_XMLNS, "--key", METADATA_KEY];
    args.push(...(element === undefined ? ["--remove"] : ["--set", element]));
    if (opts.live) args.push("--live");
    if (opts.config) args.push("--config");
    const r = await this.run(args);
    if (r.code === 0) return;
    if (element === undefined && NO_METADATA_RE.test(r.stderr)) return;
    throw classify(
      r,
      `${element === undefined ? "remove" : "write"} metadata of domain ${quote(nameOrUuid)}`,
    );
  }

  /**
   * virtqos's `<metadata>` element as virsh prints it (without namespace), undefined if there is none: of the
   * running domain, else (or with `inactive`) of the persistent definition.
   */
  async getMetadata(nameOrUuid: string, opts: { inactive?: boolean } = {}): Promise<string | undefined> {
    const dom = await this.target(nameOrUuid);
    // `virsh metadata` has no --inactive: --config reads the persistent definition.
    const r = await this.run([
      "metadata",
      "--domain",
      dom,
      "--uri",
      QOS_XMLNS,
      ...(opts.inactive ? ["--config"] : []),
    ]);
    if (r.code !== 0) {
      if (NO_METADATA_RE.test(r.stderr)) return undefined;
      throw classify(r, `read metadata of domain ${quote(nameOrUuid)}`);
    }
    const text = r.stdout.trim();
    if (!text.startsWith("<") || XMLValidator.validate(text) !== true) {
      throw new LibvirtError("INTERNAL", `virsh metadata ${quote(nameOrUuid)}: not XML: ${quote(text)}`);
    }
    return text;
  }

  /** Resolves once libvirtd answers on this URI; LIBVIRT_UNAVAILABLE otherwise (a timeout included). */
  async ping(): Promise<void> {
    let r: VirshResult;
    try {
      r = await this.run(["uri"]);
    } catch (e) {
      if (e instanceof CommandKilledError) {
        throw new LibvirtError("LIBVIRT_UNAVAILABLE", `${this.uri}: no answer within ${this.timeoutMs} ms`);
      }
      throw e;
    }
    if (r.code === 0 && r.stdout.trim() !== "") return;
    const e = classify(r, this.uri);
    throw e.code === "INTERNAL" ? new LibvirtError("LIBVIRT_UNAVAILABLE", e.message) : e;
  }
}

function checkRef(nameOrUuid: string): void {
  // libvirt refuses newlines in names; NUL cannot go through argv. Neither can name a domain.
  if (typeof nameOrUuid !== "string" || nameOrUuid === "" || /[\n\0]/.test(nameOrUuid)) {
    throw new LibvirtError(
      "DOMAIN_NOT_FOUND",
      `domain ${quote(String(nameOrUuid))}: not a domain name or UUID`,
    );
  }
}

function matches(ref: DomainRef, asked: string): boolean {
  if (ref.name === asked) return true;
  return UUID_RE.test(asked) && asked.replace(/-/g, "").toLowerCase() === ref.uuid.replace(/-/g, "");
}

// ------------------------------------------------------------------------------------------- events

export interface LibvirtEvent {
  /** ms since the epoch, when the line was read. */
  at: number;
  /** The domain's name. */
  domain: string;
  /** As virsh names it: "lifecycle", "metadata-change", "device-added", ... */
  kind: string;
  /** The rest of the line ("Started Booted"); continuation lines of multi-line events follow after "\n". */
  detail: string;
}

export interface EventWatch {
  close(): void;
  readonly connected: boolean;
}

/*
 * `virsh event --all --loop --timestamp` on libvirt 9.0, one sample per kind (measured here, or from
 * tools/virsh-domain-event.c where this host cannot produce it). Every event starts with
 * "<timestamp>: event '<kind>' for domain '<name>'"; the name is printed raw (quotes and all).
 *   lifecycle        2026-11-29 17:39:59.794+0000: event 'lifecycle' for domain 'vm1': Started Booted
 *                    ... Defined Added | Defined Updated | Defined Renamed | Undefined Removed | Undefined Renamed
 *                    ... Stopped Destroyed | Shutdown Finished after host request | Suspended Paused
 *                    ... Resumed Unpaused | Stopped Saved | Started Restored | Resumed Snapshot
 *                    migration (not reproducible on one host): Started Migrated, Stopped Migrated,
 *                    Suspended Migrated, Resumed Migrated, Resumed Post-copy
 *   metadata-change  ...: event 'metadata-change' for domain 'vm1': type element, uri https://virtqos.dev/xmlns/qos/1
 *                    ...: event 'metadata-change' for domain 'vm1': type title, uri <null>
 *                    one event for `virsh metadata --live --config`, one for --config alone (running or not),
 *                    one for --remove; nothing says live or config, nor what changed: read it back.
 *   device-added     ...: event 'device-added' for domain 'vm1': net1
 *   device-removed   ...: event 'device-removed' for domain 'vm1': input2
 *   device-removal-failed  ...: event 'device-removal-failed' for domain 'vm1': net1
 *   migration-iteration    ...: event 'migration-iteration' for domain 'vm1': iteration: '2'
 *   agent-lifecycle  ...: event 'agent-lifecycle' for domain 'vm1': state: 'connected' reason: 'channel event'
 *   reboot           ...: event 'reboot' for domain 'vm1'                    (also control-error, pm-*)
 *   rtc-change, watchdog, balloon-change: ...: <number> | <action> | <n>KiB
 *   tray-change      ...: event 'tray-change' for domain 'vm1' disk ide0-0-0: opened
 *   disk-change      ...: event 'disk-change' for domain 'vm1' disk ALIAS: OLD -> NEW: changed
 *   io-error, block-job, graphics, block-threshold: free text after ": " (paths, addresses)
 *   tunable / job-completed (multi-line: the header ends with ":", parameters follow, tab-indented;
 *   memory-failure and nic-mac-change print theirs without the tab):
 *                    ...: event 'tunable' for domain 'vm1':
 *                    	cputune.vcpupin0: 0
 * When libvirtd goes away virsh prints "error: Disconnected from qemu:///system due to end of file" on
 * stderr and "events received: N" on stdout, and exits 1.
 */

export interface ParsedEventLine {
  kind: string;
  domain: string;
  detail: string;
  /** The header ends with ":" and nothing after it: parameter lines follow (tunable, job-completed...). */
  continued: boolean;
}

const TIMESTAMP_RE = /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}\.\d{3}[+-]\d{4}: /;
const HEADER_RE = /^event '([^'\s]+)' for domain '/;

/**
 * How each kind's text after the name's closing quote looks, and how many quotes that text holds: the name
 * ends at that many quotes plus one from the end of the line, so a name holding "': " cannot fool the
 * parser. Kinds with free text (paths, addresses) and unknown kinds end the name at the first quote that is
 * followed by ": ", ":", " disk " or the end of the line (a name holding "': " is then cut short).
 */
const SHAPES: Record<string, { quotes: number; shape: RegExp }> = {
  lifecycle: { quotes: 0, shape: /^: [A-Za-z]+ [A-Za-z/ -]+$/ },
  "metadata-change": { quotes: 0, shape: /^: type [a-z ]+, uri \S+$/ },
  "device-added": { quotes: 0, shape: /^: \S+$/ },
  "device-removed": { quotes: 0, shape: /^: \S+$/ },
  "device-removal-failed": { quotes: 0, shape: /^: \S+$/ },
  reboot: { quotes: 0, shape: /^$/ },
  "control-error": { quotes: 0, shape: /^$/ },
  "pm-wakeup": { quotes: 0, shape: /^$/ },
  "pm-suspend": { quotes: 0, shape: /^$/ },
  "pm-suspend-disk": { quotes: 0, shape: /^$/ },
  "rtc-change": { quotes: 0, shape: /^: -?\d+$/ },
  watchdog: { quotes: 0, shape: /^: [a-z-]+$/ },
  "balloon-change": { quotes: 0, shape: /^: \d+KiB$/ },
  "tray-change": { quotes: 0, shape: /^ disk \S+: [a-z]+$/ },
  "migration-iteration": { quotes: 2, shape: /^: iteration: '-?\d+'$/ },
  "agent-lifecycle": { quotes: 4, shape: /^: state: '[^']*' reason: '[^']*'$/ },
  tunable: { quotes: 0, shape: /^:$/ },
  "job-completed": { quotes: 0, shape: /^:$/ },
  "memory-failure": { quotes: 0, shape: /^:$/ },
  "memory-device-size-change": { quotes: 0, shape: /^:$/ },
  "nic-mac-change": { quotes: 0, shape: /^:$/ },
};

/** One header line of `virsh event` output (with or without --timestamp); undefined if it is not one. */
export function parseEventLine(line: string): ParsedEventLine | undefined {
  const body = line.replace(TIMESTAMP_RE, "");
  const head = HEADER_RE.exec(body);
  if (!head) return undefined;
  const kind = head[1];
  const rest = body.slice(head[0].length);
  const split = splitFixed(rest, SHAPES[kind]) ?? splitFirst(rest);
  if (!split || split.name === "") return undefined;
  const { name, suffix } = split;
  let detail: string;
  if (suffix === "" || suffix === ":") detail = "";
  else if (suffix.startsWith(": ")) detail = suffix.slice(2);
  else detail = suffix.slice(1);
  return { kind, domain: name, detail, continued: suffix === ":" };
}

function splitFixed(
  rest: string,
  rule: { quotes: number; shape: RegExp } | undefined,
): { name: string; suffix: string } | undefined {
  if (!rule) return undefined;
  let at = rest.length;
  for (let i = 0; i <= rule.quotes; i++) {
    at = rest.lastIndexOf("'", at - 1);
    if (at < 0) return undefined;
  }
  const suffix = rest.slice(at + 1);
  return rule.shape.test(suffix) ? { name: rest.slice(0, at), suffix } : undefined;
}

function splitFirst(rest: string): { name: string; suffix: string } | undefined {
  for (let at = rest.indexOf("'"); at >= 0; at = rest.indexOf("'", at + 1)) {
    const suffix = rest.slice(at + 1);
    if (suffix === "" || suffix === ":" || suffix.startsWith(": ") || suffix.startsWith(" disk ")) {
      return { name: rest.slice(0, at), suffix };
    }
  }
  return undefined;
}

// A multi-line event's parameter lines come in the same write as its header (virsh prints each event with
// one call), so they are normally in the same chunk; this is how long a header waits for more after that.
const CONTINUATION_WAIT_MS = 20;
const MAX_CONTINUATION_LINES = 256;
const MAX_LINE = 64 * 1024;

/** Turns virsh's stdout into events: lines are split, headers parsed, parameter lines attached. */
class EventStream {
  private partial = "";
  private readonly decoder = new StringDecoder("utf8");
  private pending: { event: LibvirtEvent; continued: boolean; lines: string[] } | undefined;
  private timer: NodeJS.Timeout | undefined;
  /** Lines before the first event header (the `uri` answer that tells the connection is up). */
  private preamble: ((line: string) => void) | undefined;

  constructor(
    private readonly emit: (e: LibvirtEvent) => void,
    preamble: (line: string) => void,
  ) {
    this.preamble = preamble;
  }

  push(chunk: Buffer): void {
    const at = Date.now();
    const lines = (this.partial + this.decoder.write(chunk)).split("\n");
    this.partial = lines.pop() ?? "";
    if (this.partial.length > MAX_LINE) this.partial = "";
    for (const line of lines) this.line(line, at);
    // A single-line event is complete once the chunk that carried it ends on a line boundary.
    if (this.partial === "" && this.pending && !this.pending.continued) this.flush();
    else if (this.pending && !this.timer) this.timer = setTimeout(() => this.flush(), CONTINUATION_WAIT_MS);
  }

  end(): void {
    if (this.partial !== "") this.line(this.partial, Date.now());
    this.partial = "";
    this.flush();
  }

  private line(raw: string, at: number): void {
    const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    const parsed = parseEventLine(line);
    if (parsed) {
      this.flush();
      this.preamble = undefined;
      this.pending = {
        event: { at, domain: parsed.domain, kind: parsed.kind, detail: parsed.detail },
        continued: parsed.continued,
        lines: [],
      };
      return;
    }
    if (line.trim() === "") return;
    // virsh's summary when the loop ends.
    if (/^events received: \d+$/.test(line)) this.flush();
    else if (this.preamble) this.preamble(line);
    else if (this.pending && this.pending.lines.length < MAX_CONTINUATION_LINES) {
      this.pending.lines.push(line.replace(/^\t/, ""));
    }
  }

  private flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const p = this.pending;
    this.pending = undefined;
    if (!p) return;
    const detail = [p.event.detail, ...p.lines].filter((s) => s !== "").join("\n");
    this.emit({ ...p.event, detail });
  }
}

const BACKOFF_MIN_MS = 250;
const BACKOFF_MAX_MS = 5_000;
// A connection that lasted this long was a real one: the next failure starts the back-off afresh.
const STABLE_MS = 5_000;
// Constant, so it may go through virsh's own command-line parser (one argument): `uri` answers only once
// the connection is open, which is the signal that the stream is up; `event` registers on that same
// connection right after.
const EVENT_COMMAND = "uri; event --all --loop --timestamp";

export interface WatchEventsOptions {
  uri?: string;
  virsh?: string;
  onEvent(e: LibvirtEvent): void;
  /**
   * true once the stream is up, false (with virsh's error) when it drops or cannot be opened; called on
   * changes only. Events in the gap are lost: resync (list the domains) on every true.
   */
  onState?(connected: boolean, error?: string): void;
  /** How long virsh may take to open the connection before it is killed and retried; default 15000. */
  connectTimeoutMs?: number;
}

/**
 * Follows libvirt's domain events with `virsh -c URI event --all --loop --timestamp`, restarted with
 * back-off (250 ms doubling to 5 s) whenever it exits: libvirtd restarted, not up yet, the connection lost
 * (virsh's keepalive, 5 s x 3, notices a hung daemon). "Up" is the `uri` answer virsh prints on the same
 * connection just before it registers for events.
 */
export function watchEvents(opts: WatchEventsOptions): EventWatch {
  const uri = libvirtUri(opts.uri);
  const bin = opts.virsh ?? "virsh";
  const connectTimeoutMs = opts.connectTimeoutMs ?? DEFAULT_TIMEOUT_MS;
  let closed = false;
  let connected = false;
  let reported: boolean | undefined;
  let child: ChildProcess | undefined;
  let retry: NodeJS.Timeout | undefined;
  let delay = BACKOFF_MIN_MS;

  // The caller's callbacks must not be able to kill the watch (or, thrown from a stream handler, the
  // process): what they throw becomes a warning.
  const safely = (what: string, fn: () => void): void => {
    try {
      fn();
    } catch (e) {
      process.emitWarning(`libvirt event watch: ${what} threw: ${(e as Error)?.stack ?? String(e)}`);
    }
  };
  const report = (up: boolean, error?: string): void => {
    if (reported === up) return;
    reported = up;
    safely("onState", () => opts.onState?.(up, error));
  };

  const start = (): void => {
    retry = undefined;
    if (closed) return;
    let upSince = 0;
    let stderr = "";
    let spawnError: string | undefined;
    const c = spawnVirsh(bin, ["-c", uri, "-k", "5", "-K", "3", EVENT_COMMAND]);
    child = c;
    const connectTimer = setTimeout(() => {
      spawnError = `no answer from ${uri} within ${connectTimeoutMs} ms`;
      kill(c);
    }, connectTimeoutMs);
    const stream = new EventStream(
      (e) => {
        // A multi-line event's wait may end after close().
        if (!closed) safely("onEvent", () => opts.onEvent(e));
      },
      () => {
        if (upSince) return;
        clearTimeout(connectTimer);
        upSince = Date.now();
        connected = true;
        report(true);
      },
    );
    c.stdout?.on("data", (b: Buffer) => {
      if (!closed) stream.push(b);
    });
    c.stderr?.on("data", (b: Buffer) => {
      stderr = (stderr + b.toString("utf8")).slice(-4096);
    });
    c.on("error", (e: NodeJS.ErrnoException) => {
      spawnError = e.code === "ENOENT" ? `${bin} is not installed or not on PATH` : e.message;
    });
    c.on("close", (code, signal) => {
      clearTimeout(connectTimer);
      if (child === c) child = undefined;
      if (closed) return;
      stream.end();
      connected = false;
      const error =
        spawnError ?? (stderr.trim() ? virshError(stderr) : `virsh exited ${signal ?? `with ${code}`}`);
      report(false, error);
      if (upSince && Date.now() - upSince >= STABLE_MS) delay = BACKOFF_MIN_MS;
      retry = setTimeout(start, delay);
      delay = Math.min(delay * 2, BACKOFF_MAX_MS);
    });
  };

  start();
  return {
    close() {
      closed = true;
      connected = false;
      if (retry) clearTimeout(retry);
      retry = undefined;
      if (child) kill(child);
      child = undefined;
    },
    get connected() {
      return connected;
    },
  };
}
