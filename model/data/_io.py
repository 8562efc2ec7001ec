"""Reading image/label files for the real datasets, with errors that name the file."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset


def check_split(dataset: str, split: str, splits) -> None:
    """A ValueError naming the dataset's splits when `split` is not one of them."""
    if split not in splits:
        raise ValueError(f"{dataset} split must be one of {tuple(splits)}, got {split!r}")


def read_rgb(path: Path) -> np.ndarray:
    """An image file as uint8 HxWx3 (grey, palette and RGBA files are converted)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def read_ids(path: Path) -> np.ndarray:
    """A single-channel label PNG as uint8 HxW ids, before any dataset-specific mapping."""
    with Image.open(path) as image:
        ids = np.asarray(image)
    if ids.ndim != 2:
        raise ValueError(f"{path}: expected a single-channel label image, got shape {ids.shape}")
    if ids.dtype != np.uint8:
        if ids.size and (ids.min() < 0 or ids.max() > 255):
            raise ValueError(f"{path}: label ids must lie in 0..255, got {ids.min()}..{ids.max()}")
        ids = ids.astype(np.uint8)
    return ids


def read_pair(image_path: Path, label_path: Path, lut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 HxWx3, label uint8 HxW) with the label ids mapped through `lut` (256 long)."""
    image = read_rgb(image_path)
    label = lut[read_ids(label_path)]
    if image.shape[:2] != label.shape:
        raise ValueError(
            f"{image_path} is {image.shape[0]}x{image.shape[1]} but its label {label_path} is "
            f"{label.shape[0]}x{label.shape[1]}; they must be the same size"
        )
    return image, label


def require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise FileNotFoundError(f"expected {what} in the folder {path}, which does not exist")


class LabelledFiles(Dataset):
    """(image, label) pairs read from files, label ids mapped through `lut`; every label file
    must exist (the error names how many are missing and one of them)."""

    def __init__(
        self,
        images: Sequence[Path],
        labels: Sequence[Path],
        lut: np.ndarray,
        what: str,
        transform: Callable[[np.ndarray, np.ndarray], Any] | None = None,
    ) -> None:
        missing = [path for path in labels if not path.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} of {len(images)} {what} files are missing, "
                f"expected e.g. {missing[0]}"
            )
        self.pairs = list(zip(images, labels, strict=True))
        self.lut = lut
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Any:
        image, label = read_pair(*self.pairs[index], self.lut)
        if self.transform is not None:
            return self.transform(image, label)
        return image, label
