"""Accuracy per MiB: QGN's settings against the *trained* dense peers, on the same scenes.

    python -m benchmarks.accuracy [--scenes 20] [--peers-python .venv-peers/bin/python]

At 512×1024 and 1024×2048, on the same `--scenes` scenes of the synthetic test split (which
neither QGN's training nor the peers' validation saw), one torch thread:

- QGN (this interpreter, the shipped weights): refine nothing, τ 0.9 … 0.1, `pc`, three budgets
  between the image's minimum and `all`'s peak, `all` (`model.evaluate`, the card's machinery);
- each peer trained by `benchmarks.train_peers` (`runs/peers/<peer>/<peer>.pt`, or its latest
  checkpoint while it trains: the row says at which step), in the peers' interpreter
  (torchvision does not import beside torch 2.13.0).

mIoU is from one confusion matrix over the scenes; peak bytes by the allocation window (the
largest over the scenes, and their mean in `peak_bytes_mean`), latency the median. Writes
`results/accuracy-<machine>-<date>.json` (a list `rows` of {model, setting, height, width,
miou (percent), peak_bytes, latency_s}), the `.md` table made from it and the `.png` (mIoU
against peak MiB, log scale, a panel per size, QGN's τ sweep as a curve, the peers as labelled
points).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

from model.data import CLASSES
from model.scheme_request import MIB

REPO = Path(__file__).resolve().parent.parent
SIZES = ((512, 1024), (1024, 2048))
PEERS = ("dense-twin", "lraspp")
NUM_CLASSES = len(CLASSES)


def peer_weights(peer: str, runs: Path) -> tuple[Path, str] | None:
    """The trained state dict, or the latest checkpoint (and what it is), or None."""
    final = runs / peer / f"{peer}.pt"
    if final.is_file():
        return final, "trained"
    checkpoint = runs / peer / "checkpoint.pt"
    return (checkpoint, "checkpoint") if checkpoint.is_file() else None


def evaluate_peer(config: dict) -> dict:
    """Runs in the peers' interpreter: one peer at one size over the test scenes."""
    import torch

    from benchmarks.train_peers import build_peer
    from model.data import build_dataset
    from model.evaluate import confusion, mean_iou
    from model.memory import MemoryProbe
    from model.qgn import to_batch

    torch.set_num_threads(1)
    model = build_peer(config["peer"]).eval()
    state = torch.load(config["weights"], map_location="cpu", weights_only=False)
    step = state.get("step") if "model" in state else None
    model.load_state_dict(state.get("model", state))
    data = build_dataset("synthetic", "test", height=config["height"], width=config["width"])
    matrix = np.zeros((NUM_CLASSES, NUM_CLASSES), dtype=np.int64)
    peaks, latencies = [], []
    with torch.inference_mode():
        model(to_batch(np.zeros((64, 64, 3), np.uint8)))  # kernels, one-time buffers
        for index in range(config["scenes"]):
            image, label = data[index]
            start = time.perf_counter()
            with MemoryProbe("cpu") as probe:
                mask = model(to_batch(image))[0].argmax(dim=0)
            latencies.append(time.perf_counter() - start)
            peaks.append(probe.peak_bytes)
            matrix += confusion(mask.numpy(), label, NUM_CLASSES)
    return {
        "miou": round(100 * mean_iou(matrix), 2),
        "peak_bytes": max(peaks),
        "peak_bytes_mean": round(float(np.mean(peaks))),
        "latency_s": round(float(np.median(latencies)), 4),
        "trained_steps": step,
    }


def qgn_rows(weights: Path, scenes: int) -> list[dict]:
    import torch

    from model.cost import calibrate
    from model.data import build_dataset
    from model.evaluate import default_settings, evaluate, pick_budgets
    from model.weights import load_weights

    torch.set_num_threads(1)
    model, card = load_weights(weights)
    model.cost = calibrate(model, "cpu")  # budgets plan with what the server measures
    rows = []
    for height, width in SIZES:
        data = build_dataset("synthetic", "test", height=height, width=width)
        budgets = pick_budgets(model, data[0][0])
        settings = [s for s in default_settings(budgets) if s.scheme != "oracle"]
        print(f"qgn {height}×{width}: {len(settings)} settings × {scenes} scenes", flush=True)
        table = evaluate(model, data, scenes, settings, len(card["classes"]))
        for row in table["rows"]:
            rows.append(
                {
                    "model": "qgn",
                    "setting": setting_name(row),
                    "height": height,
                    "width": width,
                    "miou": round(100 * row["miou"], 2),
                    "peak_bytes": round(row["peak_mib_max"] * MIB),
                    "peak_bytes_mean": round(row["peak_mib"] * MIB),
                    "latency_s": round(row["latency_ms_median"] / 1000, 4),
                }
            )
    return rows


