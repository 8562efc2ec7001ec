"""What one `benchmarks.run` measured, analysed: pure functions over its report dict.

Derived here, from the measured numbers of the same run only: the growth exponent k of each
configuration (memory ∝ pixels^k, least squares on log–log), the product targets (met or
missed), and a profile of what dominates the memory (measured phases, the cost model's own
terms). `benchmarks.report` renders the result.
"""

from __future__ import annotations

import math

import numpy as np

from model.cost import MemoryCost

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


def cost_breakdown(result: dict) -> list[dict]:
    """The cost model's terms (`MemoryCost.terms`) per decoder level of the costliest scene,
    from the very cost the configuration ran with."""
    worst = max(result["per_scene"], key=lambda s: s["peak_bytes"])
    return MemoryCost(**result["cost"]).terms(worst["active_sites"])


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
    terms = {}
    for name in ("all", "pc"):
        result = find(report, name, size)
        if result and result["cost"].get("decoder_widths"):
            terms[name] = cost_breakdown(result)
    return {"size": size, "phases": phases, "cost_terms": terms}


def analyse(report: dict) -> dict:
    """Fits, targets and the profile of a run's report, to be added to it."""
    fits = fit_all(report)
    return {"fits": fits, "targets": evaluate_targets(report, fits), "profile": profile(report)}
