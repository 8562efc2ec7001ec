"""Datasets for QGN: synthetic street scenes, Cityscapes and ADE20k.

Every dataset yields (image uint8 HxWx3, label uint8 HxW) with labels 0..C-1 and 255 = ignore,
passed through an optional `transform(image, label)`. `build_dataset` picks one by name:

    build_dataset("synthetic", "train", height=256, width=512)
    build_dataset("cityscapes", "val", root="/data/cityscapes")

The real loaders are imported only when asked for, so the synthetic data works without
`cityscapesscripts` installed. Quadtree statistics live in `model.data.stats` (not imported
here, so that `python -m model.data.stats` runs cleanly).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from torch.utils.data import Dataset

from model.data.synthetic import (
    CLASSES,
    IGNORE_INDEX,
    PALETTE,
    TEST_SEEDS,
    TRAIN_SEEDS,
    VAL_SEEDS,
    SyntheticScenes,
    make_scene,
)
from model.data.transforms import Chain, Resize

__all__ = [
    "CLASSES",
    "DATASETS",
    "IGNORE_INDEX",
    "PALETTE",
    "TEST_SEEDS",
    "TRAIN_SEEDS",
    "VAL_SEEDS",
    "DatasetBuilder",
    "SyntheticScenes",
    "build_dataset",
    "make_scene",
]

PairTransform = Callable[[Any, Any], Any]


class DatasetBuilder(Protocol):
    def __call__(
        self,
        split: str,
        root: str | Path | None,
        height: int | None,
        width: int | None,
        transform: PairTransform | None,
    ) -> Dataset: ...


def _resized(
    height: int | None, width: int | None, transform: PairTransform | None
) -> PairTransform | None:
    """The transform to use: resize first when a size is given, then the caller's."""
    if (height is None) != (width is None):
        raise ValueError(f"give both height and width or neither, got {height=} and {width=}")
    if height is None or width is None:
        return transform
    resize = Resize(height, width)
    return resize if transform is None else Chain(resize, transform)


def _require_root(name: str, root: str | Path | None) -> Path:
    if root is None:
        raise ValueError(f"dataset {name!r} reads files: pass root=<folder holding the dataset>")
    return Path(root)


def _synthetic(
    split: str,
    root: str | Path | None,
    height: int | None,
    width: int | None,
    transform: PairTransform | None,
) -> Dataset:
    seeds = {"train": TRAIN_SEEDS, "val": VAL_SEEDS, "test": TEST_SEEDS}
    if split not in seeds:
        raise ValueError(f"synthetic split must be one of {tuple(seeds)}, got {split!r}")
    if root is not None:
        raise ValueError("synthetic scenes are generated, not read: leave root=None")
    if (height is None) != (width is None):
        raise ValueError(f"give both height and width or neither, got {height=} and {width=}")
    return SyntheticScenes(seeds[split], height or 512, width or 1024, transform)


def _files(name: str, module: str, loader: str) -> DatasetBuilder:
    """A builder for a dataset read from files; its module is imported only when asked
    for (the Cityscapes one needs `cityscapesscripts`)."""

    def build(split, root, height, width, transform) -> Dataset:  # a DatasetBuilder
        dataset = getattr(importlib.import_module(module), loader)
        return dataset(_require_root(name, root), split, _resized(height, width, transform))

    return build


DATASETS: dict[str, DatasetBuilder] = {
    "synthetic": _synthetic,
    "cityscapes": _files("cityscapes", "model.data.cityscapes", "CityscapesSegmentation"),
    "ade20k": _files("ade20k", "model.data.ade20k", "ADE20kSegmentation"),
}


def build_dataset(
    name: str,
    split: str,
    root: str | Path | None = None,
    height: int | None = None,
    width: int | None = None,
    transform: PairTransform | None = None,
) -> Dataset:
    """A registered dataset by name.

    height/width: the synthetic scenes are generated at that size (default 512x1024); real
    images are resized to it (bilinear image, nearest label), or kept as stored when None.
    """
    try:
        builder = DATASETS[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; valid names: {sorted(DATASETS)}") from None
    return builder(split, root, height, width, transform)
