// Moved to src/core/tc/normalise.ts; this path stays for the modules that still import it from here.
export * from "./tc/normalise.js";
