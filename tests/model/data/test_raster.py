"""Pixel-centre rasterisation used by the synthetic scenes."""

from __future__ import annotations

import numpy as np

from model.data import _raster


def _dense(region: _raster.Region | None, height: int, width: int) -> np.ndarray:
    out = np.zeros((height, width), dtype=bool)
    if region is not None:
        out[region.row0 : region.row1, region.col0 : region.col1] = region.mask
    return out


def test_polygon_covers_pixel_centres_inside() -> None:
    mask = _dense(_raster.polygon([2.0, 5.0, 5.0, 2.0], [1.0, 1.0, 3.0, 3.0], 6, 8), 6, 8)
    expected = np.zeros((6, 8), dtype=bool)
    expected[1:3, 2:5] = True
    np.testing.assert_array_equal(mask, expected)


def test_polygon_orientation_and_clipping() -> None:
    clockwise = _dense(_raster.polygon([-3.0, 10.0, -3.0], [-2.0, 2.0, 9.0], 6, 8), 6, 8)
    counter = _dense(_raster.polygon([-3.0, -3.0, 10.0], [-2.0, 9.0, 2.0], 6, 8), 6, 8)
    np.testing.assert_array_equal(clockwise, counter)
    assert clockwise[:, 0].all() and not clockwise[5, 7]


def test_triangle_matches_half_plane_tests() -> None:
    xs, ys = [0.3, 7.6, 2.2], [0.4, 2.9, 5.7]
    mask = _dense(_raster.polygon(xs, ys, 6, 8), 6, 8)
    cy, cx = np.mgrid[0:6, 0:8] + 0.5
    inside = np.ones((6, 8), dtype=bool)
    for i in range(3):
        x0, y0, x1, y1 = xs[i], ys[i], xs[(i + 1) % 3], ys[(i + 1) % 3]
        inside &= (x1 - x0) * (cy - y0) - (y1 - y0) * (cx - x0) >= 0
    np.testing.assert_array_equal(mask, inside)


def test_outside_or_empty_shapes_give_none() -> None:
    assert _raster.polygon([10.0, 12.0, 11.0], [1.0, 1.0, 3.0], 6, 8) is None
    assert _raster.ellipse(3.0, 3.0, 0.0, 2.0, 6, 8) is None
    assert _raster.rect(9.0, 10.0, 0.0, 2.0, 6, 8) is None


def test_thin_rect_keeps_one_pixel() -> None:
    mask = _dense(_raster.rect(3.1, 3.2, 0.0, 4.0, 6, 8), 6, 8)
    assert mask.sum() == 4 and mask[:, 3].sum() == 4


def test_ellipse_is_symmetric_and_sized() -> None:
    mask = _dense(_raster.ellipse(8.0, 8.0, 5.0, 3.0, 16, 16), 16, 16)
    np.testing.assert_array_equal(mask, mask[::-1, :])
    np.testing.assert_array_equal(mask, mask[:, ::-1])
    assert abs(mask.sum() - np.pi * 5 * 3) < 6
    assert mask[8].sum() == 10 and mask[:, 8].sum() == 6
