import { readFileSync } from "node:fs";

/**
 * The kernel boot: per-boot caches (probed capabilities) are keyed by it, and a transaction tells "the host
 * rebooted" from "a process died" by it. VIRTQOS_BOOT_ID lets tests simulate a reboot.
 */
export function readBootId(): string {
  if (process.env.VIRTQOS_BOOT_ID) return process.env.VIRTQOS_BOOT_ID;
  try {
    return readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  } catch {
    return "unknown";
  }
}
