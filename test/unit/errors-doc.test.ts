import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { ERRORS, EXIT } from "../../src/errors.js";

const DOC = fileURLToPath(new URL("../../docs/errors.md", import.meta.url));
const CODES = Object.keys(ERRORS);

test("every error code has a sane catalogue entry", () => {
  const exits = new Set<number>(Object.values(EXIT));
  for (const [code, info] of Object.entries(ERRORS)) {
    assert.match(code, /^[A-Z][A-Z0-9_]*$/, code);
    assert.ok(exits.has(info.exitCode), `${code}: exit code ${info.exitCode} is one of EXIT`);
    assert.notEqual(info.exitCode, EXIT.OK, code);
    assert.ok(info.summary.length > 0 && info.fix.length > 0, code);
  }
});

test("every error code in src/errors.ts is a heading in docs/errors.md", () => {
  if (!existsSync(DOC)) {
    assert.fail(
      `docs/errors.md does not exist (looked at ${DOC}); it must have a heading for each of: ${CODES.join(", ")}`,
    );
  }
  const headings = readFileSync(DOC, "utf8")
    .split("\n")
    .filter((l) => /^#{1,6}\s/.test(l));
  const missing = CODES.filter(
    (code) => !headings.some((h) => new RegExp(`(^|[^A-Z0-9_])${code}([^A-Z0-9_]|$)`).test(h)),
  );
  assert.deepEqual(missing, [], `docs/errors.md lacks a heading for: ${missing.join(", ")}`);
});
