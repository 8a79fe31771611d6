/**
 * Helpers for test/e2e/libvirt-adapter.test.ts: guest XML for names makeDomainXml refuses (spaces, quotes,
 * UTF-8: the adapter must cope with whatever libvirt accepts), a recorder for watchEvents, and stand-in
 * virsh scripts for what a real libvirtd cannot be made to do on demand (refuse forever, hang, split lines).
 */
import { chmod, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { LibvirtEvent } from "../../src/adapters/libvirt.js";
import { xmlAttr } from "./libvirt-env.js";

/** The smallest TCG guest (see makeDomainXml) with one unattached tap, under any name libvirt accepts. */
export function guestXml(name: string, mac: string): string {
  return (
    "<domain type='qemu'>\n" +
    `  <name>${xmlAttr(name)}</name>\n` +
    "  <memory unit='MiB'>64</memory>\n" +
    "  <vcpu>1</vcpu>\n" +
    "  <os><type arch='x86_64' machine='pc'>hvm</type></os>\n" +
    "  <on_poweroff>destroy</on_poweroff>\n" +
    "  <on_reboot>destroy</on_reboot>\n" +
    "  <on_crash>destroy</on_crash>\n" +
    "  <devices>\n" +
    "    <controller type='usb' model='none'/>\n" +
    `    <interface type='ethernet'><mac address='${xmlAttr(mac)}'/><model type='virtio'/></interface>\n` +
    "    <memballoon model='none'/>\n" +
    "  </devices>\n" +
    "</domain>\n"
  );
}

export interface StateChange {
  at: number;
  connected: boolean;
  error?: string;
}

/** Collects what a watch reports and lets a test wait for a given event or state. */
export class WatchRecorder {
  readonly events: LibvirtEvent[] = [];
  readonly states: StateChange[] = [];
  private waiters: Array<() => void> = [];

  onEvent = (e: LibvirtEvent): void => {
    this.events.push(e);
    this.wake();
  };

  onState = (connected: boolean, error?: string): void => {
    this.states.push({ at: Date.now(), connected, ...(error !== undefined ? { error } : {}) });
    this.wake();
  };

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** The first event (at or after index `from`) that `pred` accepts; rejects after `timeoutMs`. */
  async event(pred: (e: LibvirtEvent) => boolean, timeoutMs: number, from = 0): Promise<LibvirtEvent> {
    return this.until(() => this.events.slice(from).find(pred), timeoutMs, "event");
  }

  /** The first state change (at or after index `from`) with this value. */
  async state(connected: boolean, timeoutMs: number, from = 0): Promise<StateChange> {
    return this.until(
      () => this.states.slice(from).find((s) => s.connected === connected),
      timeoutMs,
      `onState(${connected})`,
    );
  }

  private until<T>(look: () => T | undefined, timeoutMs: number, what: string): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const hit = look();
        if (hit !== undefined) {
          resolve(hit);
          return;
        }
        const left = deadline - Date.now();
        if (left <= 0) {
          const seen = this.events.map((e) => `${e.kind} ${JSON.stringify(e.domain)} ${e.detail}`);
          reject(new Error(`no ${what} within ${timeoutMs} ms; events seen: ${seen.join(" | ")}`));
          return;
        }
        const timer = setTimeout(check, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          check();
        });
      };
      check();
    });
  }
}

let fakeDir: string | undefined;

/**
 * An executable standing in for virsh: `body` is a POSIX sh script. Commands that wait must `exec` (a
 * killed sh would leave its child holding the output pipe open).
 */
export async function fakeVirsh(name: string, body: string): Promise<string> {
  fakeDir ??= await mkdtemp(join(tmpdir(), "vqla-fake-"));
  const path = join(fakeDir, name);
  await writeFile(path, `#!/bin/sh\n${body}\n`, { mode: 0o700 });
  await chmod(path, 0o700);
  return path;
}

/** A file in the fake virsh directory (for scripts that log their invocations). */
export async function fakePath(name: string): Promise<string> {
  fakeDir ??= await mkdtemp(join(tmpdir(), "vqla-fake-"));
  return join(fakeDir, name);
}

export async function removeFakes(): Promise<void> {
  if (fakeDir) await rm(fakeDir, { recursive: true, force: true });
  fakeDir = undefined;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
