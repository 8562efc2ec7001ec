"""Turns the measurements of one `benchmarks.run` into JSON, a Markdown report and plots.

Derived here, from the measured numbers of the same run only: the growth exponent k of each
configuration (memory ∝ pixels^k, least squares on log–log), the product targets (met or
missed), and a profile of what dominates the memory (measured phases, cost-model terms).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from model.cost import (
    COORD_BYTES_PER_SITE,
    FLOAT_BYTES,
    LIVE_TENSORS_PER_SITE,
    RULEBOOK_BYTES_PER_SITE,
)

TARGET_SIZE = "1024x2048"
PEAK_VS_ALL = 0.5
PEAK_VS_DILATED = 0.25
LATENCY_VS_ALL = 0.6
SITES_VS_ORACLE = 1.5
DECODER_EXPONENT = 0.75
PROFILED = ("all", "pc", "dense", "dilated")


def growth_exponent(pixels: list[float], values: list[float]) -> float | None:
    """k in value ∝ pixels^k by least squares on log–log; None without two distinct sizes
    or with a value that is not positive."""
    if len(set(pixels)) < 2 or min(values, default=0) <= 0:
        return None
    slope, _ = np.polyfit(np.log(pixels), np.log(values), 1)
    return float(slope)


def ok_results(report: dict) -> list[dict]:
    return [r for r in report["results"] if r.get("status") == "ok"]


def find(report: dict, name: str, size: str) -> dict | None:
    for result in ok_results(report):
        if result["name"] == name and f"{result['height']}x{result['width']}" == size:
            return result
    return None


def fit_all(report: dict) -> dict:
    """Growth exponents per configuration: peak, decoder (cost model, sum of levels; and
    measured), latency and max-RSS delta."""
    fits = {}
    names = dict.fromkeys(r["name"] for r in ok_results(report))
    for name in names:
        rows = sorted(
            (r for r in ok_results(report) if r["name"] == name), key=lambda r: r["pixels"]
        )
        pixels = [r["pixels"] for r in rows]
        fit = {
            "sizes": [f"{r['height']}x{r['width']}" for r in rows],
            "peak": growth_exponent(pixels, [r["peak_bytes"] for r in rows]),
            "latency": growth_exponent(pixels, [r["latency_s"]["median"] for r in rows]),
            "max_rss_delta": growth_exponent(pixels, [r["max_rss_delta_bytes"] for r in rows]),
        }
        if all("decoder_bytes" in r for r in rows):
            fit["decoder"] = growth_exponent(pixels, [r["decoder_bytes"] for r in rows])
            fit["decoder_measured"] = growth_exponent(
                pixels, [r["decoder_measured_bytes"] for r in rows]
            )
        fits[name] = fit
    return fits


def target_size(report: dict) -> str:
    """1024x2048 where all, pc and the dilated baseline ran there, else the largest size."""
    sizes = report["settings"]["sizes"]
    if TARGET_SIZE in sizes:
        return TARGET_SIZE
    return max(sizes, key=lambda s: math.prod(int(p) for p in s.split("x")))


def ratio(numerator: float, denominator: float) -> float | None:
    if denominator > 0:
        return numerator / denominator
    return 0.0 if numerator == 0 else None  # None: infinite


def check(name: str, measured: float | None, limit: float, note: str = "") -> dict:
    met = None if measured is None else measured <= limit
    if measured is None and not note:
        note = "not measured"
    return {"target": name, "measured": measured, "limit": limit, "met": met, "note": note}


def evaluate_targets(report: dict, fits: dict) -> list[dict]:
    size = target_size(report)
    where = "" if size == TARGET_SIZE else f"measured at {size}, not {TARGET_SIZE}"
    pc, all_, dilated, oracle, floor = (
        find(report, n, size) for n in ("pc", "all", "dilated", "oracle", "none")
    )
    targets = []
    for other, other_name, limit in (
        (all_, "all", PEAK_VS_ALL),
        (dilated, "dilated", PEAK_VS_DILATED),
    ):
        name = f"pc peak ≤ {limit} × {other_name} peak ({size})"
        if not (pc and other):
            targets.append(check(name, None, limit))
            continue
        entry = check(name, pc["peak_bytes"] / other["peak_bytes"], limit, where)
        if entry["met"] is False:
            entry["note"] = "; ".join(filter(None, [where, why_pc_peaks(pc, other, floor)]))
        targets.append(entry)
    name = f"pc median latency ≤ {LATENCY_VS_ALL} × all ({size})"
    if pc and all_:
        value = pc["latency_s"]["median"] / all_["latency_s"]["median"]
        entry = check(name, value, LATENCY_VS_ALL, where)
        if entry["met"] is False and floor:
            share = floor["latency_s"]["median"] / all_["latency_s"]["median"]
            entry["note"] = "; ".join(
                filter(None, [where, f"refining nothing already takes {share:.2f} × all"])
            )
        targets.append(entry)
    else:
        targets.append(check(name, None, LATENCY_VS_ALL))
    name = f"pc active sites ≤ {SITES_VS_ORACLE} × oracle at every level ({size})"
    if pc and oracle:
        ratios = [
            ratio(p, o) for p, o in zip(pc["active_sites"], oracle["active_sites"], strict=True)
        ]
        worst = None if None in ratios else max(ratios)
        entry = check(name, worst, SITES_VS_ORACLE, where)
        if worst is None:
            entry["met"] = False
            entry["note"] = "pc refines a level the oracle does not reach (ratio infinite)"
        entry["per_level"] = ratios
        targets.append(entry)
    else:
        targets.append(check(name, None, SITES_VS_ORACLE))
    pc_fit = fits.get("pc", {})
    sizes = ", ".join(pc_fit.get("sizes", []))
    targets.append(
        check(
            f"growth exponent of pc decoder bytes ≤ {DECODER_EXPONENT} ({sizes})",
            pc_fit.get("decoder"),
            DECODER_EXPONENT,
        )
    )
    return targets


def why_pc_peaks(pc: dict, other: dict, floor: dict | None) -> str:
    """Where pc's peak sits, and what refining nothing at all would cost against `other`."""
    phases = pc["phase_peaks"]
    top = max(phases, key=phases.get) if phases else "?"
    text = f"pc peaks in `{top}`"
    if floor:
        text += (
            f"; refining nothing (scheme `none`) already peaks at "
            f"{floor['peak_bytes'] / other['peak_bytes']:.2f} × this"
        )
    return text


