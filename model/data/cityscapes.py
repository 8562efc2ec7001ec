"""Cityscapes fine annotations (gtFine), mapped to the 19 training classes.

Expected layout (as downloaded from cityscapes-dataset.com):
    root/leftImg8bit/{split}/{city}/{name}_leftImg8bit.png
    root/gtFine/{split}/{city}/{name}_gtFine_labelIds.png

The labelId -> trainId table and the class names come from the official `cityscapesscripts`
package, not a copy: ids without a training class (void, license plate, ...) become 255.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from cityscapesscripts.helpers.labels import labels as _LABELS

from model.data._io import LabelledFiles, check_split, require_dir

IGNORE_INDEX = 255
SPLITS = ("train", "val", "test")

_TRAINED = sorted(
    (label for label in _LABELS if 0 <= label.trainId < IGNORE_INDEX),
    key=lambda label: label.trainId,
)
CITYSCAPES_CLASSES: tuple[str, ...] = tuple(label.name for label in _TRAINED)
CITYSCAPES_PALETTE: tuple[tuple[int, int, int], ...] = tuple(
    tuple(label.color) for label in _TRAINED
)


def _label_id_to_train_id() -> np.ndarray:
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for label in _LABELS:
        if 0 <= label.id < 256 and 0 <= label.trainId < IGNORE_INDEX:
            lut[label.id] = label.trainId
    return lut


LABEL_ID_TO_TRAIN_ID = _label_id_to_train_id()


class CityscapesSegmentation(LabelledFiles):
    """(image uint8 HxWx3, label uint8 HxW in 0..18 or 255) pairs of one split."""

    classes = CITYSCAPES_CLASSES

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable[[np.ndarray, np.ndarray], Any] | None = None,
    ) -> None:
        check_split("Cityscapes", split, SPLITS)
        root = Path(root)
        image_dir = root / "leftImg8bit" / split
        label_dir = root / "gtFine" / split
        require_dir(image_dir, f"Cityscapes images (leftImg8bit/{split}/<city>/*_leftImg8bit.png)")
        require_dir(label_dir, f"Cityscapes labels (gtFine/{split}/<city>/*_gtFine_labelIds.png)")
        images = sorted(image_dir.glob("*/*_leftImg8bit.png"))
        if not images:
            raise FileNotFoundError(
                f"expected Cityscapes images in {image_dir}/<city>/*_leftImg8bit.png, found none"
            )
        labels = [
            label_dir
            / path.parent.name
            / path.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
            for path in images
        ]
        super().__init__(images, labels, LABEL_ID_TO_TRAIN_ID, "Cityscapes label", transform)
