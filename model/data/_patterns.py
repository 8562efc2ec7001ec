"""Surface detail painted inside a shape: sky gradient, lane markings, paving, windows, bars.

Patterns change the image only, never the label: windows are still building, lane markings
still road. They invert the camera to place detail in metres on the surface, so it
foreshortens correctly and is the same at every image size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from model.data._camera import Camera, Colour, Pattern
from model.data._objects import grey, vary


def _grid(row0: int, col0: int, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.arange(row0, row0 + mask.shape[0], dtype=np.float64)[:, None]
    cols = np.arange(col0, col0 + mask.shape[1], dtype=np.float64)[None, :]
    return rows, cols


def sky_gradient(top: Colour, bottom: Colour, horizon_row: float) -> Pattern:
    def paint(crop: np.ndarray, mask: np.ndarray, row0: int, col0: int) -> None:
        rows = np.arange(row0, row0 + mask.shape[0], dtype=np.int64)
        weight = np.clip((rows * 1024) // max(1, int(horizon_row)), 0, 1024)[:, None]
        ramp = (np.array(top) * (1024 - weight) + np.array(bottom) * weight) // 1024
        crop[:] = np.where(mask[..., None], ramp[:, None, :].astype(np.uint8), crop)

    return paint


def road_markings(
    cam: Camera, lines_m: list[float], edges_m: tuple[float, float], zebra: float | None
) -> Pattern:
    paint_colour = np.array((215, 215, 205), dtype=np.uint8)

    def paint(crop: np.ndarray, mask: np.ndarray, row0: int, col0: int) -> None:
        x, z = cam.ground(*_grid(row0, col0, mask))
        near = z < 60.0
        dashed = np.mod(z, 9.0) < 3.5
        marked = np.zeros(mask.shape, dtype=bool)
        for line_x in lines_m:
            marked |= (np.abs(x - line_x) < 0.08) & dashed
        for edge_x in edges_m:
            marked |= np.abs(x - edge_x) < 0.08
        if zebra is not None:
            marked |= (z >= zebra) & (z < zebra + 4.0) & (np.mod(x, 1.0) < 0.5)
        crop[mask & marked & near] = paint_colour

    return paint


def paving(cam: Camera, tile_m: float, joint: Colour, curb_x: float, curb: Colour) -> Pattern:
    def paint(crop: np.ndarray, mask: np.ndarray, row0: int, col0: int) -> None:
        x, z = cam.ground(*_grid(row0, col0, mask))
        joints = ((np.mod(x, tile_m) < 0.04) | (np.mod(z, tile_m) < 0.04)) & (z < 25.0)
        crop[mask & joints] = joint
        crop[mask & (np.abs(x - curb_x) < 0.22)] = curb

    return paint


@dataclass(frozen=True)
class Windows:
    spacing_m: float  # along the facade
    width_m: float
    floor_m: float
    height_m: float
    ground_floor_m: float
    top_m: float  # no windows above this (the roof line minus a parapet)
    colours: tuple[Colour, ...]
    frame: Colour

    def paint(self, crop: np.ndarray, mask: np.ndarray, along: np.ndarray, up: np.ndarray) -> None:
        along, up = np.broadcast_arrays(along, up)
        slot = np.mod(along, self.spacing_m)
        storey = np.mod(up - self.ground_floor_m, self.floor_m)
        margin = (self.spacing_m - self.width_m) / 2
        sill = (self.floor_m - self.height_m) / 2
        in_window = (slot >= margin) & (slot < margin + self.width_m)
        in_window &= (storey >= sill) & (storey < sill + self.height_m)
        in_window &= (up > self.ground_floor_m) & (up < self.top_m)
        frame = (np.abs(slot - margin) < 0.08) | (np.abs(storey - sill) < 0.08)
        frame &= (up > self.ground_floor_m) & (up < self.top_m)
        crop[mask & frame] = self.frame
        index = (np.floor(along / self.spacing_m) * 7 + np.floor(up / self.floor_m) * 13).astype(
            np.int64
        )
        palette = np.array(self.colours, dtype=np.uint8)
        pane = palette[np.mod(index, len(self.colours))]
        hit = mask & in_window
        crop[hit] = pane[hit]
        shop = mask & (up > 0.4) & (up < self.ground_floor_m - 0.7) & (slot >= margin * 0.5)
        crop[shop] = palette[0]


def random_windows(rng: np.random.Generator, top_m: float, sky: Colour) -> Windows:
    spacing = rng.uniform(2.0, 4.0)
    floor = rng.uniform(2.8, 3.6)
    colours = (
        grey(rng, 20, 60, 8),
        grey(rng, 40, 90, 10),
        vary(rng, sky, 20),
        vary(rng, (200, 180, 110), 30),
    )
    return Windows(
        spacing_m=spacing,
        width_m=spacing * rng.uniform(0.35, 0.7),
        floor_m=floor,
        height_m=floor * rng.uniform(0.4, 0.65),
        ground_floor_m=rng.uniform(3.0, 4.5),
        top_m=top_m - 0.6,
        colours=colours,
        frame=grey(rng, 150, 240),
    )


def side_facade(cam: Camera, x_m: float, z0_m: float, windows: Windows) -> Pattern:
    def paint(crop: np.ndarray, mask: np.ndarray, row0: int, col0: int) -> None:
        z, y = cam.side_plane(x_m, *_grid(row0, col0, mask))
        windows.paint(crop, mask, z - z0_m, y)

    return paint


def front_facade(cam: Camera, z_m: float, x0_m: float, windows: Windows) -> Pattern:
    def paint(crop: np.ndarray, mask: np.ndarray, row0: int, col0: int) -> None:
        x, y = cam.front_plane(z_m, *_grid(row0, col0, mask))
        windows.paint(crop, mask, x - x0_m, y)

    return paint


def fence_bars(cam: Camera, x_m: float, bar: Colour, spacing_m: float) -> Pattern:
    def paint(crop: np.ndarray, mask: np.ndarray, row0: int, col0: int) -> None:
        z, _ = cam.side_plane(x_m, *_grid(row0, col0, mask))
        bars = (np.mod(z, spacing_m) < spacing_m * 0.35) & (z < 40.0)
        crop[mask & bars] = bar

    return paint
