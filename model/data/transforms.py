"""Pair transforms: callables taking and returning (image uint8 HxWx3, label uint8 HxW).

Classes rather than closures so datasets stay picklable for DataLoader worker processes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image


class Resize:
    """Resize to height x width: bilinear for the image, nearest for the label (no new ids)."""

    def __init__(self, height: int, width: int) -> None:
        if height < 1 or width < 1:
            raise ValueError(f"Resize needs a size of at least 1x1, got {height}x{width}")
        self.height = height
        self.width = width

    def __call__(self, image: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if image.shape[:2] == (self.height, self.width):
            return image, label
        size = (self.width, self.height)
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))
        label = np.asarray(Image.fromarray(label).resize(size, Image.Resampling.NEAREST))
        return image, label


class Chain:
    """Apply pair transforms one after the other; the last may return anything."""

    def __init__(self, *transforms: Callable[..., Any]) -> None:
        self.transforms = transforms

    def __call__(self, image: np.ndarray, label: np.ndarray) -> Any:
        pair: Any = (image, label)
        for transform in self.transforms:
            pair = transform(*pair)
        return pair
