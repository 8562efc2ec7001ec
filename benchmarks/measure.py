"""Measures one configuration in this process and prints one JSON line to stdout.

    python -m benchmarks.measure '{"kind": "qgn", "scheme": "pc", "height": 512, ...}'

`benchmarks.run` starts one such process per configuration, so that neither the allocation
tracker's peak nor the process' maximum RSS carries anything from another configuration.
Kinds: `calibrate` (the memory cost model of the weights), `qgn` (one propagation scheme),
`baseline` (one dense network). Scenes come from the `.npz` files the parent wrote.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from benchmarks.rss import RssWatch
from model.cost import MemoryCost, calibrate
from model.data import CLASSES
from model.evaluate import confusion, mean_iou
from model.qgn import MODELS, QGN

# A tiny first inference before the RSS baseline is read: it loads the kernels and one-time
# buffers, so that the max-RSS growth that follows belongs to the measured inferences.
PRIMER = np.zeros((64, 64, 3), dtype=np.uint8)


def load_model(weights: str, model_name: str) -> tuple[QGN, dict | None]:
    """The shipped weights, or (`random`) the named architecture with seed-0 weights, in
    the form `load_weights` serves (dense BatchNorms folded, where the model can)."""
    if weights == "random":
        torch.manual_seed(0)
        return MODELS[model_name](len(CLASSES)).fold_batchnorms(), None
    from model.weights import load_weights

    return load_weights(Path(weights))


def load_scenes(paths: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    scenes = []
    for path in paths:
        with np.load(path) as data:
            scenes.append((data["image"], data["label"]))
    return scenes


def schedule(num_scenes: int, runs: int) -> list[int]:
    """Scene index of each timed run: round robin, every scene at least once."""
    return [i % num_scenes for i in range(max(runs, num_scenes))]


def make_qgn_scheme(config: dict, label: np.ndarray):
    from model.quadtree import dense_to_levels
    from model.schemes import Budget, Oracle, make_scheme

    name = config["scheme"]
    if name == "budget":
        return Budget(int(config["budget_bytes"]))
    if name == "none":  # refine nothing: the floor every scheme pays (encoder, level 0, mask)
        return Budget(1)
    if name == "oracle":
        targets = dense_to_levels(torch.from_numpy(label))
        return Oracle([t.unsqueeze(0) for t in targets])
    return make_scheme(name, threshold=config.get("threshold"))


def measure_qgn(config: dict) -> dict:
    from model.schemes import All

    model, _ = load_model(config["weights"], config["model"])
    if config.get("cost"):
        model.cost = MemoryCost(**config["cost"])
    scenes = load_scenes(config["scenes"])
    num_classes = model.config.num_classes
    # Schemes are built outside the measured window (the oracle's targets come from labels).
    schemes = [make_qgn_scheme(config, label) for _, label in scenes]
    model.predict(PRIMER, schemes[0] if config["scheme"] != "oracle" else All())
    rss = RssWatch()
    model.predict(scenes[0][0], schemes[0])  # warm-up
    per_scene: list[dict | None] = [None] * len(scenes)
    masks: list[np.ndarray | None] = [None] * len(scenes)
    latencies = []
    for index in schedule(len(scenes), config["runs"]):
        image, _ = scenes[index]
        pred = model.predict(image, schemes[index])
        latencies.append(pred.latency_s)
        if per_scene[index] is None:
            masks[index] = pred.mask.numpy()
            per_scene[index] = {
                "seed": config["seeds"][index],
                "peak_bytes": pred.peak_bytes,
                "active_sites": pred.active_sites,
                "in_image_sites": pred.in_image_sites,
                "decoder_bytes": pred.decoder_bytes,
                "phase_peaks": pred.phase_peaks,
                "phase_starts": pred.phase_starts,
                "leaves": len(pred.leaves),
            }
    summary = summarise(per_scene, latencies, rss)  # the RSS is read before scoring the masks
    return {
        **summary,
        "miou": score(masks, scenes, num_classes),
        "scheme_described": schemes[0].ran().as_dict(),
        "cost": asdict(model.cost),
    }


def measure_baseline(config: dict) -> dict:
    from benchmarks.baselines import build_baseline, predict_dense

    model, _ = load_model(config["weights"], config["model"])
    try:
        net = build_baseline(config["baseline"], model)
    except Exception as error:  # torchvision breaks on import in several ways
        return {"status": "skipped", "reason": f"{type(error).__name__}: {error}"}
    num_classes = model.config.num_classes
    del model
    scenes = load_scenes(config["scenes"])
    predict_dense(net, PRIMER)
    rss = RssWatch()
    predict_dense(net, scenes[0][0])  # warm-up
    per_scene: list[dict | None] = [None] * len(scenes)
    masks: list[np.ndarray | None] = [None] * len(scenes)
    latencies = []
    for index in schedule(len(scenes), config["runs"]):
        result = predict_dense(net, scenes[index][0])
        latencies.append(result["latency_s"])
        if per_scene[index] is None:
            masks[index] = result["mask"].numpy()
            per_scene[index] = {
                "seed": config["seeds"][index],
                "peak_bytes": result["peak_bytes"],
                "phase_peaks": result["phase_peaks"],
                "phase_starts": result["phase_starts"],
            }
    summary = summarise(per_scene, latencies, rss)  # the RSS is read before scoring the masks
    return {
        **summary,
        # Only `dense` carries trained weights (QGN's own); the others never saw the data.
        "miou": score(masks, scenes, num_classes) if config["baseline"] == "dense" else None,
        "parameters": sum(p.numel() for p in net.parameters()),
    }


def score(masks: list[np.ndarray], scenes: list, num_classes: int) -> float:
    """mIoU of the masks against the scenes' labels, after the measured runs (scoring makes
    pixel-sized int64 maps that must not count in the RSS of the inference)."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for mask, (_, label) in zip(masks, scenes, strict=True):
        matrix += confusion(mask, label, num_classes)
    return mean_iou(matrix)


