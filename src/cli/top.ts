import type { Command } from "commander";
import { loadPolicy } from "../adapters/policy-load.js";
import { collectStatus, type StatusRow } from "../app/status.js";
import { formatTable } from "../app/table.js";
import { EXIT, VirtqosError } from "../core/errors.js";
import { parseDuration, UnitError } from "../core/units.js";
import { cliLogger, context, globals } from "./context.js";

// `virtqos top`: every shaped interface with its limit and what it carries now. The rates come from the
// kernel's byte counters between two reads (the same rows as `virtqos status`), so the first screen has
// limits but no rates yet. Full-screen with plain ANSI: a curses library would be a native dependency for
// one screen that only ever prints rows.

export interface TopRow extends StatusRow {
  /** Bits per second the shaper sent over the last interval; absent on the first read or after a counter reset. */
  rateBitsPerSec?: number;
  dropsPerSec?: number;
}

interface TopOpts {
  interval: string;
  once?: boolean;
  json?: boolean;
}

const MIN_INTERVAL_MS = 100;
const MAX_INTERVAL_MS = 3_600_000;

function parseInterval(text: string): number {
  let ms: number;
  try {
    ms = parseDuration(text);
  } catch (e) {
    if (e instanceof UnitError) throw new VirtqosError("USAGE", `--interval ${e.message}; fix: ${e.fix}`);
    throw e;
  }
  if (ms < MIN_INTERVAL_MS || ms > MAX_INTERVAL_MS) {
    throw new VirtqosError("USAGE", `--interval ${text} is outside 100ms..1h; fix: e.g. --interval 2s`);
  }
  return ms;
}

const rowKey = (r: StatusRow) => `${r.domainUuid}|${r.mac}|${r.direction}`;
const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

export function sortRows<T extends StatusRow>(rows: T[]): T[] {
  return [...rows].sort(
    (a, b) =>
      cmp(a.guest, b.guest) ||
      cmp(a.dev ?? "", b.dev ?? "") ||
      cmp(a.direction, b.direction) ||
      cmp(a.mac, b.mac),
  );
}

/** The rows of a read, with rates against the read before it (`seconds` earlier), sorted. */
export function withRates(
  previous: ReadonlyMap<string, StatusRow> | undefined,
  rows: StatusRow[],
  seconds: number,
): TopRow[] {
  return sortRows(
    rows.map((r): TopRow => {
      const p = previous?.get(rowKey(r));
      // A counter that went back means tc re-created the class: no rate for this interval rather than a wrong one.
      if (!p || seconds <= 0 || r.bytes < p.bytes || r.drops < p.drops) return { ...r };
      return {
        ...r,
        rateBitsPerSec: ((r.bytes - p.bytes) * 8) / seconds,
        dropsPerSec: (r.drops - p.drops) / seconds,
      };
    }),
  );
}

/** Rates at a glance: one decimal, at most four digits before the unit. */
export function shortRate(bitsPerSec: number): string {
  const steps: [number, string][] = [
    [1e12, "Tbit/s"],
    [1e9, "Gbit/s"],
    [1e6, "Mbit/s"],
    [1e3, "kbit/s"],
  ];
  for (const [factor, unit] of steps) {
    if (bitsPerSec >= factor * 0.9995) return `${(bitsPerSec / factor).toFixed(1)} ${unit}`;
  }
  return `${Math.round(bitsPerSec)} bit/s`;
}

function limitText(r: StatusRow): string {
  const c = r.configured;
  if (!c.rateBitsPerSec) return "-";
  const peak = c.ceilBitsPerSec > c.rateBitsPerSec ? ` peak ${shortRate(c.ceilBitsPerSec)}` : "";
  const floor = c.floorBitsPerSec ? ` floor ${shortRate(c.floorBitsPerSec)}` : "";
  return `${shortRate(c.rateBitsPerSec)}${peak}${floor}${c.mode === "police" ? " police" : ""}`;
}

/** How full the limit is (the ceiling where there is one: that is where the shaper stops). */
function usage(r: TopRow): number | undefined {
  const limit = Math.max(r.configured.ceilBitsPerSec, r.configured.rateBitsPerSec);
  return r.rateBitsPerSec === undefined || !limit ? undefined : r.rateBitsPerSec / limit;
}

const BAR = 10;
function bar(u: number | undefined): string {
  if (u === undefined) return "";
  const filled = Math.max(0, Math.min(BAR, Math.round(u * BAR)));
  return `[${"#".repeat(filled)}${" ".repeat(BAR - filled)}] ${Math.round(u * 100)}%`.padEnd(BAR + 7);
}

const HEADER = ["GUEST", "DEV", "DIRECTION", "LIMIT", "RATE", "USE", "DROPS/S", "IN FORCE"];

