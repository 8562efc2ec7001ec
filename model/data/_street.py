"""Layout of one synthetic street, painted back to front.

Painter's order: sky, bare ground, far skyline, road and pavements, trees in the gaps between
buildings, roofs, facades, then fences and hedges on the pavements' outer edges, then
everything standing (trees, poles, signs, people, riders, cars), farthest first. Nothing
standing is placed behind the fences or facades, so this order is a correct depth order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from model.data import _objects as obj
from model.data import _patterns as pat
from model.data import _raster
from model.data._camera import Billboard, Camera, Colour, Shape
from model.data._objects import (
    BUILDING,
    FENCE,
    ROAD,
    SIDEWALK,
    SKY,
    TERRAIN,
    VEGETATION,
    grey,
    pick,
    vary,
)

IGNORE_INDEX = 255
NEAR_Z_M = 0.5  # ground starts this close to the eye, i.e. below the bottom edge

BUILDING_COLOURS: tuple[Colour, ...] = (
    (70, 70, 72),
    (110, 108, 105),
    (150, 148, 145),
    (190, 188, 185),
    (215, 210, 200),
    (200, 180, 145),
    (150, 85, 65),
    (120, 100, 80),
    (175, 160, 120),
)


@dataclass(frozen=True)
class Look:
    """Photometric settings applied after painting (see synthetic._develop)."""

    gain: tuple[int, int, int]  # per channel, 256 = unchanged
    haze: int  # 0..256 blend towards a grey haze
    blur_passes: int
    texture: int  # texture strength, 16 = nominal
    noise: int  # +- sensor noise per channel


class Canvas:
    """Image, label and shading painted together, so the label is exact by construction."""

    def __init__(self, height: int, width: int) -> None:
        self.image = np.zeros((height, width, 3), dtype=np.uint8)
        self.label = np.full((height, width), IGNORE_INDEX, dtype=np.uint8)
        self.shade = np.full((height, width), 256, dtype=np.uint16)

    def paint(self, shapes: Iterable[Shape]) -> None:
        for shape in shapes:
            if shape.region is None:
                continue
            row0, row1, col0, col1, mask = shape.region
            crop = self.image[row0:row1, col0:col1]
            crop[mask] = shape.colour
            if shape.pattern is not None:
                shape.pattern(crop, mask, row0, col0)
            if shape.cls is not None:
                self.label[row0:row1, col0:col1][mask] = shape.cls
                self.shade[row0:row1, col0:col1][mask] = shape.shade

    def darken(self, region: _raster.Region | None, shade: int) -> None:
        """Cast a shadow on what is painted so far; objects painted later are lit."""
        if region is not None:
            row0, row1, col0, col1, mask = region
            self.shade[row0:row1, col0:col1][mask] = shade


@dataclass(frozen=True)
class Side:
    """One side of the street, sign -1 (left) or +1 (right); widths in metres."""

    sign: float
    road_m: float  # kerb distance from the eye's line
    pavement_m: float
    verge_m: float  # grass between pavement and facades, 0 if none

    @property
    def kerb(self) -> float:
        return self.sign * self.road_m

    @property
    def pavement_edge(self) -> float:
        return self.sign * (self.road_m + self.pavement_m)

    @property
    def facade(self) -> float:
        return self.sign * (self.road_m + self.pavement_m + self.verge_m)


@dataclass(frozen=True)
class Street:
    cam: Camera
    far_z: float  # where the street ends in a skyline
    downtown: float  # 0 = leafy suburb .. 1 = dense city
    sunny: bool
    sky_low: Colour  # sky colour at the horizon, also reflected in window panes
    left: Side
    right: Side

    @property
    def sides(self) -> tuple[Side, Side]:
        return self.left, self.right


def _near_z(rng: np.random.Generator, low: float, high: float) -> float:
    """A depth biased towards the camera, as in a street view (no libm functions)."""
    u = rng.random()
    return low + (high - low) * u * u


def paint_street(rng: np.random.Generator, height: int, width: int) -> tuple[Canvas, Look]:
    cam = Camera(
        height=height,
        width=width,
        horizon=rng.uniform(0.36, 0.48),
        centre=rng.uniform(0.42, 0.58),
        eye_m=rng.uniform(1.3, 1.7),
    )
    canvas = Canvas(height, width)
    far_z, downtown, sunny = rng.uniform(120.0, 220.0), rng.random(), rng.random() < 0.55
    sky_low = _paint_sky(rng, canvas, cam)
    left = Side(-1.0, rng.uniform(2.5, 8.0), rng.uniform(1.5, 5.0), _verge(rng))
    right = Side(1.0, rng.uniform(2.0, 5.5), rng.uniform(1.5, 5.0), _verge(rng))
    if left.verge_m == 0.0 and right.verge_m == 0.0:  # every scene shows some terrain
        right = Side(1.0, right.road_m, right.pavement_m, rng.uniform(1.0, 4.0))
    street = Street(cam, far_z, downtown, sunny, sky_low, left, right)

    _paint_skyline(rng, canvas, street)
    _paint_ground(rng, canvas, street)
    _paint_buildings(rng, canvas, street)
    _paint_edges(rng, canvas, street)
    canvas.paint(shape for _, shapes in _standing(rng, street) for shape in shapes)
    _paint_bonnet(rng, canvas)

    brightness = int(rng.integers(170, 290))
    cast = [int(c) for c in rng.integers(-18, 19, size=3)]
    look = Look(
        gain=(brightness + cast[0], brightness + cast[1], brightness + cast[2]),
        haze=int(rng.integers(0, 90)) if rng.random() < 0.2 else 0,
        blur_passes=int(rng.integers(0, 3)),
        texture=int(rng.integers(8, 24)),
        noise=int(rng.integers(2, 12)),
    )
    return canvas, look


def _verge(rng: np.random.Generator) -> float:
    return 0.0 if rng.random() < 0.5 else rng.uniform(1.0, 5.0)


def _paint_sky(rng: np.random.Generator, canvas: Canvas, cam: Camera) -> Colour:
    """Sky above the horizon and bare terrain below it; returns the sky colour at the horizon."""
    height, width = cam.height, cam.width
    if rng.random() < 0.45:  # overcast: the sky is as grey as concrete
        top, low = grey(rng, 170, 225, 4), grey(rng, 190, 240, 4)
    else:
        top, low = vary(rng, (90, 140, 210), 25), vary(rng, (170, 195, 225), 20)
    horizon_row = cam.horizon * height
    gradient = pat.sky_gradient(top, low, horizon_row)
    canvas.paint([Shape(_raster.rect(0, width, 0, horizon_row, height, width), top, SKY, gradient)])
    for _ in range(int(rng.integers(0, 5))):
        cloud = _raster.ellipse(
            rng.uniform(0.0, 1.0) * width,
            rng.uniform(0.0, 0.3) * height,
            rng.uniform(0.05, 0.2) * width,
            rng.uniform(0.02, 0.06) * height,
            height,
            width,
        )
        canvas.paint([Shape(cloud, vary(rng, low, 12), None)])
    terrain = pick(rng, ((110, 120, 70), (140, 130, 95), (85, 120, 55)), 15)
    ground = _raster.rect(0, width, horizon_row, height, height, width)
    canvas.paint([Shape(ground, terrain, TERRAIN)])
    return low


def _paint_skyline(rng: np.random.Generator, canvas: Canvas, street: Street) -> None:
    """Buildings and tree clumps facing the camera where the street ends."""
    cam, far_z = street.cam, street.far_z
    shapes: list[Shape] = []
    x = -1.3 * far_z
    while x < 1.3 * far_z:
        span = rng.uniform(8.0, 30.0)
        board = Billboard(cam, x + span / 2, far_z)
        if rng.random() < 0.3 - 0.2 * street.downtown:
            for _ in range(3):
                r = rng.uniform(3.0, 7.0)
                leaf = vary(rng, (55, 85, 40), 15)
                dx = rng.uniform(-span / 2, span / 2)
                shapes.append(board.ellipse(dx, rng.uniform(0.5, 1.2) * r, r, r, leaf, VEGETATION))
        else:
            top = rng.uniform(6.0, 20.0 + 30.0 * street.downtown)
            facade = pat.front_facade(cam, far_z, x, pat.random_windows(rng, top, street.sky_low))
            outline = [(-span / 2, 0.0), (span / 2, 0.0), (span / 2, top), (-span / 2, top)]
            colour = pick(rng, BUILDING_COLOURS, 15)
            shapes.append(board.poly(outline, colour, BUILDING, facade))
        x += span
    canvas.paint(shapes)


def _paint_ground(rng: np.random.Generator, canvas: Canvas, street: Street) -> None:
    """Road with markings and repair patches, pavements with kerbs, grass verges."""
    cam, far_z, left, right = street.cam, street.far_z, street.left, street.right
    asphalt = grey(rng, 70, 125, 5)
    lanes = [-1.75 - 3.5 * k for k in range(3) if 1.75 + 3.5 * k < left.road_m - 1.0]
    lanes += [1.75 + 3.5 * k for k in range(3) if 1.75 + 3.5 * k < right.road_m - 1.0]
    zebra = rng.uniform(8.0, 30.0) if rng.random() < 0.3 else None
    markings = pat.road_markings(cam, lanes, (left.kerb + 0.3, right.kerb - 0.3), zebra)
    road = cam.ground_patch(left.kerb, right.kerb, NEAR_Z_M, far_z)
    canvas.paint([Shape(road, asphalt, ROAD, markings)])
    for _ in range(int(rng.integers(0, 4))):
        z0, x0 = rng.uniform(4.0, 40.0), rng.uniform(left.kerb, right.kerb - 2.0)
        size = rng.uniform(1.0, 4.0)
        patch = cam.ground_patch(x0, x0 + size, z0, z0 + 2 * size)
        canvas.paint([Shape(patch, vary(rng, asphalt, 18), None)])

    stone = grey(rng, 105, 175, 8) if rng.random() < 0.75 else vary(rng, (160, 115, 100), 15)
    for side in street.sides:
        joint, kerb_colour = vary(rng, stone, 25), grey(rng, 120, 200)
        tile = rng.uniform(0.4, 1.2)
        pattern = pat.paving(cam, tile, joint, side.kerb + side.sign * 0.12, kerb_colour)
        outer = side.facade if side.verge_m == 0.0 else side.pavement_edge
        region = cam.ground_patch(side.kerb, outer, NEAR_Z_M, far_z)
        canvas.paint([Shape(region, stone, SIDEWALK, pattern)])
        if side.verge_m > 0.0:
            grass = pick(rng, ((95, 130, 60), (130, 135, 85), (110, 110, 90)), 15)
            region = cam.ground_patch(side.pavement_edge, side.facade, NEAR_Z_M, far_z)
            canvas.paint([Shape(region, grass, TERRAIN)])


def _paint_buildings(rng: np.random.Generator, canvas: Canvas, street: Street) -> None:
    """Facades along both sides, some with pitched roofs; gaps show trees and open ground."""
    cam = street.cam
    shadow_side = int(rng.integers(2))
    shadow_depth = rng.uniform(3.0, 14.0)
    shadow_level = int(rng.integers(120, 190))
    gap_trees: list[Shape] = []
    roofs: list[Shape] = []
    facades: list[Shape] = []
    shadows: list[_raster.Region | None] = []
    for index, side in enumerate(street.sides):
        in_shadow = street.sunny and index == shadow_side
        x_f = side.facade
        z = rng.uniform(1.0, 8.0)
        while z < street.far_z:
            length = rng.uniform(8.0, 35.0)
            if rng.random() < 0.35 - 0.25 * street.downtown:
                for _ in range(int(rng.integers(1, 4))):
                    x = x_f + side.sign * rng.uniform(2.0, 9.0)
                    board = Billboard(cam, x, z + rng.uniform(0.0, length))
                    gap_trees += obj.tree(rng, board, rng.uniform(2.0, 4.0))
                z += length
                continue
            top = rng.uniform(6.0, 12.0 + 30.0 * street.downtown)
            windows = pat.random_windows(rng, top, street.sky_low)
            colour = pick(rng, BUILDING_COLOURS, 15)
            if rng.random() < 0.6 - 0.5 * street.downtown:  # a pitched roof, seen from below
                back, ridge = x_f + side.sign * rng.uniform(3.0, 8.0), top + rng.uniform(1.5, 5.0)
                corners = [(x_f, top, z), (x_f, top, z + length), (back, ridge, z + length)]
                corners.append((back, ridge, z))
                tiles = pick(rng, ((130, 60, 50), (60, 60, 65), (100, 80, 70)), 12)
                roofs.append(Shape(cam.quad(corners), tiles, BUILDING))
                chimney = Billboard(
                    cam, x_f + side.sign * rng.uniform(1.0, 2.5), z + rng.uniform(0.1, 0.8) * length
                )
                roofs.append(
                    chimney.rect(-0.4, 0.4, top, ridge + 0.8, vary(rng, colour, 20), BUILDING)
                )
            region = cam.wall(x_f, z, z + length, 0.0, top)
            pattern = pat.side_facade(cam, x_f, z, windows)
            facades.append(
                Shape(region, colour, BUILDING, pattern, shadow_level if in_shadow else 256)
            )
            if in_shadow:
                reach = x_f - side.sign * min(shadow_depth, top)
                shadows.append(cam.ground_patch(x_f, reach, z, z + length))
            z += length
    canvas.paint(gap_trees)
    canvas.paint(roofs)
    for region in shadows:
        canvas.darken(region, shadow_level)
    canvas.paint(facades)


def _paint_edges(rng: np.random.Generator, canvas: Canvas, street: Street) -> None:
    """Fences, low walls and hedges along the pavements' outer edges; at least one fence."""
    cam = street.cam
    shapes: list[Shape] = []
    have_fence = False
    for side in street.sides:
        x_f = side.pavement_edge
        z = rng.uniform(3.0, 20.0)
        while z < street.far_z * 0.6:
            length, kind = rng.uniform(6.0, 30.0), rng.random()
            if kind < 0.35 or not have_fence:
                top = rng.uniform(0.9, 2.0)
                colour = pick(
                    rng,
                    ((90, 90, 90), (150, 150, 145), (110, 90, 70), (60, 80, 60), (200, 200, 195)),
                    12,
                )
                bars = vary(rng, colour, 40)
                spacing = rng.uniform(0.12, 2.5)
                pattern = pat.fence_bars(cam, x_f, bars, spacing) if rng.random() < 0.6 else None
                shapes.append(Shape(cam.wall(x_f, z, z + length, 0.0, top), colour, FENCE, pattern))
                have_fence = True
            elif kind < 0.55:
                top = rng.uniform(0.8, 1.6)
                leaf = vary(rng, (55, 90, 40), 15)
                shapes.append(Shape(cam.wall(x_f, z, z + length, 0.0, top), leaf, VEGETATION))
                for _ in range(int(rng.integers(2, 6))):  # a lumpy top
                    board = Billboard(cam, x_f, z + rng.uniform(0.0, length))
                    rx, ry = rng.uniform(0.4, 0.9), rng.uniform(0.3, 0.6)
                    shapes.append(board.ellipse(0.0, top, rx, ry, vary(rng, leaf, 10), VEGETATION))
            z += length + rng.uniform(3.0, 40.0)
    canvas.paint(shapes)


