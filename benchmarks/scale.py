"""Where the model errs at each served size: inside large regions or along their boundaries.

    python -m benchmarks.scale --weights weights/qgn_small_synthetic.safetensors [--weights B]

For `--scenes` validation scenes drawn at 512×1024 and at 1024×2048, `pc`'s wrong pixels split
by where they lie in the label: inside a uniform 128×128 block, inside a uniform 32×32 block
but no uniform 128×128 one, or in a 32×32 block that holds a boundary. Also mIoU at
1024×2048 natively against the same scene downscaled to 512×1024, predicted and upscaled
(nearest): a model that is right at 512×1024 and wrong natively lacks context at the larger
scale, not detail; and at each size the mIoU of the scene resampled by 0.95, as training
resamples its crops: a model better there than on the scene as drawn has learnt the resampled
pixels, not the drawn ones. IoU per class too. Several `--weights` are compared in one run.
Asserts nothing; results in `--out` as `scale-<machine>-<date>.json` and `.md`.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.run import machine_info
from model.data import make_scene
from model.data.synthetic import IGNORE_INDEX, VAL_SEEDS
from model.evaluate import class_iou, confusion, mean_iou
from model.quadtree import block_extrema
from model.schemes import make_scheme
from model.weights import load_weights

SIZES = [(512, 1024), (1024, 2048)]
REGIONS = ("inside 128×128", "inside 32×32 only", "boundary 32×32")


def uniform_blocks(label: np.ndarray, side: int) -> np.ndarray:
    """Per pixel: whether its side×side block (aligned to the image) holds one value, the
    ignore index counting as a value of its own. `side` is a power of two."""
    lo, hi = block_extrema(torch.from_numpy(label), levels=side.bit_length())[0]
    uniform = (lo == hi).numpy()
    height, width = label.shape
    return uniform.repeat(side, axis=0).repeat(side, axis=1)[:height, :width]


def errors_by_region(prediction: np.ndarray, label: np.ndarray) -> dict[str, list[int]]:
    """[wrong, labelled] pixel counts for each of REGIONS."""
    inside128, inside32 = uniform_blocks(label, 128), uniform_blocks(label, 32)
    valid = label != IGNORE_INDEX
    wrong = (prediction != label) & valid
    masks = (inside128, inside32 & ~inside128, ~inside32)
    return {
        name: [int((wrong & m).sum()), int((valid & m).sum())]
        for name, m in zip(REGIONS, masks, strict=True)
    }


def downscaled_prediction(model, image: np.ndarray) -> np.ndarray:
    """The mask of `image` predicted at half its size, upscaled back (nearest)."""
    height, width = image.shape[:2]
    small = np.asarray(Image.fromarray(image).resize((width // 2, height // 2), Image.BILINEAR))
    mask = model.predict(small, make_scheme("pc")).mask.numpy().astype(np.uint8)
    return np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))


def resampled(image: np.ndarray, label: np.ndarray, factor: float = 0.95):
    """The scene resampled by `factor` (bilinear image, nearest label), as training resamples
    every crop: a model that scores better on it than on the scene as drawn has not learnt
    the pixel statistics of scenes as drawn."""
    height, width = round(image.shape[0] * factor), round(image.shape[1] * factor)
    return (  # copies: PIL's arrays are read-only
        np.array(Image.fromarray(image).resize((width, height), Image.BILINEAR)),
        np.array(Image.fromarray(label).resize((width, height), Image.NEAREST)),
    )


def measure(weights: Path, scenes: int) -> dict:
    model, card = load_weights(weights)
    classes = card["config"]["num_classes"]
    result = {
        "weights": str(weights),
        "sha256": card["weights_sha256"],
        "classes": card["classes"],
        "sizes": {},
    }
    for height, width in SIZES:
        counts = {name: [0, 0] for name in REGIONS}
        native = np.zeros((classes, classes), np.int64)
        downscaled = np.zeros_like(native)
        resampled_matrix = np.zeros_like(native)
        for i in range(scenes):
            image, label = make_scene(VAL_SEEDS[i], height, width)
            prediction = model.predict(image, make_scheme("pc")).mask.numpy()
            native += confusion(prediction, label, classes)
            for name, (wrong, total) in errors_by_region(prediction, label).items():
                counts[name][0] += wrong
                counts[name][1] += total
            small_image, small_label = resampled(image, label)
            small_mask = model.predict(small_image, make_scheme("pc")).mask.numpy()
            resampled_matrix += confusion(small_mask, small_label, classes)
            if height == SIZES[-1][0]:
                downscaled += confusion(downscaled_prediction(model, image), label, classes)
            print(f"{weights.name} {height}×{width}: {i + 1}/{scenes}", file=sys.stderr)
        pixels = scenes * height * width
        result["sizes"][f"{height}x{width}"] = {
            "miou_pc": 100 * mean_iou(native),
            "miou_pc_downscaled": 100 * mean_iou(downscaled) if downscaled.any() else None,
            "miou_pc_resampled": 100 * mean_iou(resampled_matrix),
            "class_iou_pc": per_class(native),
            "class_iou_pc_downscaled": per_class(downscaled) if downscaled.any() else None,
            "regions": {
                name: {
                    "share_of_pixels": 100 * total / pixels,
                    "error_rate": 100 * wrong / max(total, 1),
                    "errors_of_all_pixels": 100 * wrong / pixels,
                }
                for name, (wrong, total) in counts.items()
            },
        }
    return result


def per_class(matrix: np.ndarray) -> list[float | None]:
    """IoU % per class; None for a class neither in the labels nor predicted."""
    return [None if np.isnan(v) else round(100 * float(v), 2) for v in class_iou(matrix)]


def class_table(results: list[dict]) -> list[str]:
    """IoU per class for each weights and size (and downscaled): which classes the larger
    size loses."""
    classes = results[0]["classes"]
    lines = ["", "IoU % per class, `pc`:", "", "| weights | size | " + " | ".join(classes) + " |"]
    lines.append("|---|---|" + "---:|" * len(classes))
    for result in results:
        for size, row in result["sizes"].items():
            for name, key in (
                (size, "class_iou_pc"),
                (f"{size} downscaled", "class_iou_pc_downscaled"),
            ):
                if row.get(key):
                    cells = ["–" if v is None else f"{v:.1f}" for v in row[key]]
                    lines.append(
                        f"| {result['sha256'][:12]} | {name} | " + " | ".join(cells) + " |"
                    )
    return lines


def report(results: list[dict], machine: dict, scenes: int) -> str:
    lines = [
        f"# Errors by region and size, `pc`, {scenes} validation scenes",
        "",
        f"Machine: {machine['cpu']}, {machine['cpu_count']} cores, "
        f"{machine['torch_threads']} torch thread(s); torch {machine['versions']['torch']}.",
        "",
        "| weights | size | mIoU | mIoU resampled ×0.95 | mIoU downscaled | "
        + " | ".join(f"{r}: error % (share of pixels %)" for r in REGIONS)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(REGIONS),
    ]
    for result in results:
        for size, row in result["sizes"].items():
            down = row["miou_pc_downscaled"]
            regions = [row["regions"][r] for r in REGIONS]
            cells = [f"{r['error_rate']:.2f} ({r['share_of_pixels']:.0f})" for r in regions]
            lines.append(
                f"| {result['sha256'][:12]} | {size} | {row['miou_pc']:.2f} | "
                f"{row['miou_pc_resampled']:.2f} | "
                f"{'–' if down is None else f'{down:.2f}'} | " + " | ".join(cells) + " |"
            )
    return "\n".join([*lines, *class_table(results)]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, action="append", required=True)
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = [measure(path, args.scenes) for path in args.weights]
    machine = machine_info()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"scale-{machine['slug']}-{date.today().isoformat()}"
    stem.with_suffix(".json").write_text(
        json.dumps({"machine": machine, "scenes": args.scenes, "results": results}, indent=2)
    )
    text = report(results, machine, args.scenes)
    stem.with_suffix(".md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
