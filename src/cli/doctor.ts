import type { Command } from "commander";
import { processRunner } from "../adapters/exec.js";
import { loadPolicy } from "../adapters/policy-load.js";
import { probeCapabilities } from "../adapters/probe.js";
import { policyPath } from "../config.js";
import { EXIT } from "../core/errors.js";
import { chooseLeaf, describeLeaf } from "../core/recipe.js";
import { globals, out } from "./context.js";

// `virtqos doctor`: probe the kernel (never the cache) and say which recipe virtqos will use, and why.

export function addDoctorCommand(program: Command): void {
  program
    .command("doctor")
    .description(
      "probe the kernel and iproute2: qdiscs, classifiers, actions, IFB, and which recipe virtqos will use",
    )
    .option("--json", "machine-readable output")
    .action(async (opts: { json?: boolean }) => {
      const g = globals(program, opts.json);
      const runner = processRunner({ netns: g.netns });
      const report = await probeCapabilities(runner);
      let policyLeaf: "auto" | "fq_codel" | "sfq" | "fifo" = "auto";
      let upload: "shape" | "police" = "shape";
      try {
        const p = loadPolicy(policyPath(g.config));
        policyLeaf = p.leaf;
        upload = p.upload;
      } catch {
        // doctor reports the kernel; policy problems are `virtqos plan`'s to report.
      }
      const leaf = chooseLeaf(1_250_000, report, policyLeaf);
      const uploadRecipe =
        upload === "police"
          ? report.actions.includes("police")
            ? "police (u32 + police action on the tap's ingress): drops above the rate, as libvirt does"
            : "police requested but the police action is missing: `virtqos apply` will refuse (POLICE_UNAVAILABLE)"
          : report.ifb && report.actions.includes("mirred")
            ? `shape: ${report.qdiscs.includes("clsact") ? "clsact" : "ingress"} hook + ${report.classifiers.includes("matchall") ? "matchall" : "u32 match-all"} + mirred redirect to an IFB carrying HTB`
            : "UNAVAILABLE: needs IFB and the mirred action";
      const recipe = {
        download: `HTB root 7651: on the tap (class 7651:1, burst/cburst from rate) + leaf ${describeLeaf(leaf.leaf)} (at 10 Mbit/s)`,
        leafReason: leaf.why,
        upload: uploadRecipe,
        allProtocols:
          "filters use `protocol all` and HTB's default class: IPv4, IPv6, ARP and others are shaped alike",
      };
      const ok = report.qdiscs.includes("htb") && report.ifb && report.actions.includes("mirred");
      const text = [
        `iproute2 ${report.iproute2}, kernel ${report.kernel}`,
        `qdiscs:      ${report.qdiscs.join(", ") || "-"}`,
        `classifiers: ${report.classifiers.join(", ") || "-"}`,
        `actions:     ${report.actions.join(", ") || "-"}`,
        `ifb:         ${report.ifb ? "yes" : "NO"}`,
        `missing:     ${Object.keys(report.errors).join(", ") || "nothing"}`,
        "",
        `guest download (inbound): ${recipe.download}`,
        `  leaf choice: ${recipe.leafReason}`,
        `guest upload (outbound):  ${recipe.upload}`,
        `protocols: ${recipe.allProtocols}`,
        "",
        ok
          ? "verdict: virtqos can shape both directions here"
          : "verdict: PROBLEMS above; see docs/errors.md",
      ].join("\n");
      out(g, { ...report, recipe, ok }, text);
      process.exitCode = ok ? EXIT.OK : EXIT.FAILED;
    });
}
