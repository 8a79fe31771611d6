// Bundle the CLI and the hook into single ES modules: a bundled script starts in a fraction of the time an
// unbundled tsx run takes, and the hook runs on every guest start.
import { writeFileSync } from "node:fs";
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

await Promise.all([
  build({ ...common, entryPoints: ["src/main.ts"], outfile: "dist/virtqos.mjs" }),
  // The hook: minified and split, so the policy parser (YAML + schema) is only loaded on a policy-cache miss.
  build({
    ...common,
    entryPoints: { hook: "src/hook-main.ts" },
    outdir: "dist/hook",
    outExtension: { ".js": ".mjs" },
    splitting: true,
    minify: true,
  }),
]);
// A stable entry point for the installed hook script and the benchmarks.
writeFileSync("dist/hook.mjs", 'import "./hook/hook.mjs";\n');
