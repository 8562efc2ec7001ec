// The sweep: one image along the knob's ladder, each setting's cost against how much of its
// mask agrees with `all`'s (an upload has no ground truth, so `all` is the reference).

import { MIB } from "./api.js";
import { SCHEME_COLOURS, scatterChart } from "./charts.js";

export const THRESHOLDS = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1];
const BUDGET_SHARES = [0.15, 0.4, 0.7]; // of the way from the image's minimum to the budget's top

// Every setting of the ladder, the budgets placed between this image's floor and the top of
// its budget range (twice what τ 0.1 holds: above it a budget runs τ 0.1 itself).
export function ladder(minBudgetMb, topMb) {
  const budgets =
    topMb > minBudgetMb
      ? BUDGET_SHARES.map((share) => minBudgetMb + share * (topMb - minBudgetMb))
      : [minBudgetMb];
  return [
    ...THRESHOLDS.map((threshold) => ({ scheme: "threshold", threshold })),
    { scheme: "pc" },
    { scheme: "all" },
    ...budgets.map((mb) => ({ scheme: "budget", budget_mb: Math.ceil(mb * 100) / 100 })),
  ];
}

export function settingLabel(setting) {
  if (setting.scheme === "threshold") return `τ ${Number(setting.threshold.toFixed(2))}`;
  if (setting.scheme === "budget") return `budget ${setting.budget_mb.toFixed(2)} MiB`;
  return setting.scheme;
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text;
  row.append(td);
}

// rows: [{setting, result, agreement}] -> the two scatter plots and the table.
export function drawSweep({ memorySvg, latencySvg, tableBody }, rows) {
  const points = (value) =>
    rows.map((row) => ({
      x: Number((row.agreement * 100).toFixed(2)),
      y: value(row.result.stats),
      label: settingLabel(row.setting).replace("budget ", ""),
      colour: SCHEME_COLOURS[row.setting.scheme],
    }));
  const peak = (stats) => Number((stats.peak_memory_bytes / MIB).toFixed(2));
  const latency = (stats) => Math.round(stats.latency_ms);
  scatterChart(memorySvg, points(peak), {
    xLabel: "pixels agreeing with all's mask (%)",
    yLabel: "peak memory (MiB)",
    label: `Sweep: peak memory against agreement with all, ${rows.length} settings`,
  });
  scatterChart(latencySvg, points(latency), {
    xLabel: "pixels agreeing with all's mask (%)",
    yLabel: "latency (ms)",
    label: `Sweep: latency against agreement with all, ${rows.length} settings`,
  });
  tableBody.replaceChildren(
    ...rows.map(({ setting, result, agreement }) => {
      const row = document.createElement("tr");
      cell(row, settingLabel(setting));
      cell(row, peak(result.stats).toFixed(2));
      cell(row, String(latency(result.stats)));
      cell(row, (agreement * 100).toFixed(2));
      cell(row, [result.capped && "capped", result.degraded && "degraded"].filter(Boolean).join(", ") || "–");
      return row;
    }),
  );
}
