// A small, dependency-free SVG line chart: throughput over time per guest, with the configured guarantees
// and ceilings drawn as dashed lines and the phases of the run shaded, so borrowing shows at a glance.

export interface Series {
  name: string;
  color: string;
  points: [number, number][];
}

export interface RefLine {
  label: string;
  value: number;
  color: string;
}

export interface Phase {
  label: string;
  start: number;
  end: number;
}

export interface Panel {
  title: string;
  series: Series[];
  refLines: RefLine[];
  phases: Phase[];
}

const W = 960;
const PANEL_H = 300;
const M = { left: 60, right: 170, top: 40, bottom: 40 };

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

export function renderChart(title: string, panels: Panel[], unit = "Mbit/s"): string {
  const height = panels.length * (PANEL_H + M.top + M.bottom) + 30;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${height}" viewBox="0 0 ${W} ${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${W / 2}" y="20" text-anchor="middle" font-size="16" font-weight="bold">${esc(title)}</text>`,
  ];
  panels.forEach((p, i) => {
    const top = 30 + i * (PANEL_H + M.top + M.bottom) + M.top;
    const plotW = W - M.left - M.right;
    const tMax = Math.max(
      1,
      ...p.phases.map((ph) => ph.end),
      ...p.series.flatMap((s) => s.points.map(([t]) => t)),
    );
    const vMax =
      Math.max(1, ...p.refLines.map((r) => r.value), ...p.series.flatMap((s) => s.points.map(([, v]) => v))) *
      1.15;
    const x = (t: number) => M.left + (t / tMax) * plotW;
    const y = (v: number) => top + PANEL_H - (v / vMax) * PANEL_H;
    parts.push(
      `<text x="${M.left}" y="${top - 12}" font-size="14" font-weight="bold">${esc(p.title)}</text>`,
    );
    p.phases.forEach((ph, k) => {
      parts.push(
        `<rect x="${x(ph.start)}" y="${top}" width="${Math.max(0, x(ph.end) - x(ph.start))}" height="${PANEL_H}" fill="${k % 2 ? "#f4f4f4" : "#fbfbfb"}"/>`,
        `<text x="${(x(ph.start) + x(ph.end)) / 2}" y="${top + 14}" text-anchor="middle" fill="#555">${esc(ph.label)}</text>`,
      );
    });
    for (let k = 0; k <= 5; k++) {
      const v = (vMax / 5) * k;
      parts.push(
        `<line x1="${M.left}" x2="${M.left + plotW}" y1="${y(v)}" y2="${y(v)}" stroke="#e0e0e0"/>`,
        `<text x="${M.left - 6}" y="${y(v) + 4}" text-anchor="end">${v.toFixed(0)}</text>`,
      );
    }
    for (let t = 0; t <= tMax; t += Math.max(1, Math.ceil(tMax / 12))) {
      parts.push(`<text x="${x(t)}" y="${top + PANEL_H + 16}" text-anchor="middle">${t}s</text>`);
    }
    parts.push(
      `<text x="14" y="${top + PANEL_H / 2}" transform="rotate(-90 14 ${top + PANEL_H / 2})" text-anchor="middle">${esc(unit)}</text>`,
      `<rect x="${M.left}" y="${top}" width="${plotW}" height="${PANEL_H}" fill="none" stroke="#999"/>`,
    );
    for (const r of p.refLines) {
      parts.push(
        `<line x1="${M.left}" x2="${M.left + plotW}" y1="${y(r.value)}" y2="${y(r.value)}" stroke="${r.color}" stroke-dasharray="6 4" stroke-width="1.5"/>`,
      );
    }
    p.refLines.forEach((r, k) => {
      const ly = top + 40 + k * 18;
      parts.push(
        `<line x1="${M.left + plotW + 10}" x2="${M.left + plotW + 34}" y1="${ly}" y2="${ly}" stroke="${r.color}" stroke-dasharray="6 4" stroke-width="1.5"/>`,
        `<text x="${M.left + plotW + 40}" y="${ly + 4}">${esc(r.label)}</text>`,
      );
    });
    p.series.forEach((s, k) => {
      if (s.points.length) {
        // A gap in the samples (the guest was idle between phases) breaks the line instead of bridging it.
        const d = s.points
          .map(
            ([t, v], n) =>
              `${n && t - s.points[n - 1][0] <= 0.6 ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`,
          )
          .join(" ");
        parts.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="2"/>`);
      }
      const ly = top + 40 + (p.refLines.length + k) * 18 + 10;
      parts.push(
        `<line x1="${M.left + plotW + 10}" x2="${M.left + plotW + 34}" y1="${ly}" y2="${ly}" stroke="${s.color}" stroke-width="3"/>`,
        `<text x="${M.left + plotW + 40}" y="${ly + 4}">${esc(s.name)}</text>`,
      );
    });
  });
  parts.push("</svg>");
  return `${parts.join("\n")}\n`;
}
