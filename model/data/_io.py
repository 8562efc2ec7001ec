"""Reading image/label files for the real datasets, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


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
