"""Procedural street scenes modelled on Cityscapes, for training and testing without downloads.

A seed fixes a scene completely: `make_scene(seed)` is bit-identical on every machine, because
the layout comes from `numpy.random.Generator(PCG64(seed))` and the painting uses only integer
arithmetic and IEEE-exact float operations (see `_raster`), never torch, Pillow drawing or
libm functions. NumPy keeps Generator streams stable in practice but does not promise it
across versions; tests pin the digests of two scenes to catch any change.
The layout is defined in metres and relative image coordinates, so one seed gives the same
scene at every size; pixel noise differs between sizes.

What makes it a fair stand-in for Cityscapes:
- a perspective street (vanishing point, road, pavements, facades with windows, sky) with
  thin poles (1-4 px at 512x1024), signs, fences, trees, people, cars and cyclists of all
  sizes occluding each other in depth order;
- class colours overlap on purpose (grey cars, roads, walls, fences, overcast sky; sky-blue
  window panes), with texture, lighting, shadows, haze, blur and noise, so the class must be
  told from shape and context;
- about 59 % of pixels lie in uniform 32x32 blocks at 512x1024, against > 50 % published
  for Cityscapes (run `python -m model.data.stats`).

Labels are class indices into `CLASSES`. `IGNORE_INDEX` (255) marks only a car bonnet along
the bottom edge, present in about 40 % of scenes and at most ~7 % of the height, as the ego
vehicle is in Cityscapes.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from model.data._objects import CLASSES
from model.data._street import IGNORE_INDEX, Look, paint_street

__all__ = [
    "CLASSES",
    "IGNORE_INDEX",
    "PALETTE",
    "TEST_SEEDS",
    "TRAIN_SEEDS",
    "VAL_SEEDS",
    "SyntheticScenes",
    "make_scene",
]

# The Cityscapes colours of the same classes.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (190, 153, 153),
    (153, 153, 153),
    (220, 220, 0),
    (107, 142, 35),
    (152, 251, 152),
    (70, 130, 180),
    (220, 20, 60),
    (0, 0, 142),
    (255, 0, 0),
)
TRAIN_SEEDS = range(0, 1_000_000)
VAL_SEEDS = range(10_000_000, 10_000_000 + 1000)
# Fresh scenes for the model card's figures: never trained on, never used to choose anything.
TEST_SEEDS = range(20_000_000, 20_000_000 + 1000)

# Texture amplitude per class (fine grain, coarse blotches); index 255 = bonnet.
_FINE = np.zeros(256, dtype=np.int32)
_COARSE = np.zeros(256, dtype=np.int32)
for _name, _fine, _coarse in (
    ("road", 5, 4),
    ("sidewalk", 4, 3),
    ("building", 4, 4),
    ("fence", 4, 2),
    ("pole", 2, 1),
    ("traffic sign", 1, 1),
    ("vegetation", 14, 12),
    ("terrain", 8, 9),
    ("sky", 1, 3),
    ("person", 4, 2),
    ("car", 2, 2),
    ("rider", 4, 2),
):
    _FINE[CLASSES.index(_name)], _COARSE[CLASSES.index(_name)] = _fine, _coarse
_FINE[IGNORE_INDEX], _COARSE[IGNORE_INDEX] = 1, 2


def _blur_121(image: np.ndarray) -> np.ndarray:
    """Integer [1 2 1]/4 blur along both axes, edges replicated."""
    for axis in (0, 1):
        padded = np.concatenate(
            [image.take([0], axis=axis), image, image.take([-1], axis=axis)], axis=axis
        )
        n = image.shape[axis]
        image = (
            padded.take(range(0, n), axis=axis)
            + 2 * padded.take(range(1, n + 1), axis=axis)
            + padded.take(range(2, n + 2), axis=axis)
        ) >> 2
    return image


def _develop(
    image: np.ndarray, label: np.ndarray, shade: np.ndarray, look: Look, rng: np.random.Generator
) -> np.ndarray:
    """Texture, lighting, haze, blur and sensor noise, all in integer arithmetic."""
    height, width = label.shape
    out = image.astype(np.int32)
    fine = rng.integers(-16, 17, size=(height, width), dtype=np.int32)
    cell = max(2, width // 128)
    blotches = rng.integers(-16, 17, size=(height // cell + 1, width // cell + 1), dtype=np.int32)
    coarse = _blur_121(np.repeat(np.repeat(blotches, cell, axis=0), cell, axis=1)[:height, :width])
    texture = (fine * _FINE[label] + coarse * _COARSE[label]) * look.texture >> 8
    out += texture[..., None]
    out = out * shade.astype(np.int32)[..., None] >> 8
    out = out * np.array(look.gain, dtype=np.int32) >> 8
    if look.haze:
        out = (out * (256 - look.haze) + 200 * look.haze) >> 8
    for _ in range(look.blur_passes):
        out = _blur_121(out)
    out += rng.integers(-look.noise, look.noise + 1, size=out.shape, dtype=np.int32)
    return np.clip(out, 0, 255).astype(np.uint8)


def make_scene(seed: int, height: int = 512, width: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """One street scene: (image uint8 HxWx3, label uint8 HxW with values in 0..11 or 255)."""
    seed = operator.index(seed)  # ints only: 1.5 must not silently become seed 1
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if height < 1 or width < 1:
        raise ValueError(f"image size must be at least 1x1, got {height}x{width}")
    canvas, look = paint_street(np.random.Generator(np.random.PCG64(seed)), height, width)
    # Pixel noise has its own stream so the layout stream never depends on the image size.
    pixel_rng = np.random.Generator(np.random.PCG64([seed, 1]))
    image = _develop(canvas.image, canvas.label, canvas.shade, look, pixel_rng)
    return image, canvas.label


class SyntheticScenes(Dataset):
    """Scenes for a list of seeds, generated on the fly (nothing is cached or stored)."""

    def __init__(
        self,
        seeds: range | Sequence[int],
        height: int = 512,
        width: int = 1024,
        transform: Callable[[np.ndarray, np.ndarray], Any] | None = None,
    ) -> None:
        if height < 1 or width < 1:
            raise ValueError(f"image size must be at least 1x1, got {height}x{width}")
        self.seeds = seeds
        self.height = height
        self.width = width
        self.transform = transform

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, index: int) -> Any:
        image, label = make_scene(int(self.seeds[index]), self.height, self.width)
        if self.transform is not None:
            return self.transform(image, label)
        return image, label
