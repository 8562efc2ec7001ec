"""The models a user would pick instead of QGN, measured beside it in one run.

    sh benchmarks/peers_venv.sh                     # once: torchvision + transformers
    python -m benchmarks.peers --peers-python .venv-peers/bin/python

Peers: torchvision's `deeplabv3_resnet50`, `deeplabv3_resnet101` (the paper's DeepLabv3) and
`lraspp_mobilenet_v3_large`, and SegFormer-B0 (`transformers`, built from its default config,
which is B0). All untrained: memory and latency do not depend on the weights, and nothing is
downloaded. torchvision does not import beside this project's torch 2.13.0 CPU build, so each
peer runs in a fresh process of the peers' own interpreter (`--peers-python`), measured as
QGN is: the same memory measurement (`model.memory`, torch-only) over the same span (the
uint8 image to the class mask), the same RSS cross-check (`benchmarks.rss`), one torch
thread, a warm-up, then the median of `--runs` timed runs. QGN (`pc`, refine-nothing,
`all`) runs through `benchmarks.measure` in this interpreter, interleaved size by size.

Output: `results/peers-<machine>-<date>.json`, `.md` and `-memory.png` (peak memory against
pixels, log-log, QGN's schemes and the peers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from model.scheme_request import MIB
from model.weights import DEFAULT_WEIGHTS

REPO = Path(__file__).resolve().parent.parent
PEERS = (
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "lraspp_mobilenet_v3_large",
    "segformer_b0",
)
NUM_CLASSES = 12
QGN_SCHEMES = ("pc", "none", "all")


def build_peer(name: str):
    """An untrained peer in eval mode, and how to get full-resolution logits from it."""
    import torch

    torch.manual_seed(0)
    if name == "segformer_b0":
        from transformers import SegformerConfig, SegformerForSemanticSegmentation

        net = SegformerForSemanticSegmentation(SegformerConfig(num_labels=NUM_CLASSES)).eval()

        def logits(batch):  # SegFormer predicts at stride 4; a user upsamples, as here
            out = net(pixel_values=batch).logits
            return torch.nn.functional.interpolate(
                out, size=batch.shape[-2:], mode="bilinear", align_corners=False
            )

        return net, logits
    from torchvision.models import segmentation

    from model.encoder import fold_all_batchnorms

    builder = getattr(segmentation, name)
    net = builder(weights=None, weights_backbone=None, num_classes=NUM_CLASSES).eval()
    fold_all_batchnorms(net)  # as QGN's dense layers are folded for serving

    return net, lambda batch: net(batch)["out"]


def segment(logits, image):
    """uint8 (H, W, 3) image -> uint8 class mask, as a server would: normalise, run, argmax."""
    import torch

    from model.encoder import IMAGE_MEAN, IMAGE_STD

    pixels = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0)
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    batch = (pixels.float() / 255.0 - mean) / std
    del pixels
    out = logits(batch)
    del batch
    return out.argmax(dim=1).to(torch.uint8)


def measure_peer(config: dict) -> dict:
    """Runs in the peers' interpreter: one peer at one size."""
    import numpy as np
    import torch

    from benchmarks.rss import RssWatch
    from model.memory import MemoryProbe

    torch.set_num_threads(config["threads"])
    net, logits = build_peer(config["peer"])
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (config["height"], config["width"], 3), dtype=np.uint8)
    with torch.inference_mode():
        segment(logits, np.zeros((64, 64, 3), dtype=np.uint8))  # kernels, one-time buffers
        rss = RssWatch()
        segment(logits, image)  # warm-up
        peaks, latencies = [], []
        for _ in range(config["runs"]):
            start = time.perf_counter()
            with MemoryProbe("cpu") as probe:
                segment(logits, image)
            latencies.append(time.perf_counter() - start)
            peaks.append(probe.peak_bytes)
    return {
        "status": "ok",
        "peak_bytes": max(peaks),
        "latency_s": {"median": float(np.median(latencies)), "runs": latencies},
        **rss.result(),
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in net.parameters()),
        "versions": {"torch": torch.__version__, **_versions()},
    }


