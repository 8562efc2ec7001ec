// Recent requests: the server's last requests' peak memory by scheme (GET /v1/recent), as a
// strip chart that follows new requests: the memory-per-request view without a Grafana.

import { MIB, getRecent } from "./api.js";
import { SCHEME_COLOURS, stripChart } from "./charts.js";

const SHOWN = 100;
const EVERY_MS = 10000;
let busy = false;

export async function refreshRecent() {
  if (busy) return;
  busy = true;
  const status = document.getElementById("recent-status");
  try {
    const recent = await getRecent(SHOWN);
    const entries = recent.requests.map((entry) => {
      const mib = entry.peak_memory_bytes / MIB;
      const when = new Date(entry.time * 1000).toLocaleTimeString();
      const title = `${entry.scheme}: ${mib.toFixed(2)} MiB, ${entry.latency_ms.toFixed(0)} ms, ${when}`;
      return { scheme: entry.scheme, mib, title };
    });
    stripChart(
      document.getElementById("recent-chart"),
      entries,
      `Peak memory of the last ${entries.length} requests`,
    );
    status.textContent = entries.length
      ? `The last ${entries.length} requests to this server (from any client; it keeps ${recent.size}).`
      : "No requests yet.";
  } catch (problem) {
    status.textContent = `Recent requests unavailable: ${problem.message}`;
  } finally {
    busy = false;
  }
}

function buildSchemeKeys() {
  for (const key of document.querySelectorAll(".scheme-key")) {
    key.replaceChildren(
      ...Object.entries(SCHEME_COLOURS).map(([scheme, colour]) => {
        const item = document.createElement("li");
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.style.background = colour;
        item.append(swatch, document.createTextNode(scheme));
        return item;
      }),
    );
  }
}

// The colour keys, a first look, then a look every few seconds while the page is seen.
export function startRecent() {
  buildSchemeKeys();
  refreshRecent();
  setInterval(() => {
    if (document.visibilityState === "visible") refreshRecent();
  }, EVERY_MS);
}
