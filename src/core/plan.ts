// The planner lives in src/core/plan/ (index.ts); this path stays for the modules that still import it from here.
export * from "./plan/index.js";
