"use strict";
// Runs the hook bundle (hook.cjs, next to this file) with V8's code cache. libvirt waits for the hook on every
// guest start, and Node 20 keeps no compiled code between runs: compiling the bundle was a third of the
// hook's own time. The cache lives in the run directory (tmpfs, per boot); V8 rejects a cache that does not
// match the source or the V8 build, and the next run simply writes a new one.
// Two entries run it: the installed hook (/etc/libvirt/hooks/qemu.d/virtqos requires this file) and
// `bin/virtqos hook qemu ...` (which strips `hook qemu` from process.argv first); both share the cache.
const fs = require("node:fs");
const path = require("node:path");
const vm = require("node:vm");
const Module = require("node:module");

const bundle = path.join(__dirname, "hook.cjs");
const runDir = process.env.VIRTQOS_RUN_DIR || "/run/virtqos";
const source = fs.readFileSync(bundle, "utf8");
const stat = fs.statSync(bundle);
const cacheName = `hook-${stat.size}-${Math.floor(stat.mtimeMs)}.codecache`;
const cacheFile = path.join(runDir, cacheName);
let cachedData;
try {
  cachedData = fs.readFileSync(cacheFile);
} catch {
  // First run since boot or since a new build.
}
const script = new vm.Script(Module.wrap(source), { filename: bundle, cachedData });
const mod = { exports: {} };
script.runInThisContext()(mod.exports, require, mod, bundle, __dirname);
if (cachedData === undefined || script.cachedDataRejected) {
  // Written at exit, so the functions this run compiled lazily are in it too.
  process.on("exit", () => {
    try {
      fs.mkdirSync(runDir, { recursive: true });
      const tmp = `${cacheFile}.${process.pid}`;
      fs.writeFileSync(tmp, script.createCachedData());
      fs.renameSync(tmp, cacheFile);
      for (const f of fs.readdirSync(runDir)) {
        if (f.startsWith("hook-") && f.endsWith(".codecache") && f !== cacheName)
          fs.rmSync(path.join(runDir, f), { force: true });
      }
    } catch {
      // A read-only run directory only costs the compile next time.
    }
  });
}
mod.exports.main();
