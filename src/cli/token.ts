import { type Command, Option } from "commander";
import {
  domainGlobProblem,
  ROLES,
  roleProblem,
  type TokenInfo,
  TokenStore,
  tokenNameProblem,
} from "../agent/auth.js";
import type { Role } from "../agent/types.js";
import { formatTable } from "../app/table.js";
import { tokensPath } from "../config.js";
import { VirtqosError } from "../core/errors.js";
import { type Globals, globals, out } from "./context.js";

// `virtqos token ...`: the agent's bearer tokens in $VIRTQOS_TOKENS (/etc/virtqos/tokens.yaml). A running
// agent sees additions and revocations at its next request; no restart.

const when = (iso: string) => iso.replace("T", " ").replace(/\.\d+Z$/, "Z");

function usage(argument: string, problem: string): VirtqosError {
  return new VirtqosError("USAGE", `${argument}: ${problem}`);
}

function tokenJson(t: TokenInfo) {
  return { name: t.name, role: t.role, domains: t.domains ?? null, created: t.created };
}

function listTable(tokens: TokenInfo[]): string {
  if (!tokens.length) {
    return `no tokens in ${tokensPath()}; create one with \`virtqos token add NAME --role ${ROLES.join("|")}\``;
  }
  return formatTable([
    ["NAME", "ROLE", "DOMAINS", "CREATED"],
    ...tokens.map((t) => [t.name, t.role, t.domains?.join(",") ?? "(every domain)", when(t.created)]),
  ]);
}

export function addTokenCommands(program: Command): void {
  const token = program
    .command("token")
    .description(
      "the agent's bearer tokens: roles reader (reads), operator (live changes), admin (everything, the audit log)",
    );

  const g = (json: boolean | undefined): Globals => globals(program, json);

  token
    .command("add")
    .description("create a token and print it once; only its SHA-256 hash is stored")
    .argument("<name>", "the token's name (who the audit log says made a change)")
    .addOption(
      new Option("--role <role>", `what the token may do: ${ROLES.join(", ")}`).makeOptionMandatory(),
    )
    .option(
      "--domains <glob...>",
      "limit the token to domains whose name matches one of these globs (* any run, ? one character)",
    )
    .option("--json", "machine-readable output")
    .action((name: string, opts: { role: string; domains?: string[]; json?: boolean }) => {
      const nameProblem = tokenNameProblem(name);
      if (nameProblem) throw usage("NAME", nameProblem);
      const badRole = roleProblem(opts.role);
      if (badRole) throw usage("--role", badRole);
      for (const glob of opts.domains ?? []) {
        const problem = domainGlobProblem(glob);
        if (problem) throw usage("--domains", problem);
      }
      const file = tokensPath();
      const { token: text, entry } = new TokenStore(file).add(name, opts.role as Role, opts.domains);
      out(
        g(opts.json),
        { name: entry.name, role: entry.role, domains: entry.domains ?? null, token: text },
        text,
      );
      if (!opts.json) {
        process.stderr.write(
          `token "${entry.name}" (${entry.role}, ${entry.domains ? `domains ${entry.domains.join(", ")}` : "every domain"}) added to ${file}.\n` +
            "This is the only time it is shown: virtqos stores its SHA-256 hash, not the token. Copy it now.\n",
        );
      }
    });

  token
    .command("list")
    .description("every token's name, role, domains and creation time (never the tokens themselves)")
    .option("--json", "machine-readable output")
    .action((opts: { json?: boolean }) => {
      const tokens = new TokenStore(tokensPath()).list();
      out(g(opts.json), { tokens: tokens.map(tokenJson) }, listTable(tokens));
    });

  token
    .command("revoke")
    .description("delete a token; a running agent refuses it from its next request on")
    .argument("<name>", "the token's name (`virtqos token list`)")
    .option("--json", "machine-readable output")
    .action((name: string, opts: { json?: boolean }) => {
      const file = tokensPath();
      new TokenStore(file).revoke(name);
      out(g(opts.json), { revoked: name }, `token "${name}" revoked (removed from ${file})`);
    });
}
