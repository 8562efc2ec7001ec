"""Renders the report of one `benchmarks.run`: JSON, Markdown and plots.

The numbers it shows beyond the measurements (growth exponents, targets, the memory
profile) come from `benchmarks.analysis`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks.analysis import PROFILED, analyse, ok_results
from model.cost import COST_TERMS

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
        "Peak = the measured peak (`Prediction.peak_bytes`: bytes allocated during the "
        "inference, not weights; by the allocation window, `model/memory.py`), worst scene. RSS"
        " Δ = how far the process' RSS rose above its level before the measured inferences "
        "(high-water mark reset after loading and a tiny primer inference; a cross-check that "
        "also sees allocator caching and heap that is freed but kept). Decoder = the cost "
        "model's bytes summed over levels (`Prediction.decoder_bytes`). Sites = active sites "
        "per level 0..5, summed over the scenes. Latency = `Prediction.latency_s` (upload to "
        "finished mask, including the measurement's bookkeeping, the same for the baselines). "
        "mIoU over the scenes measured (12 classes, ignore excluded). `none` = refine nothing "
        "(a 1-byte budget): the floor every scheme pays (encoder, level 0, mask). Budgets "
        "`budget-N` sit N % of the way from the calibrated minimum to the `all` peak of the "
        "same size.",
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
            "recompute (skip at sites) | calibration extra |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        keys = COST_TERMS
        totals = {k: sum(r.get(f"{k}_bytes", 0) for r in rows) for k in keys}
        for row in rows:
            if "activations_bytes" not in row:
                continue
            lines.append(
                f"| {row['level']} | {_count(row['sites'])} | {_mib(row['activations_bytes'])} | "
                f"{_mib(row['rulebook_bytes'])} | {_mib(row['coords_bytes'])} | "
                f"{_mib(row['filters_bytes'])} | {_mib(row['recompute_bytes'])} | "
                f"{_mib(row['calibration_extra_bytes'])} |"
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
    axes.set_ylabel("peak memory (MiB, measured)")
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
    axes.set_xlabel("peak memory (MiB, measured)")
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
    report.update(analyse(report))
    plots = plot(report, folder, stem)
    report["plots"] = [p.name for p in plots]
    paths = {"json": folder / f"{stem}.json", "md": folder / f"{stem}.md"}
    paths["json"].write_text(json.dumps(report, indent=1) + "\n")
    paths["md"].write_text(markdown(report))
    return {**paths, "memory_png": plots[0], "miou_png": plots[1]}