function cells(r: TopRow): string[] {
  return [
    r.guest,
    r.dev ?? "-",
    r.direction,
    limitText(r),
    r.rateBitsPerSec === undefined ? "-" : shortRate(r.rateBitsPerSec),
    bar(usage(r)),
    r.dropsPerSec === undefined ? "-" : r.dropsPerSec.toFixed(r.dropsPerSec && r.dropsPerSec < 10 ? 1 : 0),
    // Without a code or note the re-plan still had work left: something changed the kernel's objects.
    r.matches ? "yes" : `NO ${r.code ?? (r.note ? `(${r.note})` : "(kernel differs)")}`,
  ];
}

/** The plain table (`--once`, or stdout not a terminal). */
export function topTable(rows: TopRow[]): string {
  if (!rows.length) return "nothing is shaped by virtqos";
  return formatTable([HEADER, ...rows.map(cells)]);
}

const ESC = "\x1b[";
const SGR = {
  reset: `${ESC}0m`,
  bold: `${ESC}1m`,
  inverse: `${ESC}7m`,
  red: `${ESC}31m`,
  green: `${ESC}32m`,
};

export interface Frame {
  rows: TopRow[];
  width: number;
  height: number;
  intervalMs: number;
  at: Date;
  /** The first row shown (scrolling). */
  offset: number;
  error?: string;
}

/** One full screen, every line cut to the width (a wrapped line would scroll the screen). */
export function renderFrame(f: Frame): string {
  const { width, height } = f;
  const fit = (s: string) => (s.length > width ? s.slice(0, width) : s.padEnd(width));
  const off = f.rows.filter((r) => !r.matches).length;
  const total = (d: string) =>
    f.rows.reduce((s, r) => s + (r.direction === d ? (r.rateBitsPerSec ?? 0) : 0), 0);
  const title = `virtqos top - ${f.at.toTimeString().slice(0, 8)} - every ${f.intervalMs / 1000}s - ${f.rows.length} interface directions, ${off} not in force`;
  const totals = `total inbound (download) ${shortRate(total("inbound"))}, outbound (upload) ${shortRate(total("outbound"))}    q: quit  up/down: scroll`;
  const body = f.rows.map(cells);
  const widths = HEADER.map((h, i) => Math.max(h.length, ...body.map((c) => c[i].length)));
  const line = (c: string[]) => fit(c.map((x, i) => x.padEnd(widths[i])).join("  "));
  const room = Math.max(0, height - 4);
  const offset = Math.max(0, Math.min(f.offset, f.rows.length - room));
  const lines = [
    `${SGR.bold}${fit(title)}${SGR.reset}`,
    fit(totals),
    `${SGR.inverse}${line(HEADER)}${SGR.reset}`,
  ];
  const inForceAt = widths.slice(0, -1).reduce((s, w) => s + w + 2, 0);
  for (const [i, r] of body.slice(offset, offset + room).entries()) {
    const text = line(r);
    // Colour only the in-force cell, after cutting: escape codes must not count towards the width.
    const colour = f.rows[offset + i].matches ? SGR.green : SGR.red;
    lines.push(
      inForceAt < width ? `${text.slice(0, inForceAt)}${colour}${text.slice(inForceAt)}${SGR.reset}` : text,
    );
  }
  while (lines.length < height - 1) lines.push(fit(""));
  const status = f.error
    ? `${SGR.red}${fit(`error: ${f.error}`)}${SGR.reset}`
    : fit(
        f.rows.length > room
          ? `rows ${offset + 1}-${Math.min(offset + room, f.rows.length)} of ${f.rows.length}`
          : f.rows.length
            ? ""
            : "nothing is shaped by virtqos",
      );
  lines.push(status);
  // Home, then every line over what was there: no clear, so the screen does not flicker.
  return `${ESC}H${lines.slice(0, height).join("\r\n")}`;
}

/** Full screen in the alternate buffer, keys in raw mode; `restore` puts the terminal back as it was. */
function openScreen(onKey: (key: string) => void, onResize: () => void): { restore(): void } {
  const { stdin, stdout } = process;
  stdout.write(`${ESC}?1049h${ESC}?25l${ESC}2J`);
  const raw = stdin.isTTY;
  if (raw) {
    stdin.setRawMode(true);
    stdin.setEncoding("utf8");
    stdin.on("data", onKey);
    stdin.resume();
  }
  stdout.on("resize", onResize);
  let restored = false;
  const restore = () => {
    if (restored) return;
    restored = true;
    stdout.off("resize", onResize);
    if (raw) {
      stdin.off("data", onKey);
      stdin.setRawMode(false);
      stdin.pause();
    }
    stdout.write(`${SGR.reset}${ESC}?1049l${ESC}?25h`);
  };
  // An exit by any other way (an uncaught error) must not leave the terminal raw and the cursor hidden.
  process.once("exit", restore);
  return {
    restore() {
      process.off("exit", restore);
      restore();
    },
  };
}

