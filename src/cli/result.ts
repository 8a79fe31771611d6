import { describeLimit, type ReconcileResult } from "../app/engine.js";
import { ERRORS, EXIT, formatDiagnostic, withFix } from "../core/errors.js";

// How `plan`, `apply` and `clear` report a reconcile: text, JSON and exit code.

export function exitFor(r: ReconcileResult): number {
  if (r.failure) return EXIT.FAILED;
  if (r.plan.problems.length) return EXIT.PARTIAL;
  return EXIT.OK;
}

export function summarise(r: ReconcileResult, dryRun: boolean): string {
  const lines: string[] = [];
  for (const d of r.desired) {
    const label = `${d.domainName} ${d.mac} ${d.dev ?? "-"} (${d.type})`;
    if (d.notEnforceable) {
      lines.push(`${label}: NOT ENFORCEABLE: ${d.notEnforceable}`);
      continue;
    }
    for (const dir of ["inbound", "outbound"] as const) {
      const l = d[dir];
      lines.push(`${label} ${dir}: ${l ? describeLimit(l) : "no limit"}`);
    }
  }
  for (const n of r.plan.notes) lines.push(`${n.level}: ${n.message}`);
  for (const p of r.plan.problems) lines.push(`error ${formatDiagnostic(p)}`);
  const ops = [
    ...r.rendered.ipPre.map((l) => `ip ${l}`),
    ...r.rendered.tc.map((l) => `tc ${l}`),
    ...r.rendered.ipPost.map((l) => `ip ${l}`),
    // `ovs: native`: one ovs-vsctl transaction (two when a port goes back to tc), its arguments as run.
    ...(r.ovsVsctl ?? []).map((args) => `ovs-vsctl ${args.map(shellWord).join(" ")}`),
  ];
  lines.push(ops.length ? `${dryRun ? "would run" : "ran"} ${ops.length} operation(s):` : "no change needed");
  for (const l of ops) lines.push(`  ${l}`);
  if (r.failure) {
    lines.push(`FAILED: ${r.failure.message}`);
    lines.push(r.failure.restored ? "previous state restored" : "ROLLBACK INCOMPLETE: run `virtqos status`");
  }
  return lines.join("\n");
}

export function resultJson(r: ReconcileResult) {
  return {
    applied: r.applied,
    interfaces: r.desired,
    // Diagnostics with the catalogue's fix (docs/errors.md): notes are warnings and infos, problems errors.
    notes: r.plan.notes.map(withFix),
    problems: r.plan.problems.map(withFix),
    operations: {
      ip: [...r.rendered.ipPre, ...r.rendered.ipPost],
      tc: r.rendered.tc,
      ...(r.ovsVsctl ? { ovsVsctl: r.ovsVsctl } : {}),
    },
    failure: r.failure && { ...r.failure, fix: ERRORS[r.failure.code].fix },
  };
}

/** An argument as a shell would need it to be typed again (for reading only: nothing runs this text). */
function shellWord(a: string): string {
  return /^[\w@%+=:,./{}-]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`;
}
