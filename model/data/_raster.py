"""Pixel-exact filling of convex polygons, ellipses and rectangles with numpy only.

The synthetic dataset promises bit-identical scenes on every machine, so rasterisation cannot
depend on a drawing library's version. A pixel belongs to a shape iff its centre
(col + 0.5, row + 0.5) lies inside it (half-open on the right and bottom edges). Only
IEEE-exact operations are used (+, -, *, /, sqrt, comparisons, floor/ceil), never libm
transcendentals, so the result is the same wherever numpy runs.

Each function returns a `Region`: the bounding rows/cols clipped to the image and a boolean
mask over that box, or None when no pixel centre is covered.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class Region(NamedTuple):
    row0: int
    row1: int
    col0: int
    col1: int
    mask: np.ndarray  # bool, (row1 - row0, col1 - col0)


def _ceil_centre(value: float) -> int:
    """First pixel index whose centre is >= value."""
    return math.ceil(value - 0.5)


def polygon(xs: Sequence[float], ys: Sequence[float], height: int, width: int) -> Region | None:
    """Fill a convex polygon given by its vertices in order (either orientation), in pixels.

    Rows are filled between the leftmost and rightmost edge crossing, so a non-convex
    polygon is filled as if each row were convex.
    """
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    row0 = max(0, _ceil_centre(float(y.min())))
    row1 = min(height, _ceil_centre(float(y.max())))
    if row0 >= row1:
        return None
    centre_y = np.arange(row0, row1, dtype=np.float64) + 0.5
    x_next, y_next = np.roll(x, -1), np.roll(y, -1)
    sloped = y != y_next
    x0, y0, x1, y1 = x[sloped, None], y[sloped, None], x_next[sloped, None], y_next[sloped, None]
    active = (centre_y >= np.minimum(y0, y1)) & (centre_y < np.maximum(y0, y1))
    crossing = x0 + (centre_y - y0) * (x1 - x0) / (y1 - y0)
    left = np.where(active, crossing, np.inf).min(axis=0)
    right = np.where(active, crossing, -np.inf).max(axis=0)
    first = np.clip(np.ceil(left - 0.5), 0, width)
    stop = np.clip(np.ceil(right - 0.5), 0, width)
    stop = np.maximum(stop, first)
    col0, col1 = int(first.min()), int(stop.max())
    if col0 >= col1:
        return None
    cols = np.arange(col0, col1, dtype=np.float64)
    mask = (cols >= first[:, None]) & (cols < stop[:, None])
    return Region(row0, row1, col0, col1, mask)


def ellipse(
    centre_x: float, centre_y: float, radius_x: float, radius_y: float, height: int, width: int
) -> Region | None:
    """Fill an axis-aligned ellipse, in pixels."""
    if radius_x <= 0 or radius_y <= 0:
        return None
    row0 = max(0, _ceil_centre(centre_y - radius_y))
    row1 = min(height, _ceil_centre(centre_y + radius_y) + 1)
    col0 = max(0, _ceil_centre(centre_x - radius_x))
    col1 = min(width, _ceil_centre(centre_x + radius_x) + 1)
    if row0 >= row1 or col0 >= col1:
        return None
    dy = (np.arange(row0, row1, dtype=np.float64) + 0.5 - centre_y) / radius_y
    dx = (np.arange(col0, col1, dtype=np.float64) + 0.5 - centre_x) / radius_x
    mask = (dy * dy)[:, None] + (dx * dx)[None, :] <= 1.0
    if not mask.any():
        return None
    return Region(row0, row1, col0, col1, mask)


def rect(x0: float, x1: float, y0: float, y1: float, height: int, width: int) -> Region | None:
    """Fill an axis-aligned rectangle at least one pixel wide and tall.

    Thin structures (poles, sign posts) must not vanish between pixel centres at small image
    sizes, hence the one-pixel minimum, which `polygon` does not give.
    """
    col0 = math.floor(x0 + 0.5)
    col1 = max(col0 + 1, math.floor(x1 + 0.5))
    row0 = math.floor(y0 + 0.5)
    row1 = max(row0 + 1, math.floor(y1 + 0.5))
    col0, col1 = max(0, col0), min(width, col1)
    row0, row1 = max(0, row0), min(height, row1)
    if row0 >= row1 or col0 >= col1:
        return None
    return Region(row0, row1, col0, col1, np.ones((row1 - row0, col1 - col0), dtype=bool))


def line(
    x0: float, y0: float, x1: float, y1: float, thickness: float, height: int, width: int
) -> Region | None:
    """Fill a straight stroke of the given thickness (at least one pixel), in pixels."""
    dx, dy = x1 - x0, y1 - y0
    length = math.sqrt(dx * dx + dy * dy)
    if length == 0.0:
        return rect(x0, x0, y0, y0, height, width)
    half = max(thickness, 1.0) / 2.0
    nx, ny = -dy / length * half, dx / length * half
    return polygon(
        (x0 + nx, x1 + nx, x1 - nx, x0 - nx), (y0 + ny, y1 + ny, y1 - ny, y0 - ny), height, width
    )