def shown(path: Path) -> str:
    """`path` relative to the repository where it lies inside it."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def setting_name(row: dict) -> str:
    if row["scheme"] == "threshold":
        return f"threshold={row['threshold']:g}"
    if row["scheme"] == "budget":
        return f"budget={row['budget_mb']:g}"
    return row["scheme"]


def targets(rows: list[dict]) -> list[dict]:
    """Issue 26's targets over one run's rows: per trained peer and size, QGN's best setting
    at <= 0.25× the peer's peak within a point of the peer; `pc` at 1024×2048 within a point
    of 512×1024; τ 0.1 within a point of `all` at <= 0.05× its peak, at each size: the
    largest over the scenes, and where the rows have it, the mean (the model card's)."""

    def size_of(row: dict) -> str:
        return f"{row['height']}×{row['width']}"

    def scored(row: dict) -> str:
        return f"{row['setting']} {row['miou']} at {row['peak_bytes'] / MIB:.1f} MiB"

    ours = {(r["setting"], size_of(r)): r for r in rows if r["model"] == "qgn"}
    found = []
    for peer in (r for r in rows if r["model"] != "qgn"):
        cheap = [
            r
            for (_, size), r in ours.items()
            if size == size_of(peer) and r["peak_bytes"] <= 0.25 * peer["peak_bytes"]
        ]
        best = max(cheap, key=lambda r: r["miou"], default=None)
        found.append(
            {
                "target": f"QGN within 1 point of {peer['model']} at ≤ 0.25× its peak, "
                + size_of(peer),
                "met": best is not None and best["miou"] >= peer["miou"] - 1,
                "evidence": f"{peer['model']} {scored(peer)}; QGN "
                + (scored(best) if best else "has no setting that cheap"),
            }
        )
    small, large = (ours.get(("pc", f"{h}×{w}")) for h, w in SIZES)
    if small and large:
        found.append(
            {
                "target": f"pc at {size_of(large)} within 1 point of {size_of(small)}",
                "met": large["miou"] >= small["miou"] - 1,
                "evidence": f"{large['miou']} against {small['miou']}",
            }
        )
    for height, width in SIZES:
        finest, dense = (
            ours.get(("threshold=0.1", f"{height}×{width}")),
            ours.get(("all", f"{height}×{width}")),
        )
        if not (finest and dense):
            continue
        close = finest["miou"] >= dense["miou"] - 1
        found.append(
            {
                "target": f"τ 0.1 within 1 point of all at ≤ 0.05× its peak, {height}×{width}",
                "met": close and finest["peak_bytes"] <= 0.05 * dense["peak_bytes"],
                "evidence": f"{scored(finest)} against {scored(dense)}",
            }
        )
        if "peak_bytes_mean" in finest and "peak_bytes_mean" in dense:
            means = [row["peak_bytes_mean"] / MIB for row in (finest, dense)]
            found.append(
                {
                    "target": "τ 0.1 within 1 point of all at ≤ 0.05× its peak, "
                    f"{height}×{width}, mean peak over the scenes",
                    "met": close and means[0] <= 0.05 * means[1],
                    "evidence": f"τ 0.1 {means[0]:.2f} MiB against all {means[1]:.2f}",
                }
            )
    return found


def carried_peer_row(report: Path, peer: str, height: int, width: int) -> dict | None:
    """A peer's row of an earlier report (same scenes, same measurement), marked as carried."""
    for row in json.loads(report.read_text())["rows"]:
        if (row["model"], row["height"], row["width"]) == (peer, height, width):
            return row | {"carried_from": report.name}
    return None


def markdown(report: dict) -> str:
    lines = [
        f"# Accuracy per MiB — {report['machine']}, {report['date']}",
        "",
        report["setup"],
        "",
        "| model | setting | size | mIoU % | peak MiB | mean peak MiB | latency s |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        setting = row["setting"]
        if "carried_from" in row:
            setting += f" (from {row['carried_from']})"
        mean = f"{row['peak_bytes_mean'] / MIB:.2f}" if "peak_bytes_mean" in row else ""
        lines.append(
            f"| {row['model']} | {setting} | {row['height']}×{row['width']} | "
            f"{row['miou']} | {row['peak_bytes'] / MIB:.1f} | {mean} | {row['latency_s']} |"
        )
    lines += ["", "| target | | evidence |", "|---|---|---|"]
    for target in report["targets"]:
        verdict = "met" if target["met"] else "**missed**"
        lines.append(f"| {target['target']} | {verdict} | {target['evidence']} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, panels = plt.subplots(1, len(SIZES), figsize=(12, 4.5))
    for axes, (height, width) in zip(panels, SIZES, strict=True):
        rows = [r for r in report["rows"] if (r["height"], r["width"]) == (height, width)]
        sweep = sorted(
            (r for r in rows if r["model"] == "qgn" and r["setting"].startswith("threshold")),
            key=lambda r: (r["peak_bytes"], r["miou"]),  # thresholds of one peak: rising
        )
        axes.plot(
            [r["peak_bytes"] / MIB for r in sweep], [r["miou"] for r in sweep], "o-", label="QGN τ"
        )
        named = [r for r in rows if r["model"] != "qgn" or not r["setting"].startswith("threshold")]
        for index, row in enumerate(sorted(named, key=lambda r: r["peak_bytes"])):
            point = (row["peak_bytes"] / MIB, row["miou"])
            qgn = row["model"] == "qgn"
            axes.scatter(*point, color="tab:blue" if qgn else "tab:red", marker="s" if qgn else "^")
            # Neighbours on the log axis alternate above and below, so their labels do not meet.
            offset = (3, 5) if index % 2 == 0 else (3, -10)
            axes.annotate(
                row["setting"] if qgn else row["model"],
                point,
                xytext=offset,
                textcoords="offset points",
                fontsize=7 if qgn else 8,
            )
        axes.set_xscale("log")
        axes.set_xlabel("peak MiB (allocation window)")
        axes.set_ylabel("mIoU %")
        axes.set_title(f"{height}×{width}")
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["peer"]:
        print(json.dumps(evaluate_peer(json.loads(argv[1]))))
        return 0
    from benchmarks.run import machine_info, run_child
    from model.weights import DEFAULT_WEIGHTS

    parser = argparse.ArgumentParser(prog="python -m benchmarks.accuracy", description=__doc__)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--peers-python", default=str(REPO / ".venv-peers/bin/python"))
    parser.add_argument("--runs", type=Path, default=REPO / "runs/peers")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    parser.add_argument(
        "--peer-rows",
        type=Path,
        help="an earlier report whose peer rows to carry, for the peers not trained here "
        "(their weights are out of git); each carried row names that report",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = qgn_rows(args.weights, args.scenes)
    jobs = [(peer, size) for peer in PEERS for size in SIZES]
    for index, (peer, (height, width)) in enumerate(jobs, 1):
        found = peer_weights(peer, args.runs)
        if found is None and args.peer_rows is not None:
            carried = carried_peer_row(args.peer_rows, peer, height, width)
            rows += [carried] if carried else []
            print(f"[{index}/{len(jobs)}] {peer} {height}×{width}: from {args.peer_rows.name}")
            continue
        if found is None:
            print(f"[{index}/{len(jobs)}] {peer}: not trained yet (no {args.runs / peer})")
            continue
        config = {"peer": peer, "weights": str(found[0]), "height": height, "width": width}
        config["scenes"] = args.scenes
        result = run_child(config, 3600, ("benchmarks.accuracy", "peer"), args.peers_python)
        if result.get("status") == "failed":
            print(f"[{index}/{len(jobs)}] {peer} {height}×{width}: {result['reason']}")
            continue
        setting = found[1] if result["trained_steps"] is None else f"step {result['trained_steps']}"
        rows.append(
            {"model": peer, "setting": setting, "height": height, "width": width}
            | {k: result[k] for k in ("miou", "peak_bytes", "peak_bytes_mean", "latency_s")}
        )
        print(
            f"[{index}/{len(jobs)}] {peer} {height}×{width}: {result['miou']} mIoU "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    report = {
        "machine": machine_info()["slug"],
        "date": date.today().isoformat(),
        "setup": (
            f"{args.scenes} scenes of the synthetic test split per size, one torch thread, "
            f"QGN `{args.weights.name}`, peers from `{shown(args.runs)}` (a `step N` setting: a "
            "checkpoint still training). Peak: the allocation window, the largest over the "
            "scenes; latency: the median."
        ),
        "rows": rows,
        "targets": targets(rows),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"accuracy-{report['machine']}-{report['date']}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    plot(report, stem.with_suffix(".png"))
    print(f"wrote {stem}.json, .md, .png in {(time.perf_counter() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
