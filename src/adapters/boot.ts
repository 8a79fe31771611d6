import { readFileSync } from "node:fs";
import { bootIdOverride } from "../config.js";

/**
 * The kernel boot: per-boot caches (probed capabilities) are keyed by it, and a transaction tells "the host
 * rebooted" from "a process died" by it. VIRTQOS_BOOT_ID lets tests simulate a reboot.
 */
export function readBootId(): string {
  const override = bootIdOverride();
  if (override) return override;
  try {
    return readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim();
  } catch {
    return "unknown";
  }
}