def summarise(per_scene: list[dict | None], latencies: list[float], rss: RssWatch) -> dict:
    """Peaks of the costliest scene, latency statistics over all timed runs, and the RSS
    cross-check (`RssWatch`)."""
    scenes = [s for s in per_scene if s is not None]
    worst = max(scenes, key=lambda s: s["peak_bytes"])
    summary = {
        "status": "ok",
        "peak_bytes": worst["peak_bytes"],
        "peak_bytes_per_scene": [s["peak_bytes"] for s in scenes],
        "phase_peaks": worst["phase_peaks"],
        "phase_starts": worst["phase_starts"],
        "latency_s": {
            "median": float(np.median(latencies)),
            "p90": float(np.percentile(latencies, 90)),
            "runs": latencies,
        },
        **rss.result(),
        "threads": torch.get_num_threads(),
        "per_scene": scenes,
    }
    if "active_sites" in worst:
        summary["active_sites"] = np.sum([s["active_sites"] for s in scenes], 0).tolist()
        summary["in_image_sites"] = np.sum([s["in_image_sites"] for s in scenes], 0).tolist()
        summary["decoder_bytes"] = max(sum(s["decoder_bytes"]) for s in scenes)
        summary["decoder_bytes_per_level"] = worst["decoder_bytes"]
        summary["decoder_measured_bytes"] = max(decoder_measured(s) for s in scenes)
    return summary


def decoder_measured(scene: dict) -> int:
    """The most any sparse level (1..5) added on top of what it inherited, as measured."""
    levels = [k for k in scene["phase_peaks"] if k.startswith("level") and k != "level0"]
    return max(
        (scene["phase_peaks"][k] - scene["phase_starts"][k] for k in levels),
        default=0,
    )


def measure_calibration(config: dict) -> dict:
    model, card = load_model(config["weights"], config["model"])
    # The widths travel with the cost, so that the report can split it into its terms.
    cost = calibrate(model, "cpu")
    return {
        "status": "ok",
        "cost": asdict(cost),
        "min_budget_bytes": {f"{h}x{w}": cost.min_budget_bytes(h, w) for h, w in config["sizes"]},
        "model_config": model.config.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "card": card_summary(card),
    }


def card_summary(card: dict | None) -> dict | None:
    if card is None:
        return None
    keep = ("name", "version", "model", "dataset", "weights_file", "weights_sha256")
    summary = {k: card[k] for k in keep if k in card}
    for key in ("evaluation", "training"):
        if key in card:
            summary[key] = card[key]
    return summary


MEASURES = {"calibrate": measure_calibration, "qgn": measure_qgn, "baseline": measure_baseline}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m benchmarks.measure '<json config>'", file=sys.stderr)
        return 2
    config = json.loads(args[0])
    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    try:
        measure = MEASURES[config["kind"]]
    except KeyError:
        print(f"unknown kind {config.get('kind')!r}; valid: {', '.join(MEASURES)}", file=sys.stderr)
        return 2
    result = measure(config)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
