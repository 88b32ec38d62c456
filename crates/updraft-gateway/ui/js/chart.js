// Charts as SVG, drawn here: bars over time buckets, and the budget gauge.
// Each chart carries its numbers for everyone: an aria-label summary on the
// image, a data table under it, and `data-value` on every bar.

import { h, s, uid } from "./dom.js";

/** A round upper bound for the axis: 1, 2 or 5 times a power of ten. */
function niceMax(max) {
  if (!(max > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(max));
  for (const step of [1, 2, 5, 10]) {
    if (step * power >= max) return step * power;
  }
  return 10 * power;
}

/**
 * A bar chart in `host` (already in the page, so its width is known).
 * `buckets`: [{label, short, value}]; `format` renders a value as text.
 */
export function barChart(host, { title, buckets, format, unit, alt = false }) {
  const width = Math.max(280, Math.floor(host.clientWidth || 600));
  const height = 200;
  const max = niceMax(Math.max(0, ...buckets.map((b) => b.value)));
  // Room on the left for the longest axis label (about 7 px a character).
  const longest = Math.max(...[0, max / 2, max].map((tick) => format(tick).length));
  const pad = { left: Math.max(32, 12 + longest * 7), right: 8, top: 12, bottom: 28 };
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const slot = plotW / Math.max(1, buckets.length);
  const barW = Math.max(2, slot * 0.7);
  const total = buckets.reduce((sum, b) => sum + b.value, 0);
  const peak = buckets.reduce((best, b) => (b.value > best.value ? b : best), { value: -1 });
  const summary = total > 0
    ? `${title}: ${format(total)} in all over ${buckets.length} ${unit}s; the most, ${format(peak.value)}, at ${peak.label}.`
    : `${title}: nothing in these ${buckets.length} ${unit}s.`;

  const captionId = uid("chart");
  const svg = s("svg", {
    viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
    "aria-label": summary, "data-total": total, "data-max": max,
  });
  const y = (value) => pad.top + plotH - (value / max) * plotH;
  for (const tick of [0, max / 2, max]) {
    svg.append(
      s("line", { className: tick === 0 ? "axis" : "grid-line", x1: pad.left, x2: width - pad.right, y1: y(tick), y2: y(tick) }),
      s("text", { x: pad.left - 6, y: y(tick) + 4, "text-anchor": "end" }, format(tick)),
    );
  }
  // Label about six buckets, whatever their number.
  const labelEvery = Math.max(1, Math.ceil(buckets.length / 6));
  buckets.forEach((bucket, i) => {
    const barH = (bucket.value / max) * plotH;
    const x = pad.left + i * slot + (slot - barW) / 2;
    svg.append(s("rect", {
      className: alt ? "bar alt" : "bar",
      x: x.toFixed(1), y: (pad.top + plotH - barH).toFixed(1),
      width: barW.toFixed(1), height: barH.toFixed(2),
      "data-label": bucket.label, "data-value": bucket.value,
    }, s("title", {}, `${bucket.label}: ${format(bucket.value)}`)));
    if (i % labelEvery === 0) {
      svg.append(s("text", { x: (x + barW / 2).toFixed(1), y: height - 8, "text-anchor": "middle" }, bucket.short));
    }
  });

  const rows = buckets.map((b) => h("tr", {}, h("th", { scope: "row" }, b.label), h("td", { className: "num" }, format(b.value))));
  const data = h("details", {},
    h("summary", {}, `${title}: data table`),
    h("div", { className: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, unit), h("th", { scope: "col", className: "num" }, title))),
      h("tbody", {}, rows))));
  const figure = h("figure", { className: "chart", "aria-labelledby": captionId },
    h("figcaption", { id: captionId }, title), svg, h("p", { className: "visually-hidden" }, summary), data);
  host.replaceChildren(figure);
  return figure;
}

/** A half-circle gauge of `fraction` (0..1, drawn capped at 1). */
export function gauge({ fraction, label, text }) {
  const f = Math.max(0, Math.min(1, fraction));
  const r = 80;
  const cx = 100;
  const cy = 96;
  const start = `${cx - r} ${cy}`;
  const angle = Math.PI * (1 - f);
  const end = `${(cx + r * Math.cos(angle)).toFixed(2)} ${(cy - r * Math.sin(angle)).toFixed(2)}`;
  const level = fraction >= 1 ? "bad" : fraction >= 0.8 ? "warn" : "";
  const svg = s("svg", { viewBox: "0 0 200 120", role: "img", "aria-label": label, className: "gauge", "data-fraction": fraction.toFixed(4) },
    s("path", { className: "track", d: `M ${start} A ${r} ${r} 0 0 1 ${cx + r} ${cy}` }),
    f > 0 ? s("path", { className: `value ${level}`, d: `M ${start} A ${r} ${r} 0 0 1 ${end}` }) : null,
    s("text", { x: cx, y: cy - 8, "text-anchor": "middle" }, text));
  return svg;
}
