// Moved to src/core/tc/render.ts; this path stays for the modules that still import it from here.
export * from "./tc/render.js";
