import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { loadRecords } from "../../src/adapters/state.js";
import type { LocalService } from "../../src/agent/service.js";
import type { Principal } from "../../src/agent/types.js";
import { recordIfb } from "../../src/core/plan.js";
import { runTransfers } from "../../src/lab/iperf.js";
import type { MemorySource } from "../../src/lab/memory-source.js";
import type { Lab } from "../../src/lab/topology.js";
import { labService } from "../helpers/lab-service.js";
import {
  closeLab,
  domainXml,
  type Harness,
  openLab,
  policy,
  SKIP_NOT_ROOT,
  uuidFor,
} from "../helpers/netns.js";

// No gap while a limit changes: a busy TCP download, then a UDP upload flood, while the limit goes
// 20 -> 10 -> 20 Mbit/s every 2 s for 20 s. The shaped side's byte counter (the tap's tx for download, the
// IFB's tx for upload: both count what left the shaper) is sampled every 50 ms inside the namespace. A gap (the
// classes deleted and re-created, as `virsh domiftune` does) shows as a window far above the limit; a stall as
// 100 ms or more without a byte.

const OP: Principal = { name: "gap-test", role: "operator", via: "token" };
const SAMPLE_MS = 50;

interface Sample {
  t: number;
  bytes: number;
}

/** Samples a /sys counter every 50 ms inside the namespace until stopped; times in Date.now() ms. */
function sampler(ns: string, dev: string) {
  const script = `const fs=require("fs");const f="/sys/class/net/"+process.argv[1]+"/statistics/tx_bytes";
setInterval(()=>process.stdout.write(Date.now()+" "+fs.readFileSync(f,"utf8")),${SAMPLE_MS});`;
  const child = spawn("ip", ["netns", "exec", ns, process.execPath, "-e", script, dev], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  let text = "";
  child.stdout.setEncoding("utf8").on("data", (d: string) => {
    text += d;
  });
  return {
    stop(): Sample[] {
      child.kill("SIGKILL");
      return text
        .trim()
        .split("\n")
        .map((l) => l.split(" ").map(Number))
        .filter(([t, b]) => Number.isFinite(t) && Number.isFinite(b))
        .map(([t, bytes]) => ({ t, bytes }));
    },
  };
}

interface Change {
  /** When the call started and when it returned: in between, either limit may be in force. */
  t: number;
  done: number;
  bitsPerSec: number;
}

/**
 * The worst 250 ms window relative to the larger of the limits that may have been in force during it (the old
 * and the new one around a change), and the longest time without a byte.
 */
function judge(samples: Sample[], changes: Change[]) {
  // The largest limit that may have been in force at some moment of [a, b]: the one before a change counts
  // until its call returned, the new one from the moment the call started.
  const maxLimit = (a: number, b: number) =>
    Math.max(
      ...changes
        .filter((c, i) => c.t <= b && (changes[i + 1]?.done ?? Number.POSITIVE_INFINITY) >= a)
        .map((c) => c.bitsPerSec),
    );
  let worst = 0;
  let worstAt = 0;
  let worstText = "";
  for (let i = 0; i < samples.length; i++) {
    const j = samples.findIndex((s, k) => k > i && s.t - samples[i].t >= 250);
    if (j < 0) break;
    const dt = samples[j].t - samples[i].t;
    const rate = ((samples[j].bytes - samples[i].bytes) * 8 * 1000) / dt;
    const ratio = rate / maxLimit(samples[i].t, samples[j].t);
    if (ratio > worst) {
      worst = ratio;
      worstAt = samples[i].t;
      worstText = `${(rate / 1e6).toFixed(2)} Mbit/s over [${samples[i].t}, ${samples[j].t}] against ${maxLimit(samples[i].t, samples[j].t) / 1e6}; changes ${JSON.stringify(changes.map((c) => [c.t, c.done, c.bitsPerSec / 1e6]))}`;
    }
  }
  let stall = 0;
  let lastMove = samples[0].t;
  for (let i = 1; i < samples.length; i++) {
    if (samples[i].bytes > samples[i - 1].bytes) {
      stall = Math.max(stall, samples[i].t - lastMove - SAMPLE_MS);
      lastMove = samples[i].t;
    }
  }
  return { worst, worstAt, worstText, stallMs: Math.max(0, stall) };
}

describe(
  "live changes leave no gap and no stall (namespace lab, 50 ms samples)",
  { skip: SKIP_NOT_ROOT },
  () => {
    let lab: Lab;
    let h: Harness;
    let stateDir: string;
    let service: LocalService;
    const uuid = uuidFor("gap");
    const pol = policy(`
domains:
  - name: gap1
    inbound: { average: 20mbit }
    outbound: { average: 20mbit }
`);

    before(async () => {
      ({ lab, h } = await openLab({ guests: [{ name: "gap1" }] }));
      stateDir = mkdtempSync(join(tmpdir(), "virtqos-gap-"));
      let source: MemorySource;
      ({ service, source } = labService(h, stateDir, pol));
      source.add("gap1", uuid, domainXml("gap1", uuid, [{ guest: lab.guests[0], bridge: lab.bridge }]));
      await service.reapply(uuid);
    });
    after(async () => {
      await closeLab(lab, h);
      rmSync(stateDir, { recursive: true, force: true });
    });

    for (const [direction, protocol] of [
      ["download", "tcp"],
      ["upload", "udp"],
    ] as const) {
      test(`${protocol.toUpperCase()} ${direction}: 20 -> 10 -> 20 Mbit/s every 2 s for 20 s`, async (t) => {
        const g = lab.guests[0];
        const rec = loadRecords(h.runDir)[0].interfaces[0];
        const dev = direction === "download" ? g.tap : (recordIfb(uuid, rec) ?? "");
        assert.ok(dev, "the device that carries this direction");
        const key = direction === "download" ? "inbound" : "outbound";
        const transfer = runTransfers(lab, [
          { guest: g, direction, protocol, seconds: 23, udpRateBitsPerSec: 30e6 },
        ]);
        await new Promise((r) => setTimeout(r, 2000));
        const s = sampler(lab.hostNs, dev);
        const changes: Change[] = [{ t: 0, done: 0, bitsPerSec: 20e6 }];
        const start = Date.now();
        const took: number[] = [];
        for (let i = 0; i < 10; i++) {
          await new Promise((r) => setTimeout(r, 2000 - (took.at(-1) ?? 0)));
          const rate = i % 2 === 0 ? 10e6 : 20e6;
          const t0 = Date.now();
          await service.setInterface(uuid, "1", { [key]: { average: rate / 8000 }, persist: "live" }, OP);
          took.push(Date.now() - t0);
          changes.push({ t: t0, done: Date.now(), bitsPerSec: rate });
        }
        await new Promise((r) => setTimeout(r, 1000));
        const samples = s.stop();
        await transfer;
        const { worst, worstAt, worstText, stallMs } = judge(samples, changes);
        t.diagnostic(
          `${samples.length} samples; worst 250 ms window ${worst.toFixed(3)}x the limit (at +${worstAt - start} ms); longest stall ${stallMs} ms; set took ${Math.min(...took)}-${Math.max(...took)} ms`,
        );
        assert.ok(samples.length >= 300, `only ${samples.length} samples`);
        assert.ok(worst <= 1.1, `a 250 ms window reached ${worst.toFixed(3)}x the limit: ${worstText}`);
        assert.ok(stallMs <= 100, `no byte for ${stallMs} ms`);
      });
    }
  },
);
