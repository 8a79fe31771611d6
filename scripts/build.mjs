// Bundle the CLI and the hook into single ES modules: a bundled script starts in a fraction of the time an
// unbundled tsx run takes, and the hook runs on every guest start.
import { copyFileSync, rmSync, writeFileSync } from "node:fs";
import { build } from "esbuild";

const common = {
  bundle: true,
  platform: "node",
  target: "node20",
  format: "esm",
  sourcemap: "linked",
  logLevel: "warning",
  // Bundled CommonJS dependencies call require(); give ESM output one.
  banner: {
    js: "import { createRequire as __vqCreateRequire } from 'node:module'; const require = __vqCreateRequire(import.meta.url);",
  },
};

// The policy parser (yaml, typebox: 60 % of the hook's code) is only needed when the policy file changed
// since the last guest start: the hook bundle leaves it out and loads dist/policy.cjs on a cache miss.
const policyApart = {
  name: "policy-apart",
  setup(b) {
    b.onResolve({ filter: /core\/policy\.js$/ }, (args) =>
      args.kind === "dynamic-import" ? { path: "./policy.cjs", external: true } : undefined,
    );
  },
};

rmSync("dist/hook", { recursive: true, force: true });
await Promise.all([
  // The agent's HTTP server and SQLite store stay in node_modules (better-sqlite3 is a native addon) and are
  // imported only by the commands that use them, so the other commands do not load them.
  build({
    ...common,
    entryPoints: ["src/main.ts"],
    outfile: "dist/virtqos.mjs",
    external: ["better-sqlite3", "fastify"],
  }),
  // The hook: one minified CommonJS bundle, run by dist/hook-loader.cjs with V8's code cache.
  build({
    ...common,
    banner: undefined,
    format: "cjs",
    entryPoints: ["src/hook-main.ts"],
    outfile: "dist/hook.cjs",
    minify: true,
    plugins: [policyApart],
    // import() of dist/policy.cjs as require(): the loader runs this bundle through vm.Script, which has no
    // dynamic-import callback.
    supported: { "dynamic-import": false },
  }),
  build({
    ...common,
    banner: undefined,
    format: "cjs",
    entryPoints: ["src/core/policy.ts"],
    outfile: "dist/policy.cjs",
    minify: true,
  }),
]);
copyFileSync("scripts/hook-loader.cjs", "dist/hook-loader.cjs");
// A stable ESM entry point too (benchmarks and older installs import it).
writeFileSync("dist/hook.mjs", 'import "./hook-loader.cjs";\n');
