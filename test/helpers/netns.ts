import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { processRunner, type Runner } from "../../src/adapters/exec.js";
import { createLogger } from "../../src/adapters/log.js";
import { probeCapabilities } from "../../src/adapters/probe.js";
import { type EngineContext, type ReconcileResult, reconcile } from "../../src/app/engine.js";
import { parseDomainXml } from "../../src/core/domain-xml.js";
import { emptyPolicy, type Policy, parsePolicy } from "../../src/core/policy.js";
import type { Capabilities } from "../../src/core/recipe.js";
import { run } from "../../src/lab/exec.js";
import { type CreateLabOptions, createLab, type Lab, type LabGuest } from "../../src/lab/topology.js";

// Shared plumbing for the namespace tests: a real engine against a lab's host namespace, a private run dir.

export const isRoot = process.getuid?.() === 0;
export const SKIP_NOT_ROOT = isRoot ? false : "needs root: builds network namespaces and runs tc";

export interface Harness {
  ctx: EngineContext;
  runDir: string;
  runner: Runner;
  caps: Capabilities;
  cleanup(): void;
}

export async function harness(lab: Lab, caps?: Capabilities): Promise<Harness> {
  const runDir = mkdtempSync(join(tmpdir(), "virtqos-test-"));
  const runner = processRunner({ netns: lab.hostNs });
  const probed = caps ?? (await probeCapabilities(runner));
  return {
    runDir,
    runner,
    caps: probed,
    ctx: {
      runner,
      runDir,
      log: createLogger({ level: "debug", target: "silent" }),
      caps: probed,
      who: { uid: process.getuid?.() ?? -1, user: "test", door: "test" },
    },
    cleanup: () => rmSync(runDir, { recursive: true, force: true }),
  };
}

/** A fresh lab and a harness on its host namespace (caps probed there unless given); closeLab removes both. */
export async function openLab(
  opts: CreateLabOptions,
  caps?: Capabilities,
): Promise<{ lab: Lab; h: Harness }> {
  const lab = await createLab(opts);
  return { lab, h: await harness(lab, caps) };
}

/** Destroy a lab and its harness's run dir; either may be missing (a before() hook that failed half-way). */
export async function closeLab(lab: Lab | undefined, h: Harness | undefined): Promise<void> {
  await lab?.destroy();
  h?.cleanup();
}

export interface IfaceSpec {
  guest: LabGuest;
  type?: "bridge" | "network" | "ethernet";
  bridge?: string;
  /** libvirt units: kB/s (1 = 8 kbit/s), burst KiB. */
  inbound?: { average: number; peak?: number; burst?: number };
  outbound?: { average: number; peak?: number; burst?: number };
}

let uuidCounter = 0;
export function uuidFor(name: string): string {
  const hex = Buffer.from(`${name}-${process.pid}-${uuidCounter++}`)
    .toString("hex")
    .padEnd(32, "0")
    .slice(0, 32);
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}

const attrs = (r: { average: number; peak?: number; burst?: number }) =>
  Object.entries(r)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}='${v}'`)
    .join(" ");

/** Domain XML as libvirt passes it at `start begin` for a guest whose "tap" is a lab veth. */
export function domainXml(name: string, uuid: string, ifaces: IfaceSpec[], metadata = ""): string {
  const devices = ifaces
    .map((i) => {
      const type = i.type ?? "bridge";
      const source = type === "ethernet" ? "" : `<source bridge='${i.bridge ?? "br0"}'/>`;
      const bw =
        i.inbound || i.outbound
          ? `<bandwidth>${i.inbound ? `<inbound ${attrs(i.inbound)}/>` : ""}${i.outbound ? `<outbound ${attrs(i.outbound)}/>` : ""}</bandwidth>`
          : "";
      return `<interface type='${type}'><mac address='${i.guest.mac}'/>${source}<target dev='${i.guest.tap}'/>${bw}<model type='virtio'/></interface>`;
    })
    .join("\n    ");
  return `<domain type='kvm' id='1'>\n  <name>${name}</name>\n  <uuid>${uuid}</uuid>\n  ${metadata ? `<metadata>${metadata}</metadata>` : ""}\n  <devices>\n    ${devices}\n  </devices>\n</domain>\n`;
}

export async function applyXml(
  h: Harness,
  xmls: string[],
  policy: Policy = emptyPolicy(),
  extra: { scope?: string[] | "all"; caps?: Capabilities } = {},
): Promise<ReconcileResult> {
  const domains = xmls.map(parseDomainXml);
  return reconcile(
    { ...h.ctx, caps: extra.caps ?? h.caps },
    { domains, policy, scope: extra.scope ?? domains.map((d) => d.uuid), sweep: true },
  );
}

export async function removeDomain(h: Harness, uuid: string): Promise<ReconcileResult> {
  return reconcile(h.ctx, { domains: [], policy: emptyPolicy(), scope: [uuid], sweep: true });
}

export function policy(text: string): Policy {
  return parsePolicy(text, "test-policy.yaml");
}

/** Everything tc says about a device, for before/after comparisons. */
export async function tcDump(ns: string, dev: string): Promise<string> {
  const parts: string[] = [];
  for (const args of [
    ["qdisc", "show", "dev", dev],
    ["-d", "class", "show", "dev", dev],
    ["filter", "show", "dev", dev, "ingress"],
    ["filter", "show", "dev", dev, "egress"],
  ]) {
    const r = await run("tc", ["-n", ns, ...args], { allowFail: true });
    parts.push(r.stdout.replace(/ (installed|used|firstused) \d+ sec/g, ""));
  }
  return parts.join("---\n");
}

/**
 * A tcDump() with the kernel's own choices taken out, for "is this the same configuration" comparisons:
 * action indexes and auto-assigned u32 table numbers are handed out per object created (a re-created
 * redirect gets new ones), and qdiscs and classes are listed in creation order.
 */
export function normaliseTcDump(text: string): string {
  const parts = text
    .replace(/\tindex \d+ ref \d+ bind \d+/g, "\tindex N")
    .replace(/fh 8[0-9a-f]{2}:/g, "fh 8xx:")
    .replace(/key ht 8[0-9a-f]{2} /g, "key ht 8xx ")
    .split("---\n");
  return parts.map((p, i) => (i < 2 ? p.split("\n").sort().join("\n") : p)).join("---\n");
}

export async function ifbsIn(ns: string): Promise<string[]> {
  const r = await run("ip", ["-n", ns, "-j", "link", "show", "type", "ifb"]);
  return (JSON.parse(r.stdout || "[]") as { ifname: string }[])
    .map((l) => l.ifname)
    .filter((n) => n.startsWith("vq"));
}
