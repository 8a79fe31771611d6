import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { ERRORS, type ErrorInfo, EXIT, HTTP, isErrorCode } from "../../src/core/errors.js";

const DOC = fileURLToPath(new URL("../../docs/errors.md", import.meta.url));
const SRC = fileURLToPath(new URL("../../src", import.meta.url));
const CATALOGUE: [string, ErrorInfo][] = Object.entries(ERRORS);
const CODES = CATALOGUE.map(([code]) => code);

test("every error code has a sane catalogue entry", () => {
  const exits = new Set<number>(Object.values(EXIT));
  const statuses = new Set<number>(Object.values(HTTP));
  for (const [code, info] of CATALOGUE) {
    assert.match(code, /^[A-Z][A-Z0-9_]*$/, code);
    assert.ok(exits.has(info.exitCode), `${code}: exit code ${info.exitCode} is one of EXIT`);
    assert.ok(statuses.has(info.httpStatus), `${code}: HTTP status ${info.httpStatus} is one of HTTP`);
    // A code that does not fail a command (a warning, a note) does not fail a request either, and vice versa.
    assert.equal(
      info.exitCode === EXIT.OK,
      info.httpStatus === HTTP.OK,
      `${code}: exit ${info.exitCode} and HTTP ${info.httpStatus} disagree on whether it is a failure`,
    );
    if (info.exitCode === EXIT.INVALID_INPUT) assert.equal(info.httpStatus, HTTP.BAD_REQUEST, code);
    assert.ok(info.summary.length > 0 && info.fix.length > 0, code);
  }
});

/** The sections of docs/errors.md: heading text -> body. */
function docSections(): Map<string, string> {
  if (!existsSync(DOC)) {
    assert.fail(
      `docs/errors.md does not exist (looked at ${DOC}); it must have a heading for each of: ${CODES.join(", ")}`,
    );
  }
  const sections = new Map<string, string>();
  let heading: string | undefined;
  for (const line of readFileSync(DOC, "utf8").split("\n")) {
    const h = /^#{1,6}\s+(.*)$/.exec(line);
    if (h) {
      heading = h[1].trim();
      sections.set(heading, "");
    } else if (heading !== undefined) sections.set(heading, `${sections.get(heading)}${line}\n`);
  }
  return sections;
}

test("every error code in src/core/errors.ts is a heading in docs/errors.md", () => {
  const headings = [...docSections().keys()];
  const missing = CODES.filter(
    (code) => !headings.some((h) => new RegExp(`(^|[^A-Z0-9_])${code}([^A-Z0-9_]|$)`).test(h)),
  );
  assert.deepEqual(missing, [], `docs/errors.md lacks a heading for: ${missing.join(", ")}`);
});

test("docs/errors.md gives each code's exit status, HTTP status, summary and fix as the catalogue has them", () => {
  const sections = docSections();
  for (const [code, info] of CATALOGUE) {
    const body = sections.get(code) ?? "";
    assert.ok(
      body.includes(`Exit status ${info.exitCode}. HTTP status ${info.httpStatus}. ${info.summary}`),
      `docs/errors.md, ## ${code}: want "Exit status ${info.exitCode}. HTTP status ${info.httpStatus}. ${info.summary}"`,
    );
    assert.ok(
      body.includes(`**Fix:** ${info.fix}`),
      `docs/errors.md, ## ${code}: want "**Fix:** ${info.fix}"`,
    );
  }
  const extra = [...sections.keys()].filter((h) => /^[A-Z][A-Z0-9_]+$/.test(h) && !isErrorCode(h));
  assert.deepEqual(
    extra,
    [],
    `docs/errors.md documents codes the catalogue does not have: ${extra.join(", ")}`,
  );
});

function sourceFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sourceFiles(join(dir, e.name)) : e.name.endsWith(".ts") ? [join(dir, e.name)] : [],
  );
}

/**
 * Where src names a code as a string literal: a `code` field or comparison, an error's constructor, a
 * fallback (`?? "INTERNAL"`), a message that starts with one (`HOOK_TIMEOUT: ...`). Node's errno codes
 * (ENOENT, EEXIST...) are compared with `.code` too and are not virtqos's.
 */
const CODE_LITERALS = [
  /\bcode\s*(?:[:=]|[!=]==)\s*"([A-Z][A-Z0-9_]*)"/g,
  /\b(?:VirtqosError|super)\(\s*"([A-Z][A-Z0-9_]*)"/g,
  /\?\?\s*"([A-Z][A-Z0-9_]*)"/g,
  /[`"']([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+):/g,
];
const ERRNO = /^E[A-Z0-9]+$/;

test("every code used in src is in the catalogue", () => {
  const used = new Map<string, string>();
  for (const file of sourceFiles(SRC)) {
    const text = readFileSync(file, "utf8");
    for (const re of CODE_LITERALS) {
      for (const m of text.matchAll(re)) {
        if (ERRNO.test(m[1])) continue;
        const line = text.slice(0, m.index).split("\n").length;
        if (!used.has(m[1])) used.set(m[1], `${relative(SRC, file)}:${line}`);
      }
    }
  }
  // The scan itself works: codes from a plan step, an adapter's error class, a fallback and a log line.
  for (const code of ["IFB_NAME_TAKEN", "COMMAND_KILLED", "RECORD_VERSION", "INTERNAL", "HOOK_TIMEOUT"]) {
    assert.ok(used.has(code), `the scan of src found no use of ${code}`);
  }
  const unknown = [...used].filter(([code]) => !isErrorCode(code)).map(([code, at]) => `${code} (${at})`);
  assert.deepEqual(unknown, [], `codes used in src but not in src/core/errors.ts: ${unknown.join(", ")}`);
});
