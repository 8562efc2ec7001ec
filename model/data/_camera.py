"""Pinhole camera and flat-shape helpers shared by the synthetic street scene.

The scene lives in metres in a 3-D frame (X right, Y up, Z forward from the eye). Focal
lengths are relative to the image size, so projecting the same scene at 256x512 or 1024x2048
gives the same picture, only sampled more or less finely.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from model.data import _raster
from model.data._raster import Region

Colour = tuple[int, int, int]
# (image crop, mask over the crop, crop's first row, crop's first col) -> paints the crop
Pattern = Callable[[np.ndarray, np.ndarray, int, int], None]

FOCAL_X = 0.9  # image widths per unit of X / Z
FOCAL_Y = 1.8  # image heights per unit of Y / Z (square pixels at the default 1:2 aspect)


@dataclass(frozen=True)
class Camera:
    height: int
    width: int
    horizon: float  # vanishing point row, as a fraction of the height
    centre: float  # vanishing point column, as a fraction of the width
    eye_m: float  # eye height above the road

    def col(self, x_m: float, z_m: float) -> float:
        return (self.centre + FOCAL_X * x_m / z_m) * self.width

    def row(self, y_m: float, z_m: float) -> float:
        return (self.horizon + FOCAL_Y * (self.eye_m - y_m) / z_m) * self.height

    def ground(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(X, Z) of the road plane seen at pixel centres; only meaningful below the horizon."""
        v = (rows + 0.5) / self.height - self.horizon
        z = FOCAL_Y * self.eye_m / np.maximum(v, 1e-9)
        x = ((cols + 0.5) / self.width - self.centre) * z / FOCAL_X
        return x, z

    def side_plane(
        self, x_m: float, rows: np.ndarray, cols: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(Z, Y) on the vertical plane X = x_m (a facade along the street) at pixel centres."""
        u = (cols + 0.5) / self.width - self.centre
        u = np.where(np.abs(u) < 1e-9, 1e-9, u)
        z = FOCAL_X * x_m / u
        y = self.eye_m - ((rows + 0.5) / self.height - self.horizon) * z / FOCAL_Y
        return z, y

    def front_plane(
        self, z_m: float, rows: np.ndarray, cols: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(X, Y) on the vertical plane Z = z_m (a facade facing the camera) at pixel centres."""
        x = ((cols + 0.5) / self.width - self.centre) * z_m / FOCAL_X
        y = self.eye_m - ((rows + 0.5) / self.height - self.horizon) * z_m / FOCAL_Y
        return x, y

    def ground_patch(self, x0: float, x1: float, z0: float, z1: float) -> Region | None:
        """A rectangle on the road plane, X in [x0, x1] and Z in [z0, z1]."""
        return self.quad([(x0, 0.0, z0), (x1, 0.0, z0), (x1, 0.0, z1), (x0, 0.0, z1)])

    def wall(self, x_m: float, z0: float, z1: float, y0: float, y1: float) -> Region | None:
        """A rectangle on the vertical plane X = x_m running along the street."""
        return self.quad([(x_m, y0, z0), (x_m, y0, z1), (x_m, y1, z1), (x_m, y1, z0)])

    def quad(self, points: Sequence[tuple[float, float, float]]) -> Region | None:
        """Fill the projection of a planar convex 3-D polygon lying in front of the eye."""
        xs = [self.col(x, z) for x, _, z in points]
        ys = [self.row(y, z) for _, y, z in points]
        return _raster.polygon(xs, ys, self.height, self.width)


@dataclass(frozen=True)
class Shape:
    region: Region | None
    colour: Colour
    cls: int | None  # None paints the image only (windows, lane markings)
    pattern: Pattern | None = None
    shade: int = 256  # 256 = fully lit; applied only together with a class


@dataclass(frozen=True)
class Billboard:
    """Flat drawing at one depth, in metres relative to a foot point (dx right, y up)."""

    cam: Camera
    x_m: float
    z_m: float

    def _col(self, dx: float) -> float:
        return self.cam.col(self.x_m + dx, self.z_m)

    def _row(self, y: float) -> float:
        return self.cam.row(y, self.z_m)

    def _px(self, metres: float) -> float:
        return FOCAL_X * metres / self.z_m * self.cam.width

    def poly(
        self,
        points: Sequence[tuple[float, float]],
        colour: Colour,
        cls: int | None,
        pattern: Pattern | None = None,
    ) -> Shape:
        xs = [self._col(dx) for dx, _ in points]
        ys = [self._row(y) for _, y in points]
        return Shape(_raster.polygon(xs, ys, self.cam.height, self.cam.width), colour, cls, pattern)

    def ellipse(
        self, dx: float, y: float, rx: float, ry: float, colour: Colour, cls: int | None
    ) -> Shape:
        radius_y = FOCAL_Y * ry / self.z_m * self.cam.height
        region = _raster.ellipse(
            self._col(dx), self._row(y), self._px(rx), radius_y, self.cam.height, self.cam.width
        )
        return Shape(region, colour, cls)

    def rect(
        self, dx0: float, dx1: float, y0: float, y1: float, colour: Colour, cls: int | None
    ) -> Shape:
        """At least one pixel wide: posts stay visible however far away."""
        region = _raster.rect(
            self._col(dx0), self._col(dx1), self._row(y1), self._row(y0), *self._size
        )
        return Shape(region, colour, cls)

    def line(
        self,
        start: tuple[float, float],
        end: tuple[float, float],
        thickness_m: float,
        colour: Colour,
        cls: int | None,
    ) -> Shape:
        region = _raster.line(
            self._col(start[0]),
            self._row(start[1]),
            self._col(end[0]),
            self._row(end[1]),
            self._px(thickness_m),
            *self._size,
        )
        return Shape(region, colour, cls)

    @property
    def _size(self) -> tuple[int, int]:
        return self.cam.height, self.cam.width
