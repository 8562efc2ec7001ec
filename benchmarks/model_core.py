"""Model-core benchmark: quadtree conversions and one inference per scheme at 1024×2048.

    python -m benchmarks.model_core [--weights random|PATH] [--height 1024 --width 2048]

Prints how long the quadtree functions take on a synthetic label map, then per scheme the
active sites per level, predicted decoder bytes, measured peak bytes and latency of one
inference (after a warm-up) on a synthetic street scene. With random weights `pc` refines
almost nothing; `oracle` shows what a model that knows the boundaries would refine.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from model.cost import calibrate
from model.data import CLASSES, VAL_SEEDS, make_scene
from model.qgn import qgn_small
from model.quadtree import canonical_leaves, dense_to_levels, leaves_to_dense, levels_to_leaves
from model.schemes import All, Budget, Oracle, PredictedComposite, Threshold

MIB = 2**20


def timed(function, *args, repeat: int = 3):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function(*args)
        best = min(best, time.perf_counter() - start)
    return result, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="random")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=2048)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )

    image, label = make_scene(VAL_SEEDS[0], args.height, args.width)
    mask = torch.from_numpy(label.astype("int64"))
    targets, t_levels = timed(dense_to_levels, mask)
    leaves, t_leaves = timed(levels_to_leaves, targets)
    _, t_dense = timed(leaves_to_dense, leaves, args.height, args.width)
    canon, t_canon = timed(canonical_leaves, torch.from_numpy(label))
    print(
        f"quadtree of a {args.height}×{args.width} label map (best of 3): "
        f"dense_to_levels {t_levels * 1e3:.0f} ms, levels_to_leaves {t_leaves * 1e3:.0f} ms, "
        f"leaves_to_dense {t_dense * 1e3:.0f} ms, canonical_leaves {t_canon * 1e3:.0f} ms "
        f"({len(canon)} leaves)"
    )

    if args.weights == "random":
        torch.manual_seed(0)
        model = qgn_small(len(CLASSES)).eval()
    else:
        from model.weights import load_weights

        model, _ = load_weights(args.weights)
    model.cost = calibrate(model, "cpu")
    floor = model.cost.min_budget_bytes(args.height, args.width)
    schemes = {
        "all": All(),
        "pc": PredictedComposite(),
        "threshold 0.05": Threshold(0.05),
        "threshold 0.5": Threshold(0.5),
        "budget 2×min": Budget(2 * floor),
        "oracle": Oracle([t.unsqueeze(0) for t in targets]),
    }
    print(f"weights: {args.weights}; minimum budget at this size {floor / MIB:.1f} MiB")
    print(f"{'scheme':<16}{'peak MiB':>10}{'decoder MiB':>13}{'latency ms':>12}  active sites")
    model.predict(image[:256, :512].copy(), All())  # warm-up
    for name, scheme in schemes.items():
        pred = model.predict(image, scheme)
        print(
            f"{name:<16}{pred.peak_bytes / MIB:10.1f}{sum(pred.decoder_bytes) / MIB:13.1f}"
            f"{pred.latency_s * 1e3:12.0f}  {pred.active_sites}"
        )


if __name__ == "__main__":
    main()