def cost_breakdown(result: dict, decoder_widths: list[int]) -> list[dict]:
    """The cost model's terms per decoder level of the costliest scene: activations (the
    live float tensors of a sparse block, plus the parent's floats per child), rulebook
    (index pairs), coordinates, the fixed filter copies, and what calibration measured on
    top of the analytic terms."""
    worst = max(result["per_scene"], key=lambda s: s["peak_bytes"])
    cost = result["cost"]
    rows = []
    for level, sites in enumerate(worst["active_sites"]):
        if level == 0 or sites == 0:
            rows.append({"level": level, "sites": sites})
            continue
        activations = FLOAT_BYTES * (LIVE_TENSORS_PER_SITE * decoder_widths[level])
        activations += decoder_widths[level - 1]
        analytic = activations + RULEBOOK_BYTES_PER_SITE + COORD_BYTES_PER_SITE
        rows.append(
            {
                "level": level,
                "sites": sites,
                "activations_bytes": sites * activations,
                "rulebook_bytes": sites * RULEBOOK_BYTES_PER_SITE,
                "coords_bytes": sites * COORD_BYTES_PER_SITE,
                "filters_bytes": cost["stage_bytes"][level],
                "calibration_extra_bytes": sites * max(cost["site_bytes"][level] - analytic, 0),
            }
        )
    return rows


def profile(report: dict) -> dict:
    size = target_size(report)
    phases = {}
    for name in PROFILED:
        result = find(report, name, size)
        if result:
            phases[name] = {
                phase: {"start_bytes": result["phase_starts"].get(phase, 0), "peak_bytes": peak}
                for phase, peak in result["phase_peaks"].items()
            }
    widths = (report["calibration"].get("model_config") or {}).get("decoder_widths")
    terms = {}
    for name in ("all", "pc"):
        result = find(report, name, size)
        if result and widths:
            terms[name] = cost_breakdown(result, widths)
    return {"size": size, "phases": phases, "cost_terms": terms}


# ---- Markdown ------------------------------------------------------------------------------


def _mib(value: float | None) -> str:
    return "–" if value is None else f"{value / 2**20:,.1f}"


def _count(value: int) -> str:
    if value >= 10**6:
        return f"{value / 1e6:.1f}M"
    if value >= 10**4:
        return f"{value / 1e3:.0f}k"
    return str(value)


