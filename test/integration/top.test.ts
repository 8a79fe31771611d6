/**
 * `virtqos top` as a person and a script use it, on real tc in a namespace lab (two shaped guests, one a group
 * member): `top --once --json` against `status --json` of the same lab, its measured rate against real
 * traffic, and the full-screen view in a real terminal (tmux): what it shows, that it fits a resized window,
 * and that `q` and Ctrl-C end it within 2 s with the terminal put back.
 *   node --import tsx --test test/integration/top.test.ts
 * Needs root (the lab), iperf3 and tmux. Runs the CLI from source (tsx), no `npm run build` needed.
 */

import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { stripVTControlCharacters } from "node:util";
import type { StatusRow } from "../../src/app/status.js";
import { buildProgram } from "../../src/cli/index.js";
import { renderFrame, shortRate, type TopRow, withRates } from "../../src/cli/top.js";
import { run, sleep } from "../../src/lab/exec.js";
import { runTransfers } from "../../src/lab/iperf.js";
import type { Lab } from "../../src/lab/topology.js";
import {
  applyXml,
  closeLab,
  domainXml,
  type Harness,
  openLab,
  policy,
  SKIP_NOT_ROOT,
  uuidFor,
} from "../helpers/netns.js";
import { WEB_MEMBER_BETA } from "../helpers/seed-policies.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const TMUX = ["/usr/bin/tmux", "/usr/local/bin/tmux"].find((p) => existsSync(p));
const SKIP_NO_TMUX = TMUX ? false : "tmux is missing: apt-get install -y tmux";

/**
 * The CLI from source. Until src/cli/index.ts registers `top`, a stand-in entry adds it to the same program
 * (with every global option: --run-dir, --netns, --config); after that, src/main.ts itself.
 */
const REGISTERED = buildProgram().commands.some((c) => c.name() === "top");
const SHIM = `
const { buildProgram } = await import(${JSON.stringify(join(ROOT, "src/cli/index.js"))});
const { addTopCommand } = await import(${JSON.stringify(join(ROOT, "src/cli/top.js"))});
const program = buildProgram();
addTopCommand(program);
await program.parseAsync(process.argv.slice(1), { from: "user" });
`;
const cliArgv = (args: string[]): string[] =>
  REGISTERED
    ? ["--import", "tsx", join(ROOT, "src/main.ts"), ...args]
    : ["--import", "tsx", "--input-type=module", "-e", SHIM, "--", ...args];

function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    // cwd: where tsx resolves from.
    const child = spawn(process.execPath, cliArgv(args), { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on("data", (b: Buffer) => out.push(b));
    child.stderr.on("data", (b: Buffer) => err.push(b));
    const killer = setTimeout(() => child.kill("SIGKILL"), 60_000);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(killer);
      resolve({
        code,
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8"),
      });
    });
  });
}

const POLICY = WEB_MEMBER_BETA;

