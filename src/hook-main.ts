import { runHook } from "./hook.js";

// Entry point of the installed libvirt hook (/etc/libvirt/hooks/qemu.d/virtqos): argv is
// <domain> <operation> <sub-operation> <extra>, the domain XML is on stdin. Kept apart from the CLI so the
// hook loads nothing it does not need (no commander, no lab).

const chunks: Buffer[] = [];
for await (const c of process.stdin) chunks.push(c as Buffer);
const result = await runHook(process.argv.slice(2), Buffer.concat(chunks).toString("utf8"));
if (result.stdout) process.stdout.write(result.stdout);
process.exitCode = result.exitCode;