def _paint_bonnet(rng: np.random.Generator, canvas: Canvas) -> None:
    """The ego car's bonnet along the bottom edge in some scenes: the only ignore pixels."""
    if rng.random() >= 0.4:
        return
    height, width = canvas.label.shape
    rise, curve = rng.uniform(0.03, 0.07), rng.uniform(0.3, 0.8)
    us = [i / 16 for i in range(17)]
    xs = [u * width for u in us] + [float(width), 0.0]
    ys = [(1.0 - rise * (1.0 - curve * 4.0 * (u - 0.5) * (u - 0.5))) * height for u in us]
    ys += [float(height), float(height)]
    paint = pick(rng, obj.CAR_PAINT, 8)
    canvas.paint([Shape(_raster.polygon(xs, ys, height, width), paint, IGNORE_INDEX)])


def _standing(rng: np.random.Generator, street: Street) -> list[tuple[float, list[Shape]]]:
    """Everything on the pavements and the road as (depth, shapes), farthest first."""
    cam, left, right = street.cam, street.left, street.right
    items: list[tuple[float, list[Shape]]] = []

    for side in street.sides:
        if rng.random() < 0.85 - 0.4 * street.downtown:  # a row of street trees
            z, spacing = rng.uniform(3.0, 14.0), rng.uniform(8.0, 20.0)
            x = side.kerb + side.sign * rng.uniform(0.5, 1.0)
            while z < 90.0:
                items.append((z, obj.tree(rng, Billboard(cam, x, z), rng.uniform(1.5, 3.5))))
                z += spacing * rng.uniform(0.8, 1.2)
        if rng.random() < 0.85:  # street lights
            z, spacing = rng.uniform(12.0, 30.0), rng.uniform(18.0, 40.0)
            x = side.kerb + side.sign * 0.4
            while z < street.far_z * 0.7:
                items.append((z, obj.lamp_post(rng, Billboard(cam, x, z), -side.sign)))
                z += spacing
        if side.road_m >= 4.0 and rng.random() < 0.75:  # cars parked along the kerb
            z = rng.uniform(5.0, 15.0)
            while z < 80.0:
                x = side.kerb - side.sign * rng.uniform(1.0, 1.3)
                items.append((z, obj.car(rng, cam, x, z, facing_away=side.sign > 0)))
                z += rng.uniform(5.0, 12.0)
                if rng.random() < 0.3:
                    z += rng.uniform(5.0, 30.0)
        if rng.random() < 0.35:  # bollards along the kerb
            z = rng.uniform(4.0, 12.0)
            end, spacing = z + rng.uniform(10.0, 40.0), rng.uniform(1.5, 4.0)
            x = side.kerb + side.sign * 0.25
            while z < end:
                items.append((z, obj.bollard(rng, Billboard(cam, x, z))))
                z += spacing
        if rng.random() < 0.4:  # bicycles parked across the pavement
            z = rng.uniform(5.0, 30.0)
            x = side.pavement_edge - side.sign * 0.9
            for k in range(int(rng.integers(2, 7))):
                board = Billboard(cam, x, z + 0.7 * k)
                items.append((z + 0.7 * k, obj.bicycle(rng, board, facing=-side.sign)))

    # The first of each kind is placed near enough to show at small image sizes.
    for i in range(int(rng.integers(2, 7))):
        side = street.sides[int(rng.integers(2))]
        z = rng.uniform(7.0, 16.0) if i == 0 else _near_z(rng, 6.0, 60.0)
        x = side.kerb + side.sign * rng.uniform(0.3, 1.0)
        items.append((z, obj.traffic_sign(rng, Billboard(cam, x, z))))

    for i in range(int(rng.integers(3, 10))):
        on_road = rng.random() < 0.12
        z = rng.uniform(6.0, 15.0) if i == 0 else _near_z(rng, 5.0, 60.0)
        if on_road:
            z, x = max(z, 8.0), rng.uniform(left.kerb, right.kerb)
        else:
            side = street.sides[int(rng.integers(2))]
            x = side.kerb + side.sign * rng.uniform(0.4, max(0.5, side.pavement_m - 0.3))
        for _ in range(int(rng.integers(1, 4))):  # people walk in small groups
            dz, dx = rng.uniform(-0.8, 0.8), rng.uniform(-0.7, 0.7)
            board = Billboard(cam, x + dx, z + dz)
            items.append((z + dz, obj.person(rng, board)))

    for i in range(int(rng.integers(1, 5))):
        crossing = rng.random() < 0.3
        z = rng.uniform(8.0, 18.0) if i == 0 else _near_z(rng, 8.0, 60.0)
        if crossing:
            x = rng.uniform(left.kerb + 1.0, right.kerb - 1.0)
        else:
            side = street.sides[int(rng.integers(2))]
            x = side.kerb - side.sign * rng.uniform(0.6, 1.5)
        items.append((z, obj.rider(rng, Billboard(cam, x, z), side_view=crossing)))

    for i in range(int(rng.integers(2, 8))):
        oncoming = rng.random() < 0.4 and left.road_m > 5.0
        z = rng.uniform(8.0, 20.0) if i == 0 else _near_z(rng, 8.0, 90.0)
        x = -3.5 + rng.uniform(-0.4, 0.4) if oncoming else rng.uniform(-0.5, 0.5)
        if right.road_m > 4.5 and not oncoming and rng.random() < 0.4:
            x += 3.5
        items.append((z, obj.car(rng, cam, x, z, facing_away=not oncoming)))

    items.sort(key=lambda item: -item[0])  # stable: equal depths keep their order
    return items