def _k(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def _met(entry: dict) -> str:
    return {True: "**met**", False: "**MISSED**", None: "not measured"}[entry["met"]]


def _measured(entry: dict) -> str:
    value = entry["measured"]
    if value is None:
        return "∞" if entry["met"] is False else "–"
    return f"{value:.3f}"


def markdown(report: dict) -> str:
    machine = report["machine"]
    settings = report["settings"]
    lines = [f"# QGN Serve benchmark — {machine['slug']}, {report['date']}", ""]
    if report["random_weights"]:
        lines += [
            f"> **Random weights** (`--weights random`, untrained `{report['model']}`): memory "
            "and latency of `pc`, `threshold`, `budget` depend on what the network predicts, "
            "so these numbers say nothing about the shipped model; mIoU is meaningless.",
            "",
        ]
    if settings["quick"]:
        lines += ["> **`--quick`**: tiny sizes and runs, a smoke test; not a measurement.", ""]
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items() if v)
    load = report["load_average"]
    lines += [
        f"- machine: {machine['cpu']}, {machine['cpu_count']} CPUs, "
        f"{machine['memory_gib']} GiB, torch threads {machine['torch_threads']}; "
        f"{machine['platform']}",
        f"- versions: {versions}",
        f"- load average (1/5/15 min) at start {load['start']}, at end {load['end']}"
        " — other work on the machine inflates and scatters latency",
        f"- weights: `{report['weights']}`{weights_line(report)}; command: `{report['command']}`",
        f"- scenes: {settings['scenes']} held-out synthetic scenes per size "
        f"(seeds {settings['seeds']}); {settings['runs']} timed runs per configuration after "
        "one warm-up, round robin over the scenes; every configuration in a fresh process"
        + (
            f", **{settings['jobs']} at once** (they shared the cores: latencies not clean)"
            if settings.get("jobs", 1) > 1
            else ", one at a time"
        ),
        f"- wall time {report['wall_time_s']:.0f} s",
        "",
        "Peak = the allocation tracker's peak (`Prediction.peak_bytes`: tensors allocated "
        "during the inference, not weights), worst scene. RSS Δ = how far the process' RSS "
        "rose above its level before the measured inferences (high-water mark reset after "
        "loading and a tiny primer inference; a cross-check that also sees allocator caching, "
        "oneDNN scratch buffers and heap that is freed but kept). Decoder = the cost model's "
        "bytes summed over levels (`Prediction.decoder_bytes`). Sites = active sites per "
        "level 0..5, summed over the scenes. Latency = `Prediction.latency_s` (upload to "
        "finished mask, including the allocation tracker's bookkeeping, the same for the "
        "baselines). mIoU over the scenes measured (12 classes, ignore excluded). `none` = "
        "refine nothing (a 1-byte budget): the floor every scheme pays (encoder, level 0, "
        "mask). Budgets `budget-N` sit N % of the way from the calibrated minimum to the "
        "`all` peak of the same size.",
        "",
        "## Targets",
        "",
        "| target | measured | limit | result |",
        "|---|---|---|---|",
    ]
    for entry in report["targets"]:
        note = f" ({entry['note']})" if entry["note"] else ""
        lines.append(
            f"| {entry['target']} | {_measured(entry)} | {entry['limit']} | {_met(entry)}{note} |"
        )
    for entry in report["targets"]:
        if "per_level" in entry:
            ratios = ["∞" if r is None else f"{r:.2f}" for r in entry["per_level"]]
            lines += ["", f"pc / oracle active sites per level: {' / '.join(ratios)}"]
    lines += [
        "",
        "## Results",
        "",
        "| size | config | peak MiB | RSS Δ MiB | decoder MiB | sites per level | "
        "median ms | p90 ms | mIoU |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for result in report["results"]:
        size = f"{result['height']}x{result['width']}"
        if result.get("status") != "ok":
            cells = " | ".join(["–"] * 6)
            lines.append(f"| {size} | {result['name']} | {result['status']} (below) | {cells} |")
            continue
        sites = "/".join(_count(s) for s in result.get("active_sites", [])) or "dense"
        miou = "null" if result.get("miou") is None else f"{result['miou']:.3f}"
        name = result["name"]
        if "budget_bytes" in result["config"]:
            budget = result["config"]["budget_bytes"]
            name += f" (≤ {_mib(budget)}{'' if result['peak_bytes'] <= budget else ', EXCEEDED'})"
        lines.append(
            f"| {size} | {name} | {_mib(result['peak_bytes'])} | "
            f"{_mib(result['max_rss_delta_bytes'])} | {_mib(result.get('decoder_bytes'))} | "
            f"{sites} | {result['latency_s']['median'] * 1e3:,.0f} | "
            f"{result['latency_s']['p90'] * 1e3:,.0f} | {miou} |"
        )
    lines += [
        "",
        "## Growth exponents (memory ∝ pixels^k, least squares on log–log)",
        "",
        "| config | sizes | k peak | k decoder (cost model) | k decoder (measured) | "
        "k RSS Δ | k latency |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, fit in report["fits"].items():
        lines.append(
            f"| {name} | {', '.join(fit['sizes'])} | {_k(fit['peak'])} | "
            f"{_k(fit.get('decoder'))} | {_k(fit.get('decoder_measured'))} | "
            f"{_k(fit['max_rss_delta'])} | {_k(fit['latency'])} |"
        )
    lines += exponent_note(report)
    lines += profile_markdown(report["profile"])
    skipped = [r for r in report["results"] if r.get("status") != "ok"]
    if skipped:
        lines += ["", "## Not measured", ""]
        for reason in dict.fromkeys(f"{r['name']}: {r['reason']}" for r in skipped):
            lines.append(f"- {reason}")
    lines += ["", "Plots: `" + "`, `".join(report["plots"]) + "`.", ""]
    return "\n".join(lines)


def exponent_note(report: dict) -> list[str]:
    """Why pc's whole peak may grow faster than its decoder: where the peak sits per size."""
    fit = report["fits"].get("pc", {})
    if fit.get("peak") is None or fit.get("decoder") is None:
        return []
    rows = sorted((r for r in ok_results(report) if r["name"] == "pc"), key=lambda r: r["pixels"])
    where = ", ".join(
        f"{r['height']}x{r['width']} `{max(r['phase_peaks'], key=r['phase_peaks'].get)}`"
        for r in rows
        if r["phase_peaks"]
    )
    return [
        "",
        f"`pc`: whole peak k = {fit['peak']:.2f}, decoder k = {fit['decoder']:.2f} (cost model) "
        f"/ {_k(fit.get('decoder_measured'))} (measured). Its peak sits in: {where}; a dense "
        "phase (encoder, level 0) grows linearly with the pixels whatever the scheme.",
    ]


def weights_line(report: dict) -> str:
    card = report["calibration"].get("card") or {}
    parts = []
    if card.get("weights_sha256"):
        parts.append(f"sha256 {card['weights_sha256'][:12]}")
    training = card.get("training") or {}
    if training.get("steps"):
        parts.append(f"trained {training['steps']} steps on {card.get('dataset', '?')}")
    return f" ({', '.join(parts)})" if parts else ""


def profile_markdown(profile: dict) -> list[str]:
    size = profile["size"]
    lines = [
        "",
        f"## What dominates the memory ({size}, costliest scene)",
        "",
        "Measured phases (`Prediction.phase_peaks` / `phase_starts`): *held* is what was "
        "live when the phase began (encoder skips, earlier levels' outputs), *peak* the "
        "highest the window went during the phase.",
        "",
    ]
    for name, phases in profile["phases"].items():
        top = max(phases, key=lambda p: phases[p]["peak_bytes"])
        held, peak = phases[top]["start_bytes"], phases[top]["peak_bytes"]
        cells = ", ".join(
            f"{phase} {_mib(v['start_bytes'])} → {_mib(v['peak_bytes'])}"
            for phase, v in phases.items()
        )
        lines.append(
            f"- **{name}**: peak in `{top}` ({_mib(peak)} MiB: {_mib(held)} held + "
            f"{_mib(peak - held)} added). Held → peak MiB per phase: {cells}"
        )
    for name, rows in profile["cost_terms"].items():
        if not any("activations_bytes" in row for row in rows):
            lines += ["", f"`{name}` refined no sparse level: its decoder is level 0 only."]
            continue
        lines += [
            "",
            f"Cost-model terms of `{name}` per sparse level (MiB; the model's estimate of "
            "each stage's working set):",
            "",
            "| level | sites | activations | rulebook (index pairs) | coords | filters | "
            "calibration extra |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        keys = ("activations", "rulebook", "coords", "filters", "calibration_extra")
        totals = {k: sum(r.get(f"{k}_bytes", 0) for r in rows) for k in keys}
        for row in rows:
            if "activations_bytes" not in row:
                continue
            lines.append(
                f"| {row['level']} | {_count(row['sites'])} | {_mib(row['activations_bytes'])} | "
                f"{_mib(row['rulebook_bytes'])} | {_mib(row['coords_bytes'])} | "
                f"{_mib(row['filters_bytes'])} | {_mib(row['calibration_extra_bytes'])} |"
            )
        cells = " | ".join(_mib(v) for v in totals.values())
        index_share = (totals["rulebook"] + totals["coords"]) / max(sum(totals.values()), 1)
        lines += [
            f"| all levels | {_count(sum(r['sites'] for r in rows[1:]))} | {cells} |",
            "",
            f"Index pairs and coordinates are {index_share:.0%} of `{name}`'s modelled "
            "decoder bytes, activations "
            f"{totals['activations'] / max(sum(totals.values()), 1):.0%}.",
        ]
    return lines


# ---- Plots ---------------------------------------------------------------------------------


def plot_colours(names: list[str], plt) -> dict:
    """Strong fixed colours for the headline configurations, graded ones for the knobs."""
    fixed = {
        "all": "#1f3b99",
        "pc": "#d62728",
        "oracle": "#2ca02c",
        "none": "#7f7f7f",
        "dense": "#17becf",
        "dilated": "#ff7f0e",
    }
    thresholds = [n for n in names if n.startswith("threshold")]
    budgets = [n for n in names if n.startswith("budget")]
    colours = {}
    for group, cmap in ((thresholds, "YlOrBr"), (budgets, "Purples")):
        for i, name in enumerate(group):
            colours[name] = plt.get_cmap(cmap)(0.35 + 0.6 * i / max(len(group) - 1, 1))
    other = plt.get_cmap("tab10").colors
    for i, name in enumerate(names):
        colours.setdefault(name, fixed.get(name, other[i % len(other)]))
    return colours


def plot(report: dict, folder: Path, stem: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    results = ok_results(report)
    names = list(dict.fromkeys(r["name"] for r in results))
    colours = plot_colours(names, plt)
    memory_path = folder / f"{stem}-memory.png"
    figure, axes = plt.subplots(figsize=(8, 6))
    for name in names:
        rows = sorted((r for r in results if r["name"] == name), key=lambda r: r["pixels"])
        family = rows[0]["family"]
        k = report["fits"].get(name, {}).get("peak")
        label = name if k is None else f"{name} (k={k:.2f})"
        axes.plot(
            [r["pixels"] for r in rows],
            [r["peak_bytes"] / 2**20 for r in rows],
            marker="o" if family == "qgn" else "s",
            linestyle="-" if family == "qgn" else "--",
            color=colours[name],
            linewidth=2.5 if name in PROFILED else 1.2,
            zorder=3 if name in PROFILED else 2,
            label=label,
        )
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("pixels per image")
    axes.set_ylabel("peak memory (MiB, allocation tracker)")
    axes.set_title(f"Peak memory against image size — {report['machine']['slug']}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="upper left", ncol=2)
    figure.tight_layout()
    figure.savefig(memory_path, dpi=110)
    plt.close(figure)

    miou_path = folder / f"{stem}-miou.png"
    figure, axes = plt.subplots(figsize=(8, 6))
    sizes = list(dict.fromkeys(f"{r['height']}x{r['width']}" for r in results))
    markers = dict(zip(sizes, "os^Dvp*", strict=False))
    shown = set()
    for result in results:
        if result.get("miou") is None or not math.isfinite(result["miou"]):
            continue
        size = f"{result['height']}x{result['width']}"
        axes.scatter(
            result["peak_bytes"] / 2**20,
            result["miou"],
            marker=markers.get(size, "o"),
            color=colours[result["name"]],
        )
        shown.add(result["name"])
    handles = [
        Line2D([], [], marker="o", linestyle="", color=colours[n], label=n)
        for n in names
        if n in shown
    ]
    handles += [
        Line2D([], [], marker=markers[size], linestyle="", color="grey", label=size)
        for size in sizes
    ]
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(ScalarFormatter())
    axes.xaxis.set_minor_formatter(NullFormatter())
    axes.set_xlabel("peak memory (MiB, allocation tracker)")
    axes.set_ylabel("mIoU (held-out synthetic scenes)")
    title = "mIoU against memory"
    if report["random_weights"]:
        title += " (RANDOM WEIGHTS: mIoU meaningless)"
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(handles=handles, fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(miou_path, dpi=110)
    plt.close(figure)
    return [memory_path, miou_path]


def write_report(report: dict, folder: Path, stem: str) -> dict[str, Path]:
    """Adds fits, targets and the profile to `report`; writes JSON, Markdown and plots."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    report["fits"] = fit_all(report)
    report["targets"] = evaluate_targets(report, report["fits"])
    report["profile"] = profile(report)
    plots = plot(report, folder, stem)
    report["plots"] = [p.name for p in plots]
    paths = {"json": folder / f"{stem}.json", "md": folder / f"{stem}.md"}
    paths["json"].write_text(json.dumps(report, indent=1) + "\n")
    paths["md"].write_text(markdown(report))
    return {**paths, "memory_png": plots[0], "miou_png": plots[1]}