describe("virtqos top on a namespace lab (real tc)", { skip: SKIP_NOT_ROOT }, () => {
  let lab: Lab;
  let h: Harness;
  let dir: string;
  let globals: string[];
  let xml: string[];
  const pol = policy(POLICY);

  before(async () => {
    ({ lab, h } = await openLab({ guests: [{ name: "alpha" }, { name: "beta" }] }));
    const [a, b] = lab.guests;
    dir = mkdtempSync(join(tmpdir(), "virtqos-top-"));
    const policyFile = join(dir, "policy.yaml");
    writeFileSync(policyFile, POLICY);
    xml = [
      domainXml("alpha", uuidFor("alpha"), [
        { guest: a, bridge: lab.bridge, inbound: { average: 1250 }, outbound: { average: 625, peak: 1250 } },
      ]),
      domainXml("beta", uuidFor("beta"), [{ guest: b, bridge: lab.bridge }]),
    ];
    for (const x of xml) {
      const r = await applyXml(h, [x], pol);
      assert.equal(r.failure, undefined, r.failure?.message);
      assert.deepEqual(r.plan.problems, []);
    }
    // The same policy file for the CLI: group members only match when it knows the groups.
    globals = ["--run-dir", h.runDir, "--netns", lab.hostNs, "--config", policyFile, "--state-dir", dir];
  });
  after(async () => {
    await closeLab(lab, h);
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("top --once --json has the rows of status --json, sorted, each with a measured rate", async (t) => {
    const [top, status] = await Promise.all([
      cli([...globals, "top", "--once", "--json", "--interval", "500ms"]),
      cli([...globals, "status", "--json"]),
    ]);
    assert.equal(status.code, 0, status.stderr || status.stdout);
    assert.equal(top.code, 0, top.stderr || top.stdout);
    const topRows = (JSON.parse(top.stdout) as { interfaces: TopRow[] }).interfaces;
    const statusRows = (JSON.parse(status.stdout) as { interfaces: StatusRow[] }).interfaces;
    t.diagnostic(
      `${topRows.length} rows${REGISTERED ? "" : " (through the stand-in entry: top not registered)"}`,
    );
    assert.equal(topRows.length, 4);
    const key = (r: StatusRow) => `${r.guest}|${r.dev}|${r.direction}`;
    assert.deepEqual(
      topRows.map(key),
      statusRows.map(key).sort(),
      "the same interfaces and directions, by guest, dev, direction",
    );
    for (const s of statusRows) {
      const r = topRows.find((x) => key(x) === key(s));
      assert.ok(r);
      for (const k of [
        "domainUuid",
        "mac",
        "configured",
        "kernel",
        "group",
        "enforcedOn",
        "matches",
        "code",
      ] as const) {
        assert.deepEqual(r[k], s[k], `${key(s)}: ${k}`);
      }
      assert.equal(typeof r.rateBitsPerSec, "number", `${key(s)}: rateBitsPerSec`);
      assert.ok((r.rateBitsPerSec ?? -1) >= 0);
      assert.equal(r.dropsPerSec, 0);
    }
  });

  test("the rate top measures is what the guest gets: its limit, under load", async (t) => {
    const [a] = lab.guests;
    const transfer = runTransfers(lab, [{ guest: a, direction: "download", protocol: "tcp", seconds: 12 }]);
    // Past the start and the burst: the interval lies inside the transfer whatever the CLI's start-up takes.
    await sleep(1500);
    const top = await cli([...globals, "top", "--once", "--json", "--interval", "2s"]);
    await transfer;
    assert.equal(top.code, 0, top.stderr || top.stdout);
    const rows = (JSON.parse(top.stdout) as { interfaces: TopRow[] }).interfaces;
    const down = rows.find((r) => r.guest === "alpha" && r.direction === "inbound");
    const rate = down?.rateBitsPerSec ?? 0;
    t.diagnostic(`alpha inbound (10 Mbit/s limit) under TCP: ${(rate / 1e6).toFixed(2)} Mbit/s`);
    assert.ok(rate > 0.85 * 10e6 && rate < 1.1 * 10e6, `alpha inbound ${rate} bit/s against 10 Mbit/s`);
    const idle = rows.find((r) => r.guest === "beta" && r.direction === "inbound");
    assert.ok((idle?.rateBitsPerSec ?? Infinity) < 100e3, "beta is idle");
  });

  describe("full screen in tmux", { skip: SKIP_NO_TMUX }, () => {
    // A server of our own on a socket in the test's directory: the machine's tmux sessions are never touched,
    // and nothing is left behind.
    let socket: string;
    let conf: string;
    const tmux = (...args: string[]) => {
      const r = spawnSync(TMUX ?? "tmux", ["-S", socket, "-f", conf, ...args], { encoding: "utf8" });
      return { code: r.status, out: r.stdout, err: r.stderr };
    };
    const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
    const start = (name: string, width = 200, height = 50) => {
      const top = [process.execPath, ...cliArgv([...globals, "top", "--interval", "500ms"])]
        .map(quote)
        .join(" ");
      // The shell stays after top: its line says when top ended and how, and the pane's modes can be read
      // then (a dead pane's cursor is tmux's, not what top left).
      const cmd = `${top}; echo "virtqos top exited: $?"; exec sleep 600`;
      const r = tmux(
        "new-session",
        "-d",
        "-s",
        name,
        "-x",
        String(width),
        "-y",
        String(height),
        "-c",
        ROOT,
        cmd,
      );
      assert.equal(r.code, 0, r.err);
    };
    const screen = (name: string) => tmux("capture-pane", "-p", "-t", name).out;
    const pane = (name: string) => {
      const [alternate, cursor] = tmux("display-message", "-p", "-t", name, "#{alternate_on} #{cursor_flag}")
        .out.trim()
        .split(" ");
      return { alternate: alternate === "1", cursor: cursor === "1" };
    };
    const waitFor = async (what: string, ok: () => boolean, ms: number) => {
      const until = Date.now() + ms;
      while (!ok()) {
        if (Date.now() > until) assert.fail(`${what} within ${ms} ms`);
        await sleep(50);
      }
    };
    /** The screen once both guests are on it with rates (two reads done). */
    const shown = async (name: string) => {
      let text = "";
      await waitFor(
        `the screen of ${name}`,
        () => {
          text = screen(name);
          return /alpha.*inbound.*bit\/s.*bit\/s/.test(text) && /beta .*outbound.*bit\/s.*bit\/s/.test(text);
        },
        30_000,
      );
      return text;
    };
    const quits = async (name: string, key: string) => {
      tmux("send-keys", "-t", name, key);
      const t0 = Date.now();
      let exited: RegExpExecArray | null = null;
      await waitFor(
        `${name}: top ends after ${key}`,
        () => {
          exited = /virtqos top exited: (\d+)/.exec(screen(name));
          return exited !== null;
        },
        2000,
      );
      const ms = Date.now() - t0;
      assert.equal(exited?.[1], "0", "exit status");
      const p = pane(name);
      assert.equal(p.alternate, false, "back from the alternate screen");
      assert.equal(p.cursor, true, "the cursor is visible again");
      assert.doesNotMatch(screen(name), /virtqos top -/, "the view is gone from the terminal");
      return ms;
    };

    before(() => {
      // No user configuration: the same terminal type and defaults wherever the test runs.
      conf = join(dir, "tmux.conf");
      socket = join(dir, "tmux.sock");
      writeFileSync(conf, "set -g default-terminal screen\n");
    });
    after(() => {
      tmux("kill-server");
    });

    test("shows every guest and direction with limit, rate, in force; q quits within 2 s", async (t) => {
      start("q");
      const text = await shown("q");
      t.diagnostic(`\n${text.trimEnd()}`);
      const lines = text.split("\n");
      assert.match(
        lines[0],
        /^virtqos top - \d\d:\d\d:\d\d - every 0\.5s - 4 interface directions, 0 not in force/,
      );
      assert.match(lines[2], /^GUEST\s+DEV\s+DIRECTION\s+LIMIT\s+RATE\s+USE\s+DROPS\/S\s+IN FORCE/);
      const body = lines.slice(3, 7);
      assert.deepEqual(
        body.map((l) => l.split(/\s+/).slice(0, 3).join(" ")),
        [
          `alpha ${lab.guests[0].tap} inbound`,
          `alpha ${lab.guests[0].tap} outbound`,
          `beta ${lab.guests[1].tap} inbound`,
          `beta ${lab.guests[1].tap} outbound`,
        ],
      );
      assert.match(body[0], /10\.0 Mbit\/s\s/);
      assert.match(body[1], /5\.0 Mbit\/s peak 10\.0 Mbit\/s/);
      assert.match(body[2], /30\.0 Mbit\/s floor 15\.0 Mbit\/s/);
      for (const l of body) assert.match(l, /\syes\s*$/);
      const ms = await quits("q", "q");
      t.diagnostic(`q: ended in ${ms} ms`);
    });

    test("a smaller window: redrawn to fit, no line wraps; Ctrl-C quits within 2 s", async (t) => {
      start("small");
      await shown("small");
      assert.equal(tmux("resize-window", "-t", "small", "-x", "60", "-y", "12").code, 0);
      await waitFor(
        "a redraw at 60 columns",
        () => screen("small").split("\n")[0].length <= 60 && /^virtqos top/.test(screen("small")),
        5000,
      );
      const text = screen("small");
      const lines = text.split("\n").filter((l, i, all) => i < all.length - 1 || l);
      assert.ok(lines.length <= 12, `${lines.length} lines in a 12-line window`);
      for (const l of lines) assert.ok(l.length <= 60, `wider than the window: ${l}`);
      assert.match(text, /^GUEST/m);
      const ms = await quits("small", "C-c");
      t.diagnostic(`Ctrl-C: ended in ${ms} ms`);
    });
  });

  test("an interface changed behind virtqos's back: not in force, as status says, exit status 4", async () => {
    const tap = lab.guests[0].tap;
    // alpha's download limit is the HTB tree on its tap: deleting it is the drift the agent repairs.
    await run("tc", ["-n", lab.hostNs, "qdisc", "del", "dev", tap, "root"]);
    try {
      const [top, status] = await Promise.all([
        cli([...globals, "top", "--once", "--json", "--interval", "200ms"]),
        cli([...globals, "status", "--json"]),
      ]);
      assert.equal(status.code, 4, status.stderr);
      assert.equal(top.code, 4, top.stderr);
      const topRows = (JSON.parse(top.stdout) as { interfaces: TopRow[] }).interfaces;
      const statusRows = (JSON.parse(status.stdout) as { interfaces: StatusRow[] }).interfaces;
      const off = (rows: StatusRow[]) =>
        rows.filter((r) => !r.matches).map((r) => ({ guest: r.guest, direction: r.direction, code: r.code }));
      assert.deepEqual(off(topRows), [
        { guest: "alpha", direction: "inbound", code: off(statusRows)[0]?.code },
      ]);
      assert.deepEqual(off(topRows), off(statusRows));
    } finally {
      const r = await applyXml(h, [xml[0]], pol);
      assert.equal(r.failure, undefined, r.failure?.message);
    }
  });
});

describe("top's pieces, without a lab", () => {
  const row = (guest: string, direction: "inbound" | "outbound", bytes: number, drops = 0): StatusRow => ({
    guest,
    domainUuid: `uuid-${guest}`,
    mac: "52:54:00:00:00:01",
    dev: `tap-${guest}`,
    direction,
    configured: { rateBitsPerSec: 10e6, ceilBitsPerSec: 20e6, source: "policy", mode: "shape" },
    bytes,
    packets: 0,
    drops,
    overlimits: 0,
    matches: guest !== "zed",
    generation: 1,
  });

  test("rates from two reads: bits per second, sorted; none for a new row or a counter that went back", () => {
    const first = [row("b", "outbound", 1000), row("a", "inbound", 5000), row("c", "inbound", 9000)];
    const prev = new Map(first.map((r) => [`${r.domainUuid}|${r.mac}|${r.direction}`, r]));
    const next = [
      row("c", "inbound", 10), // class re-created: counters from 0 again
      row("b", "outbound", 1000 + 2_500_000, 10),
      row("a", "inbound", 5000 + 1_250_000),
      row("new", "outbound", 777),
    ];
    const rows = withRates(prev, next, 2);
    assert.deepEqual(
      rows.map((r) => [r.guest, r.direction, r.rateBitsPerSec, r.dropsPerSec]),
      [
        ["a", "inbound", 5e6, 0],
        ["b", "outbound", 10e6, 5],
        ["c", "inbound", undefined, undefined],
        ["new", "outbound", undefined, undefined],
      ],
    );
  });

  test("rates read at a glance", () => {
    assert.equal(shortRate(0), "0 bit/s");
    assert.equal(shortRate(999), "999 bit/s");
    assert.equal(shortRate(948_800), "948.8 kbit/s");
    assert.equal(shortRate(10e6), "10.0 Mbit/s");
    assert.equal(shortRate(999_990), "1.0 Mbit/s");
    assert.equal(shortRate(2.5e9), "2.5 Gbit/s");
  });

  test("a frame fills the window exactly, never wider, and says what is cut off", () => {
    const rows = withRates(
      undefined,
      [...Array(30).keys()].map((i) => row(`guest-${i}`, "inbound", 0)),
      0,
    );
    rows.push({ ...row("zed", "outbound", 0), code: "ROOT_QDISC_FOREIGN" });
    const frame = renderFrame({ rows, width: 50, height: 10, intervalMs: 1000, at: new Date(0), offset: 0 });
    const lines = stripVTControlCharacters(frame).split("\r\n");
    assert.equal(lines.length, 10);
    for (const l of lines) assert.equal(l.length, 50, JSON.stringify(l));
    assert.match(lines[9], /^rows 1-6 of 31/);
    const end = stripVTControlCharacters(
      renderFrame({ rows, width: 200, height: 10, intervalMs: 1000, at: new Date(0), offset: 99 }),
    );
    assert.match(end, /rows 26-31 of 31/, "scrolling stops at the last row");
    assert.match(end, /zed\s+tap-zed\s+outbound.*NO ROOT_QDISC_FOREIGN/);
    assert.match(end, /31 interface directions, 1 not in force/);
  });
});
