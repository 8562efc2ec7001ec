// The page at /: pick an image, turn the memory knob, see the quadtree and what it cost.

import { ApiProblem, MIB, getModel, minBudgetMb, segment } from "./api.js";
import { barChart } from "./charts.js";
import { agreement, classMap, drawLeaves, drawMask } from "./quadtree.js";
import { refreshRecent, startRecent } from "./recent.js";
import { drawSweep, ladder, settingLabel } from "./sweep.js";

const $ = (id) => document.getElementById(id);

const state = {
  model: null, // GET /v1/model
  visible: new Set(), // class ids drawn in the mask
  file: null, // the image being segmented (a File or a Blob with a name)
  bitmap: null, // the same image decoded by the browser, or null when it cannot
  result: null, // the answer on screen, and its class map
  map: null,
  reference: null, // this image's `all` answer and class map: the sweep's reference
  referenceMap: null,
  minBudgetMb: null, // this image's smallest feasible budget, from the API's 422
  finestMb: null, // this image's peak under τ 0.1, the sites a budget refines: the budget's top
  request: null, // AbortController of the request for the screen
  sweep: null, // AbortController of the sweep
};

function setStatus(text) {
  $("status").textContent = text;
}

function showError(problem) {
  const box = $("error");
  const status = problem.status ? `${problem.status} ${problem.code}: ` : "";
  box.textContent = `${status}${problem.message}`;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function setBusy(busy) {
  $("result").setAttribute("aria-busy", String(busy));
}

function currentSetting() {
  const scheme = document.querySelector('input[name="scheme"]:checked').value;
  if (scheme === "threshold") return { scheme, threshold: Number($("tau").value) };
  if (scheme === "budget") return { scheme, budget_mb: Number($("budget").value) };
  return { scheme };
}

function selectScheme(name) {
  document.querySelector(`input[name="scheme"][value="${name}"]`).checked = true;
}

// ---- the model: legend and defaults -------------------------------------------------------

function buildLegend(model) {
  const list = $("legend-list");
  list.replaceChildren();
  model.classes.forEach((name, id) => {
    state.visible.add(id);
    const label = document.createElement("label");
    label.className = "class-toggle";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = true;
    box.dataset.classId = String(id);
    box.addEventListener("change", () => {
      if (box.checked) state.visible.add(id);
      else state.visible.delete(id);
      redrawMask();
    });
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `rgb(${model.palette[id].join(",")})`;
    label.append(box, swatch, document.createTextNode(name));
    list.append(label);
  });
}

function setAllClasses(shown) {
  for (const box of $("legend-list").querySelectorAll("input")) {
    box.checked = shown;
    const id = Number(box.dataset.classId);
    if (shown) state.visible.add(id);
    else state.visible.delete(id);
  }
  redrawMask();
}

async function loadModel() {
  for (;;) {
    try {
      const model = await getModel();
      state.model = model;
      const cap = model.memory_budget_mb === null ? "none" : `${model.memory_budget_mb} MiB`;
      $("model-line").textContent =
        `${model.name} ${model.version} on ${model.device} · ${model.classes.length} classes · ` +
        `server memory cap per request: ${cap}`;
      $("limits").textContent =
        `PNG, JPEG, WebP, BMP or GIF, up to ${model.limits.max_upload_mb} MiB and ` +
        `${(model.limits.max_pixels / 1e6).toFixed(0)} megapixels.`;
      buildLegend(model);
      selectScheme(model.default_scheme);
      return;
    } catch (problem) {
      if (!(problem instanceof ApiProblem) || problem.status !== 503) throw problem;
      setStatus("The model is loading…");
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }
}

// ---- one image ----------------------------------------------------------------------------

async function useImage(file) {
  state.request?.abort();
  state.sweep?.abort();
  Object.assign(state, {
    file,
    result: null,
    map: null,
    reference: null,
    referenceMap: null,
    minBudgetMb: null,
    finestMb: null,
  });
  $("budget").disabled = true;
  $("budget-range").textContent = "Chosen when the budget scheme is first used for this image.";
  $("sweep-body").replaceChildren();
  try {
    state.bitmap = await createImageBitmap(file);
  } catch {
    state.bitmap = null; // the server has the last word on what is an image
  }
  $("sweep-button").disabled = false;
  await run();
}

// The current image's answer to `setting`; aborted if another image was chosen meanwhile.
async function segmentThisImage(setting, signal) {
  const file = state.file;
  const result = await segment(file, setting, signal);
  if (file !== state.file) throw new DOMException("the image changed", "AbortError");
  return result;
}

// The image's `all` answer, asked for once.
async function reference(signal) {
  if (!state.reference) {
    const result = await segmentThisImage({ scheme: "all" }, signal);
    state.reference = result;
    state.referenceMap = classMap(result);
  }
  return state.reference;
}

// A budget refines τ 0.1's sites, as many as fit (`model.schemes.BUDGET_THRESHOLD`).
const BUDGET_THRESHOLD = 0.1;

// The budget slider's range: from the image's minimum (the API's 422 names it) up to twice
// what τ 0.1 holds; a budget above that runs τ 0.1 itself, whatever `all` costs.
async function budgetRange(signal) {
  if (state.minBudgetMb === null) state.minBudgetMb = await minBudgetMb(state.file, signal);
  if (state.finestMb === null) {
    const finest = await segmentThisImage({ scheme: "threshold", threshold: BUDGET_THRESHOLD }, signal);
    state.finestMb = finest.stats.peak_memory_bytes / MIB;
  }
  const low = state.minBudgetMb;
  const high = Math.max(low, Math.ceil(2 * state.finestMb * 100) / 100);
  const slider = $("budget");
  if (slider.disabled) {
    slider.min = String(low);
    slider.max = String(high);
    slider.step = String(Math.max(0.01, Number(((high - low) / 100).toFixed(2))));
    slider.value = String(Math.sqrt(low * high).toFixed(2));
    slider.disabled = false;
    showBudget();
    $("budget-range").textContent =
      `From ${low.toFixed(2)} MiB (the smallest this image can run under) to ` +
      `${high.toFixed(2)} MiB (twice what τ 0.1 holds: a larger budget runs τ 0.1 itself).`;
  }
  return [low, high];
}

async function run() {
  if (!state.file) return;
  state.request?.abort();
  const controller = new AbortController();
  state.request = controller;
  clearError();
  setBusy(true);
  try {
    if (currentSetting().scheme === "budget") {
      setStatus("Finding this image's budget range (its minimum, and what τ 0.1 holds)…");
      await budgetRange(controller.signal);
    }
    const setting = currentSetting();
    setStatus(`Segmenting ${state.file.name} with ${settingLabel(setting)}…`);
    const result = await segment(state.file, setting, controller.signal);
    if (controller !== state.request) return;
    show(result);
    setStatus(`${state.file.name}, ${result.width}×${result.height}: ${settingLabel(setting)}.`);
  } catch (problem) {
    if (problem.name === "AbortError") return;
    if (problem.minBudgetMb !== null && problem.minBudgetMb !== undefined) {
      state.minBudgetMb = problem.minBudgetMb;
    }
    showError(problem);
    setStatus(`${state.file.name}: the server refused this request.`);
  } finally {
    if (controller === state.request) {
      state.request = null;
      setBusy(false);
    }
    refreshRecent();
  }
}

// ---- the answer on screen -----------------------------------------------------------------

function sizeCanvases(width, height) {
  for (const id of ["image-canvas", "mask-canvas", "leaf-canvas"]) {
    const canvas = $(id);
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
  }
  $("stage").style.aspectRatio = `${width} / ${height}`;
}

function redrawMask() {
  if (state.result) {
    drawMask($("mask-canvas"), state.result, state.map, state.model.palette, state.visible);
  }
}

// What kept scheme=auto from a more accurate setting, in words.
const AUTO_REASONS = {
  best: "the most accurate setting",
  memory: "a more accurate one did not fit the memory free now",
  max_memory: "a more accurate one was over the memory limit",
  deadline: "a more accurate one was predicted too slow",
};

function show(result) {
  state.result = result;
  state.map = classMap(result);
  const { width, height, stats } = result;
  sizeCanvases(width, height);
  const picture = $("image-canvas").getContext("2d");
  picture.fillStyle = "#777";
  picture.fillRect(0, 0, width, height);
  if (state.bitmap) picture.drawImage(state.bitmap, 0, 0, width, height);
  redrawMask();
  drawLeaves($("leaf-canvas"), result);
  $("stage").hidden = false;

  $("peak").textContent = `${(stats.peak_memory_bytes / MIB).toFixed(2)} MiB`;
  $("latency").textContent = `${stats.latency_ms.toFixed(1)} ms`;
  $("leaves").textContent = String(result.quadtree.leaves.length);
  $("ran").textContent = `${settingLabel(result)} on ${stats.device}`;
  $("auto-why").textContent = result.auto
    ? `${result.auto.setting}: ${AUTO_REASONS[result.auto.reason]} (predicted ` +
      `${result.auto.predicted_peak_mb} MiB of ${result.auto.free_memory_mb} MiB free)`
    : "–";
  const flags = [];
  if (result.capped) flags.push("capped by the server's memory budget");
  if (result.degraded) flags.push("degraded: retried under a tighter budget");
  $("flags").textContent = flags.join("; ") || "none";
  $("flags").classList.toggle("warn", flags.length > 0);
  const bars = stats.active_sites.map((count, level) => ({
    label: `L${level} (${32 >> level}px)`,
    value: count,
    note: `${(stats.active_fraction[level] * 100).toFixed(1)} %`,
  }));
  barChart(
    $("sites-chart"),
    bars,
    `Active sites per level: ${bars.map((b) => `${b.label} ${b.value}`).join(", ")}`,
  );
  $("figures").hidden = false;
}

// ---- the sweep ----------------------------------------------------------------------------

async function runSweep() {
  if (state.sweep) {
    state.sweep.abort();
    return;
  }
  const controller = new AbortController();
  const { signal } = controller;
  state.sweep = controller;
  const button = $("sweep-button");
  button.textContent = "Stop the sweep";
  const output = { memorySvg: $("sweep-memory"), latencySvg: $("sweep-latency"), tableBody: $("sweep-body") };
  const rows = [];
  clearError();
  try {
    $("sweep-status").textContent = "Running all (the reference) and finding the budget range…";
    await reference(signal);
    const [low, high] = await budgetRange(signal);
    const settings = ladder(low, high);
    for (const [index, setting] of settings.entries()) {
      $("sweep-status").textContent = `Setting ${index + 1} of ${settings.length}: ${settingLabel(setting)}…`;
      const result = setting.scheme === "all" ? state.reference : await segment(state.file, setting, signal);
      rows.push({ setting, result, agreement: agreement(classMap(result), state.referenceMap) });
      drawSweep(output, rows);
    }
    $("sweep-status").textContent = `Done: ${rows.length} settings.`;
  } catch (problem) {
    if (problem.name === "AbortError") {
      $("sweep-status").textContent = `Stopped after ${rows.length} settings.`;
    } else {
      showError(problem);
      $("sweep-status").textContent = "The sweep stopped on an error (above).";
    }
  } finally {
    state.sweep = null;
    button.textContent = "Run the sweep";
    refreshRecent();
  }
}

// ---- wiring -------------------------------------------------------------------------------

function showTau() {
  $("tau-out").value = Number($("tau").value).toFixed(2);
}

function showBudget() {
  $("budget-out").value = `${Number($("budget").value).toFixed(2)} MiB`;
}

function wire() {
  $("file").addEventListener("change", () => {
    const [file] = $("file").files;
    if (file) useImage(file);
  });
  const drop = $("drop");
  for (const kind of ["dragenter", "dragover"]) {
    drop.addEventListener(kind, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    const [file] = event.dataTransfer.files;
    if (file) useImage(file);
  });
  // A file dropped beside the zone must not make the browser leave the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  for (const button of document.querySelectorAll("button.example")) {
    button.addEventListener("click", async () => {
      const response = await fetch(button.dataset.src);
      const blob = await response.blob();
      useImage(new File([blob], button.dataset.src.split("/").pop(), { type: blob.type }));
    });
  }
  for (const radio of document.querySelectorAll('input[name="scheme"]')) {
    radio.addEventListener("change", run);
  }
  $("tau").addEventListener("input", showTau);
  $("tau").addEventListener("change", () => {
    selectScheme("threshold");
    run();
  });
  $("budget").addEventListener("input", showBudget);
  $("budget").addEventListener("change", () => {
    selectScheme("budget");
    run();
  });
  $("opacity").addEventListener("input", () => {
    $("mask-canvas").style.opacity = $("opacity").value;
    $("opacity-out").value = `${Math.round($("opacity").value * 100)} %`;
  });
  $("outlines").addEventListener("change", () => {
    $("leaf-canvas").hidden = !$("outlines").checked;
  });
  $("show-all").addEventListener("click", () => setAllClasses(true));
  $("hide-all").addEventListener("click", () => setAllClasses(false));
  $("sweep-button").addEventListener("click", runSweep);
}

async function start() {
  wire();
  showTau();
  startRecent();
  try {
    await loadModel();
    setStatus("Choose an image, drop one here, or try an example.");
  } catch (problem) {
    showError(problem);
  }
}

start();