def _versions() -> dict:
    from importlib import metadata

    found = {}
    for package in ("torchvision", "transformers"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def plan(args: argparse.Namespace, scenes: dict) -> list[dict]:
    """Size by size: QGN's schemes, then the peers (at the sizes they are asked at)."""
    jobs = []
    for height, width in args.sizes:
        for scheme in QGN_SCHEMES if (height, width) in args.peer_sizes else ("pc", "none"):
            jobs.append(
                {
                    "family": "qgn",
                    "name": f"qgn_{scheme}",
                    "height": height,
                    "width": width,
                    "config": {
                        "kind": "qgn",
                        "scheme": scheme,
                        "weights": args.weights,
                        "model": "qgn_small",
                        "runs": args.runs,
                        "seeds": args.seeds,
                        "height": height,
                        "width": width,
                        "scenes": scenes[(height, width)],
                    },
                }
            )
        if (height, width) not in args.peer_sizes:
            continue
        for peer in args.peers:
            config = {
                "peer": peer,
                "height": height,
                "width": width,
                "runs": args.runs,
                "threads": args.threads,
            }
            jobs.append(
                {"family": "peer", "name": peer, "height": height, "width": width, "config": config}
            )
    return jobs


def run(args: argparse.Namespace) -> dict:
    from benchmarks.run import machine_info, run_child, write_scenes

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        scenes = write_scenes(Path(folder), args.seeds, args.sizes)
        jobs = plan(args, scenes)
        for index, job in enumerate(jobs, 1):
            if job["family"] == "qgn":
                result = run_child(job["config"], args.timeout)
            else:
                module = ("benchmarks.peers", "measure")
                result = run_child(job["config"], args.timeout, module, args.peers_python)
            results.append({k: job[k] for k in ("family", "name", "height", "width")} | result)
            elapsed = time.perf_counter() - started
            peak = result.get("peak_bytes")
            shown = f"{peak / MIB:.1f} MiB" if peak else result.get("reason", "?")
            print(
                f"[{index}/{len(jobs)}] {job['name']} {job['height']}x{job['width']}: {shown}"
                f"  ({elapsed / 60:.1f} min)",
                flush=True,
            )
    return {
        "machine": machine_info(),
        "date": date.today().isoformat(),
        "command": "python -m benchmarks.peers " + " ".join(sys.argv[1:]),
        "threads": args.threads,
        "runs": args.runs,
        "results": results,
        "wall_time_s": round(time.perf_counter() - started, 1),
    }


def by(results: list[dict], name: str, size: tuple[int, int]) -> dict | None:
    for result in results:
        if result["name"] == name and (result["height"], result["width"]) == size:
            return result if result.get("status") == "ok" else None
    return None


def growth(results: list[dict], name: str, sizes: list[tuple[int, int]]) -> float | None:
    """Exponent k of peak ∝ pixels^k over the sizes measured (`growth_exponent`)."""
    from benchmarks.analysis import growth_exponent

    found = [(h * w, by(results, name, (h, w))) for h, w in sizes]
    found = [(pixels, result["peak_bytes"]) for pixels, result in found if result]
    return growth_exponent([p for p, _ in found], [b for _, b in found])


def markdown(report: dict, sizes: list[tuple[int, int]], peer_sizes: list) -> str:
    results = report["results"]
    machine = report["machine"]
    lines = [
        f"# QGN and its peers — {machine['slug']}, {report['date']}",
        "",
        f"`{report['command']}` on {machine['cpu']} ({machine['cpu_count']} cores), "
        f"{report['threads']} torch thread, median of {report['runs']} timed runs after a "
        f"warm-up, in {report['wall_time_s'] / 60:.1f} min. Peak = the measured peak "
        "(`model.memory`: the allocation window) from the uint8 image to the class mask; "
        "RSS = the process' RSS high-water mark "
        "over the same runs minus its RSS before them. Peers are untrained (memory and latency "
        "do not depend on weights), their BatchNorms folded where torchvision's layout allows, "
        "as QGN's are.",
        "",
        "| model | size | peak MiB | RSS rise MiB | latency s | peak / QGN pc |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for height, width in sizes:
        pc = by(results, "qgn_pc", (height, width))
        names = [f"qgn_{s}" for s in QGN_SCHEMES] + list(PEERS)
        for name in names:
            result = by(results, name, (height, width))
            if result is None:
                continue
            ratio = result["peak_bytes"] / pc["peak_bytes"] if pc else float("nan")
            lines.append(
                f"| {name} | {height}×{width} | {result['peak_bytes'] / MIB:.1f} | "
                f"{result['max_rss_delta_bytes'] / MIB:.1f} | "
                f"{result['latency_s']['median']:.2f} | {ratio:.2f} |"
            )
    failed = [r for r in results if r.get("status") != "ok"]
    for result in failed:
        lines.append(
            f"\n{result['name']} at {result['height']}×{result['width']}: {result['reason']}"
        )
    exponent = growth(results, "qgn_pc", sizes)
    lines += ["", "## Targets", ""]
    big = (1024, 2048)
    pc, none = by(results, "qgn_pc", big), by(results, "qgn_none", big)
    resnet101 = by(results, "deeplabv3_resnet101", big)
    if pc:
        peak, rss = pc["peak_bytes"] / MIB, pc["max_rss_delta_bytes"] / MIB
        lines.append(f"- pc peak at 1024×2048 ≤ 28 MiB: {peak:.1f} ({_met(peak <= 28)})")
        lines.append(f"- pc RSS rise at 1024×2048 ≤ 60 MiB: {rss:.1f} ({_met(rss <= 60)})")
    if pc and none:
        ratio = none["peak_bytes"] / pc["peak_bytes"]
        lines.append(
            f"- refine-nothing ≤ 0.6 × pc at 1024×2048: {ratio:.2f} ({_met(ratio <= 0.6)})"
        )
    if exponent is not None:
        shown = ", ".join(f"{h}×{w}" for h, w in sizes)
        lines.append(
            f"- pc growth exponent ≤ 0.75 over {shown}: {exponent:.2f} ({_met(exponent <= 0.75)})"
        )
    if pc and resnet101:
        ratio = pc["peak_bytes"] / resnet101["peak_bytes"]
        lines.append(
            f"- pc ≤ 0.05 × deeplabv3_resnet101 at 1024×2048: {ratio:.3f} ({_met(ratio <= 0.05)})"
        )
    return "\n".join(lines) + "\n"


def _met(ok: bool) -> str:
    return "met" if ok else "missed"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = report["results"]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    names = [f"qgn_{s}" for s in QGN_SCHEMES] + list(PEERS)
    for name in names:
        points = sorted(
            (r["height"] * r["width"], r["peak_bytes"] / MIB)
            for r in results
            if r["name"] == name and r.get("status") == "ok"
        )
        if not points:
            continue
        style = "o-" if name.startswith("qgn") else "s--"
        axes.plot(*zip(*points, strict=True), style, label=name)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("pixels")
    axes.set_ylabel("peak memory (MiB, measured)")
    axes.set_title(f"Peak memory per request — {report['machine']['slug']}, {report['date']}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def parse_size(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["measure"]:
        print(json.dumps(measure_peer(json.loads(argv[1]))))
        return 0
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__)
    parser.add_argument("--peers-python", default=str(REPO / ".venv-peers/bin/python"))
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    parser.add_argument(
        "--sizes", nargs="+", type=parse_size, default=[(512, 1024), (1024, 2048), (2048, 4096)]
    )
    parser.add_argument(
        "--peer-sizes", nargs="+", type=parse_size, default=[(512, 1024), (1024, 2048)]
    )
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=PEERS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scenes", type=int, default=3, help="QGN's scenes per size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results")
    args = parser.parse_args(argv)
    if not Path(args.peers_python).exists():
        parser.error(f"{args.peers_python} not found: run sh benchmarks/peers_venv.sh first")
    from model.data import VAL_SEEDS

    args.seeds = [int(s) for s in VAL_SEEDS[: args.scenes]]
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"peers-{report['machine']['slug']}-{report['date']}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(report, args.sizes, args.peer_sizes))
    plot(report, stem.parent / f"{stem.name}-memory.png")
    print(f"wrote {stem}.json, .md and -memory.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