export function addTopCommand(program: Command): void {
  program
    .command("top")
    .description(
      "live view of every shaped interface: limit, current rate, drops/s and whether it is in force (q quits)",
    )
    .option("--interval <duration>", "time between two reads of the counters", "1s")
    .option("--once", "read twice, one interval apart, print the rates and exit")
    .option("--json", "machine-readable output: with --once one object, else one line per interval")
    .action(async (opts: TopOpts) => {
      const intervalMs = parseInterval(opts.interval);
      const g = globals(program, opts.json);
      const screen = !opts.once && !opts.json && process.stdout.isTTY === true;
      // The screen owns the terminal: log lines on stderr would tear it (errors show in its last line).
      const log = cliLogger(screen ? { ...g, json: true } : g);
      const ctx = context(g, log);
      const caps = await ctx.caps();
      const read = async (): Promise<{ rows: StatusRow[]; at: number }> => {
        let policy: ReturnType<typeof loadPolicy>;
        try {
          policy = loadPolicy(ctx.policyFile);
        } catch {
          // As `virtqos status`: a policy file being edited must not stop the view.
          policy = loadPolicy("/nonexistent");
        }
        const rows = await collectStatus(ctx.runner, ctx.runDir, caps, policy);
        return { rows, at: performance.now() };
      };
      try {
        if (opts.once) await once(read, intervalMs, !!opts.json);
        else if (screen) await fullScreen(read, intervalMs);
        else await stream(read, intervalMs, !!opts.json);
      } finally {
        await log.close();
      }
    });
}

type Read = () => Promise<{ rows: StatusRow[]; at: number }>;

const byKey = (rows: StatusRow[]) => new Map(rows.map((r) => [rowKey(r), r]));
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

async function once(read: Read, intervalMs: number, json: boolean): Promise<void> {
  const first = await read();
  await sleep(intervalMs);
  const second = await read();
  const rows = withRates(byKey(first.rows), second.rows, (second.at - first.at) / 1000);
  process.stdout.write(json ? `${JSON.stringify({ interfaces: rows }, null, 2)}\n` : `${topTable(rows)}\n`);
  process.exitCode = rows.every((r) => r.matches) ? EXIT.OK : EXIT.MISMATCH;
}

/** Not a terminal (a pipe, a log): a table or a JSON line per interval, until killed. */
async function stream(read: Read, intervalMs: number, json: boolean): Promise<void> {
  let last = await read();
  for (;;) {
    await sleep(intervalMs);
    const next = await read();
    const rows = withRates(byKey(last.rows), next.rows, (next.at - last.at) / 1000);
    process.stdout.write(
      json
        ? `${JSON.stringify({ at: new Date().toISOString(), interfaces: rows })}\n`
        : `${new Date().toISOString()}\n${topTable(rows)}\n\n`,
    );
    last = next;
  }
}

async function fullScreen(read: Read, intervalMs: number): Promise<void> {
  let quit: () => void = () => {};
  const quitting = new Promise<void>((resolve) => {
    quit = resolve;
  });
  let done = false;
  let frame: Frame = {
    rows: [],
    width: 80,
    height: 24,
    intervalMs,
    at: new Date(),
    offset: 0,
  };
  const draw = () => {
    if (done) return;
    frame = { ...frame, width: process.stdout.columns || 80, height: process.stdout.rows || 24 };
    process.stdout.write(renderFrame(frame));
  };
  const scroll = (by: number) => {
    const room = Math.max(1, frame.height - 4);
    frame.offset = Math.max(0, Math.min(frame.offset + by, frame.rows.length - room));
    draw();
  };
  const onKey = (key: string) => {
    if (key === "q" || key === "Q" || key === "\x03" || key === "\x04") quit();
    else if (key === "\x1b[A" || key === "k") scroll(-1);
    else if (key === "\x1b[B" || key === "j") scroll(1);
    else if (key === "\x1b[5~") scroll(-(frame.height - 4));
    else if (key === "\x1b[6~" || key === " ") scroll(frame.height - 4);
  };
  const { restore } = openScreen(onKey, draw);
  // Without a terminal for stdin (no raw mode) Ctrl-C arrives as a signal; SIGTERM/SIGHUP the same way out.
  const signals = ["SIGINT", "SIGTERM", "SIGHUP"] as const;
  for (const s of signals) process.on(s, quit);
  try {
    draw();
    let last: Awaited<ReturnType<Read>> | undefined;
    while (!done) {
      // A read of a large host can take a while: a quit meanwhile does not wait for it.
      const next = await Promise.race([
        read().then(
          (r) => ({ r }),
          (e: Error) => ({ e }),
        ),
        quitting,
      ]);
      if (!next) break;
      if ("e" in next) frame.error = next.e.message;
      else {
        frame.error = undefined;
        frame.rows = withRates(
          last && byKey(last.rows),
          next.r.rows,
          last ? (next.r.at - last.at) / 1000 : 0,
        );
        frame.at = new Date();
        last = next.r;
      }
      draw();
      // The timer is cleared on quit: a pending one would keep the process alive for up to an interval.
      let timer: NodeJS.Timeout | undefined;
      const waited = new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(true), intervalMs);
      });
      const go = await Promise.race([waited, quitting]);
      clearTimeout(timer);
      if (go !== true) break;
    }
  } finally {
    done = true;
    for (const s of signals) process.off(s, quit);
    restore();
  }
}
