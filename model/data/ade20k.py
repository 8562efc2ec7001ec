"""ADE20k as in the MIT Scene Parsing Benchmark (ADEChallengeData2016), 150 classes.

Expected layout (as unpacked from ADEChallengeData2016.zip):
    root/ADEChallengeData2016/images/{training,validation}/{name}.jpg
    root/ADEChallengeData2016/annotations/{training,validation}/{name}.png

Annotation value 0 ("other objects") becomes the ignore index 255 and k becomes class k - 1,
the usual "reduce zero label" convention. `root` may also be the ADEChallengeData2016 folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from model.data._io import LabelledFiles, check_split, require_dir

IGNORE_INDEX = 255
# Our split names and the benchmark's folder names.
SPLITS = {
    "train": "training",
    "val": "validation",
    "training": "training",
    "validation": "validation",
}

# objectInfo150 of the Scene Parsing benchmark, first name of each entry, in label order 1..150.
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip


def _annotation_to_class() -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    lut[1 : len(ADE20K_CLASSES) + 1] = np.arange(len(ADE20K_CLASSES), dtype=np.uint8)
    return lut


ANNOTATION_TO_CLASS = _annotation_to_class()  # values above 150 are invalid: ignored too


class ADE20kSegmentation(LabelledFiles):
    """(image uint8 HxWx3, label uint8 HxW in 0..149 or 255) pairs of one split."""

    classes = ADE20K_CLASSES

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable[[np.ndarray, np.ndarray], Any] | None = None,
    ) -> None:
        check_split("ADE20k", split, SPLITS)
        root = Path(root)
        base = root if root.name == "ADEChallengeData2016" else root / "ADEChallengeData2016"
        folder = SPLITS[split]
        image_dir, label_dir = base / "images" / folder, base / "annotations" / folder
        require_dir(image_dir, f"ADE20k images (ADEChallengeData2016/images/{folder}/*.jpg)")
        require_dir(
            label_dir, f"ADE20k annotations (ADEChallengeData2016/annotations/{folder}/*.png)"
        )
        images = sorted(image_dir.glob("*.jpg"))
        if not images:
            raise FileNotFoundError(f"expected ADE20k images in {image_dir}/*.jpg, found none")
        labels = [label_dir / f"{path.stem}.png" for path in images]
        super().__init__(images, labels, ANNOTATION_TO_CLASS, "ADE20k annotation", transform)
