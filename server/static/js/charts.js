// Small SVG charts: bars for the active sites per level, scatter plots for the sweep and a
// strip chart for the recent requests. Each chart is redrawn whole into its <svg>, whose
// viewBox is fixed and whose CSS width follows the page; a chart also says its numbers in
// its aria-label, and the page prints them beside it.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 480;
const HEIGHT = 240;
const MARGIN = { top: 14, right: 16, bottom: 42, left: 58 };

export const SCHEME_COLOURS = {
  all: "#c0392b",
  pc: "#00798c",
  threshold: "#b7791f",
  budget: "#30638e",
};

function node(name, attributes = {}, text = null) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== null) element.textContent = text;
  return element;
}

function reset(svg, label) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
}

// About `count` round tick values from below `low` to at least `high`.
function ticks(low, high, count = 5) {
  const span = high - low || Math.abs(high) || 1;
  const raw = span / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const values = [];
  for (let v = Math.floor(low / step) * step; values.at(-1) === undefined || values.at(-1) < high; v += step) {
    values.push(Number(v.toPrecision(12)));
  }
  return values;
}

function linear(domain, range) {
  const [d0, d1] = domain;
  const [r0, r1] = range;
  return (v) => r0 + ((v - d0) / (d1 - d0 || 1)) * (r1 - r0);
}

// 524288 -> "524k": tick and bar labels stay short.
function compact(value) {
  if (value >= 1e6) return `${Number((value / 1e6).toPrecision(3))}M`;
  if (value >= 1e4) return `${Number((value / 1e3).toPrecision(3))}k`;
  return String(value);
}

function axes(svg, x, y, xTicks, yTicks, xLabel, yLabel, format = String) {
  const bottom = HEIGHT - MARGIN.bottom;
  const group = node("g", { class: "axis" });
  for (const value of yTicks) {
    group.append(node("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y(value), y2: y(value), class: "grid" }));
    group.append(node("text", { x: MARGIN.left - 6, y: y(value) + 4, "text-anchor": "end" }, format(value)));
  }
  for (const value of xTicks) {
    group.append(node("text", { x: x(value), y: bottom + 16, "text-anchor": "middle" }, String(value)));
  }
  group.append(node("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: bottom, y2: bottom }));
  group.append(node("text", { x: (MARGIN.left + WIDTH - MARGIN.right) / 2, y: HEIGHT - 6, "text-anchor": "middle", class: "label" }, xLabel));
  group.append(node("text", { x: 14, y: (MARGIN.top + bottom) / 2, "text-anchor": "middle", class: "label", transform: `rotate(-90 14 ${(MARGIN.top + bottom) / 2})` }, yLabel));
  svg.append(group);
}

// Bars on a log scale (counts span 512 to hundreds of thousands): [{label, value, note}].
export function barChart(svg, bars, label) {
  reset(svg, label);
  const bottom = HEIGHT - MARGIN.bottom;
  const decades = Math.max(1, Math.ceil(Math.log10(Math.max(1, ...bars.map((b) => b.value)))));
  const y = (v) => bottom - (Math.log10(Math.max(v, 1)) / decades) * (bottom - MARGIN.top);
  const yTicks = Array.from({ length: decades + 1 }, (_, i) => 10 ** i);
  const slot = (WIDTH - MARGIN.left - MARGIN.right) / bars.length;
  const x = (i) => MARGIN.left + slot * (i + 0.5);
  axes(svg, x, y, [], yTicks, "", "active sites (log)", compact);
  bars.forEach((bar, i) => {
    const top = y(bar.value);
    const rect = node("rect", { x: x(i) - slot * 0.35, y: top, width: slot * 0.7, height: bottom - top, class: "bar" });
    rect.append(node("title", {}, `${bar.label}: ${bar.value} (${bar.note})`));
    svg.append(rect);
    svg.append(node("text", { x: x(i), y: top - 4, "text-anchor": "middle", class: "value" }, compact(bar.value)));
    svg.append(node("text", { x: x(i), y: bottom + 16, "text-anchor": "middle" }, bar.label));
    svg.append(node("text", { x: x(i), y: bottom + 28, "text-anchor": "middle", class: "note" }, bar.note));
  });
}

// One circle a point, labelled: [{x, y, label, colour}].
export function scatterChart(svg, points, { xLabel, yLabel, label }) {
  reset(svg, label);
  if (!points.length) return;
  const xs = points.map((p) => p.x);
  const ys = points.map((p) => p.y);
  const xTicks = ticks(Math.min(...xs), Math.max(...xs));
  const yTicks = ticks(0, Math.max(...ys));
  const x = linear([xTicks[0], xTicks.at(-1)], [MARGIN.left + 8, WIDTH - MARGIN.right - 8]);
  const y = linear([0, yTicks.at(-1)], [HEIGHT - MARGIN.bottom, MARGIN.top]);
  axes(svg, x, y, xTicks, yTicks, xLabel, yLabel);
  const labelled = []; // where labels stand: one that would overprint another is left out
  for (const point of points) {
    const [cx, cy] = [x(point.x), y(point.y)];
    const circle = node("circle", { cx, cy, r: 5, fill: point.colour, class: "point" });
    circle.append(node("title", {}, `${point.label}: ${yLabel} ${point.y}; ${point.x} % of pixels as all`));
    svg.append(circle);
    if (labelled.some(([lx, ly]) => Math.abs(lx - cx) < 44 && Math.abs(ly - cy) < 12)) continue;
    labelled.push([cx, cy]);
    const right = cx > WIDTH * 0.75; // a label at the right edge reads leftwards
    svg.append(node("text", { x: cx + (right ? -7 : 7), y: cy - 6, "text-anchor": right ? "end" : "start", class: "note" }, point.label));
  }
}

// One bar a request, oldest on the left, coloured by scheme: [{scheme, mib}].
export function stripChart(svg, entries, label) {
  reset(svg, label);
  const yTicks = ticks(0, Math.max(1, ...entries.map((e) => e.mib)));
  const y = linear([0, yTicks.at(-1)], [HEIGHT - MARGIN.bottom, MARGIN.top]);
  const slot = (WIDTH - MARGIN.left - MARGIN.right) / Math.max(entries.length, 20);
  axes(svg, () => 0, y, [], yTicks, "requests, oldest → newest", "peak memory (MiB)");
  entries.forEach((entry, i) => {
    const top = y(entry.mib);
    const rect = node("rect", { x: MARGIN.left + slot * i + slot * 0.1, y: top, width: Math.max(slot * 0.8, 1), height: HEIGHT - MARGIN.bottom - top, fill: SCHEME_COLOURS[entry.scheme] || "#666", class: "request" });
    rect.append(node("title", {}, entry.title));
    svg.append(rect);
  });
}
