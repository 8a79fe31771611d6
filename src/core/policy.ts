// The policy lives in src/core/policy/ (index.ts); this path stays for the modules that import it from here.
export * from "./policy/index.js";
