"""Things that stand in the synthetic street: people, riders, cars, trees, poles and signs.

Each builder takes the layout generator and returns the shapes of one object, back to front.
Builders draw the same random numbers whatever the image size, so a seed gives the same
scene at every resolution.
"""

from __future__ import annotations

import numpy as np

from model.data import _raster
from model.data._camera import Billboard, Camera, Colour, Shape

# The label values; `synthetic.CLASSES` re-exports this tuple.
CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "fence",
    "pole",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "car",
    "rider",
)
(ROAD, SIDEWALK, BUILDING, FENCE, POLE, SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR, RIDER) = range(
    len(CLASSES)
)

SKIN: tuple[Colour, ...] = ((236, 200, 170), (210, 160, 120), (160, 110, 80), (100, 70, 50))
# Deliberately full of greys and dark tones shared with roads, walls and cars.
CLOTHES: tuple[Colour, ...] = (
    (30, 30, 35),
    (60, 60, 65),
    (110, 110, 110),
    (150, 150, 145),
    (200, 200, 195),
    (40, 50, 90),
    (120, 30, 35),
    (60, 80, 50),
    (170, 140, 100),
    (200, 170, 40),
)
CAR_PAINT: tuple[Colour, ...] = (
    (25, 25, 28),
    (70, 72, 75),
    (120, 122, 125),
    (165, 168, 170),
    (215, 215, 210),
    (140, 20, 25),
    (25, 45, 110),
    (40, 70, 55),
    (150, 130, 100),
)


def vary(rng: np.random.Generator, colour: Colour, spread: int) -> Colour:
    """A colour jittered per channel by up to +-spread, clipped to 0..255."""
    jitter = rng.integers(-spread, spread + 1, size=3)
    r, g, b = (int(min(255, max(0, c + j))) for c, j in zip(colour, jitter, strict=True))
    return r, g, b


def pick(rng: np.random.Generator, colours: tuple[Colour, ...], spread: int = 12) -> Colour:
    return vary(rng, colours[int(rng.integers(len(colours)))], spread)


def grey(rng: np.random.Generator, low: int, high: int, tint: int = 6) -> Colour:
    level = int(rng.integers(low, high + 1))
    return vary(rng, (level, level, level), tint)


def person(rng: np.random.Generator, board: Billboard) -> list[Shape]:
    """A pedestrian facing or walking away from the camera, 1.5-1.95 m tall."""
    h = rng.uniform(1.5, 1.95)
    k = h / 1.75
    skin, shirt, trousers = pick(rng, SKIN, 10), pick(rng, CLOTHES), pick(rng, CLOTHES)
    hair = grey(rng, 20, 90)
    stride = rng.uniform(0.0, 0.36) * k
    swing = rng.uniform(-0.14, 0.14) * k
    coat = rng.random() < 0.3
    bag = rng.random() < 0.3
    hip, shoulder = 0.5 * h, 0.81 * h
    shapes = [
        board.poly(
            [
                (-0.14 * k, hip),
                (-0.01 * k, hip),
                (-stride / 2 + 0.05 * k, 0.0),
                (-stride / 2 - 0.08 * k, 0.0),
            ],
            trousers,
            PERSON,
        ),
        board.poly(
            [
                (0.01 * k, hip),
                (0.14 * k, hip),
                (stride / 2 + 0.08 * k, 0.0),
                (stride / 2 - 0.05 * k, 0.0),
            ],
            trousers,
            PERSON,
        ),
        board.line(
            (-0.21 * k, shoulder - 0.03), (-0.25 * k - swing, hip - 0.04), 0.09 * k, shirt, PERSON
        ),
        board.line(
            (0.21 * k, shoulder - 0.03), (0.25 * k + swing, hip - 0.04), 0.09 * k, shirt, PERSON
        ),
    ]
    bottom = 0.3 * h if coat else hip - 0.04 * h
    flare = 0.05 * k if coat else 0.0
    shapes.append(
        board.poly(
            [
                (-0.17 * k - flare, bottom),
                (0.17 * k + flare, bottom),
                (0.21 * k, shoulder),
                (-0.21 * k, shoulder),
            ],
            shirt,
            PERSON,
        )
    )
    if bag:
        side = 1.0 if rng.random() < 0.5 else -1.0
        shapes.append(
            board.rect(
                side * 0.2 * k, side * 0.36 * k, hip - 0.2, hip + 0.1, pick(rng, CLOTHES), PERSON
            )
        )
    shapes.append(board.line((0.0, shoulder), (0.0, shoulder + 0.06 * h), 0.09 * k, skin, PERSON))
    shapes.append(board.ellipse(0.0, 0.92 * h, 0.09 * k, 0.11 * k, skin, PERSON))
    shapes.append(board.ellipse(0.0, 0.95 * h, 0.095 * k, 0.08 * k, hair, PERSON))
    return shapes


def bicycle(rng: np.random.Generator, board: Billboard, facing: float) -> list[Shape]:
    """A bicycle seen from the side, labelled rider (the dataset merges bicycle and rider)."""
    tyre, frame, spoke = grey(rng, 15, 45), pick(rng, CAR_PAINT, 20), grey(rng, 90, 170)
    r = 0.34
    rear, front = (-0.52 * facing, r), (0.52 * facing, r)
    bracket, seat, head_tube = (0.0, 0.3), (-0.14 * facing, 0.88), (0.36 * facing, 0.92)
    shapes: list[Shape] = []
    for hub in (rear, front):
        shapes.append(board.ellipse(hub[0], hub[1], r, r, tyre, RIDER))
        shapes.append(board.ellipse(hub[0], hub[1], r - 0.05, r - 0.05, spoke, None))
    for start, end in (
        (rear, bracket),
        (bracket, seat),
        (seat, rear),
        (bracket, head_tube),
        (head_tube, front),
        (seat, head_tube),
        (head_tube, (0.3 * facing, 1.05)),
    ):
        shapes.append(board.line(start, end, 0.04, frame, RIDER))
    return shapes


def rider(rng: np.random.Generator, board: Billboard, side_view: bool) -> list[Shape]:
    """A cyclist with the bicycle, both labelled rider; side view when crossing the street."""
    skin, jacket, trousers = pick(rng, SKIN, 10), pick(rng, CLOTHES), pick(rng, CLOTHES)
    hat = pick(rng, CLOTHES)
    facing = 1.0 if rng.random() < 0.5 else -1.0
    if side_view:
        hip, shoulder = (-0.14 * facing, 0.95), (0.14 * facing, 1.42)
        knee = (0.14 * facing, 0.68)
        return [
            *bicycle(rng, board, facing),
            board.line(hip, knee, 0.15, trousers, RIDER),
            board.line(knee, (0.06 * facing, 0.28), 0.12, trousers, RIDER),
            board.line(hip, shoulder, 0.36, jacket, RIDER),
            board.line(shoulder, (0.4 * facing, 1.02), 0.08, jacket, RIDER),
            board.ellipse(0.24 * facing, 1.6, 0.1, 0.12, skin, RIDER),
            board.ellipse(0.22 * facing, 1.65, 0.12, 0.08, hat, RIDER),
        ]
    tyre, frame = grey(rng, 15, 45), pick(rng, CAR_PAINT, 20)
    return [
        board.rect(-0.025, 0.025, 0.0, 0.7, tyre, RIDER),
        board.poly([(-0.16, 0.95), (0.16, 0.95), (0.2, 1.45), (-0.2, 1.45)], jacket, RIDER),
        board.line((-0.1, 0.97), (-0.16, 0.3), 0.13, trousers, RIDER),
        board.line((0.1, 0.97), (0.16, 0.45), 0.13, trousers, RIDER),
        board.line((-0.3, 1.08), (0.3, 1.08), 0.035, frame, RIDER),
        board.line((-0.18, 1.4), (-0.3, 1.08), 0.08, jacket, RIDER),
        board.line((0.18, 1.4), (0.3, 1.08), 0.08, jacket, RIDER),
        board.ellipse(0.0, 1.6, 0.1, 0.12, skin, RIDER),
        board.ellipse(0.0, 1.65, 0.12, 0.08, hat, RIDER),
    ]


def bollard(rng: np.random.Generator, board: Billboard) -> list[Shape]:
    """A short post at the kerb, labelled pole as in Cityscapes."""
    half = rng.uniform(0.05, 0.1)
    return [board.rect(-half, half, 0.0, rng.uniform(0.8, 1.1), grey(rng, 30, 150), POLE)]


def car(
    rng: np.random.Generator, cam: Camera, x_m: float, z_m: float, facing_away: bool
) -> list[Shape]:
    """A car whose near face (rear or front) is at depth z_m, centred on x_m.

    The long side facing the street centre is drawn when the car is off-axis, so parked
    rows read as a chain of occluding boxes.
    """
    width, height, length = rng.uniform(1.6, 1.95), rng.uniform(1.35, 1.65), rng.uniform(3.8, 4.9)
    paint = pick(rng, CAR_PAINT, 14)
    glass = grey(rng, 20, 70, 10)
    dark = grey(rng, 10, 35)
    lamp = vary(rng, (190, 30, 30) if facing_away else (230, 230, 200), 20)
    belt, half = 0.6 * height, width / 2
    shapes: list[Shape] = []
    if abs(x_m) > half + 0.3:
        xs = x_m - np.sign(x_m) * half
        z0, z1 = z_m, z_m + length
        shapes.append(
            Shape(
                cam.quad([(xs, 0.18, z0), (xs, 0.18, z1), (xs, belt, z1), (xs, belt, z0)]),
                paint,
                CAR,
            )
        )
        cabin = [
            (xs, belt, z0 + 0.2 * length),
            (xs, height, z0 + 0.35 * length),
            (xs, height, z0 + 0.75 * length),
            (xs, belt, z0 + 0.88 * length),
        ]
        shapes.append(Shape(cam.quad(cabin), paint, CAR))
        inset = [
            (xs, belt + 0.05, z0 + 0.26 * length),
            (xs, height - 0.06, z0 + 0.38 * length),
            (xs, height - 0.06, z0 + 0.72 * length),
            (xs, belt + 0.05, z0 + 0.83 * length),
        ]
        shapes.append(Shape(cam.quad(inset), glass, None))
        for wheel_z in (z0 + 0.18 * length, z0 + 0.8 * length):
            left, right = cam.col(xs, wheel_z - 0.33), cam.col(xs, wheel_z + 0.33)
            top, bottom = cam.row(0.66, wheel_z), cam.row(0.0, wheel_z)
            shapes.append(
                Shape(
                    _raster.ellipse(
                        (left + right) / 2,
                        (top + bottom) / 2,
                        abs(right - left) / 2,
                        (bottom - top) / 2,
                        cam.height,
                        cam.width,
                    ),
                    dark,
                    CAR,
                )
            )
    board = Billboard(cam, x_m, z_m)
    shapes += [
        board.rect(-half + 0.1, -half + 0.35, 0.0, 0.3, dark, CAR),
        board.rect(half - 0.35, half - 0.1, 0.0, 0.3, dark, CAR),
        board.rect(-half, half, 0.18, belt, paint, CAR),
        board.poly(
            [
                (-0.46 * width, belt),
                (0.46 * width, belt),
                (0.38 * width, height),
                (-0.38 * width, height),
            ],
            paint,
            CAR,
        ),
        board.poly(
            [
                (-0.41 * width, belt + 0.05),
                (0.41 * width, belt + 0.05),
                (0.35 * width, height - 0.06),
                (-0.35 * width, height - 0.06),
            ],
            glass,
            None,
        ),
        board.rect(-half, half, 0.18, 0.32, dark, None),
        board.rect(-half + 0.05, -half + 0.35, belt - 0.2, belt - 0.06, lamp, None),
        board.rect(half - 0.35, half - 0.05, belt - 0.2, belt - 0.06, lamp, None),
        board.rect(-0.25, 0.25, 0.34, 0.45, (225, 225, 220), None),
    ]
    return shapes


def tree(rng: np.random.Generator, board: Billboard, crown_m: float) -> list[Shape]:
    """Trunk and a lumpy crown of overlapping ellipses, all vegetation (as in Cityscapes)."""
    trunk_h = rng.uniform(1.8, 3.5)
    bark = vary(rng, (80, 62, 45), 15)
    leaf = vary(rng, (60, 95, 40), 25)
    shapes = [board.rect(-0.14, 0.14, 0.0, trunk_h + 0.5, bark, VEGETATION)]
    for _ in range(int(rng.integers(5, 10))):
        radius = crown_m * rng.uniform(0.4, 0.7)
        dx = crown_m * rng.uniform(-0.65, 0.65)
        y = trunk_h + crown_m * rng.uniform(0.5, 1.5)
        shapes.append(
            board.ellipse(
                dx, y, radius, radius * rng.uniform(0.8, 1.1), vary(rng, leaf, 12), VEGETATION
            )
        )
    return shapes


def lamp_post(rng: np.random.Generator, board: Billboard, toward_road: float) -> list[Shape]:
    """A street light: 1-4 px mast at typical distances, arm reaching over the road."""
    height = rng.uniform(6.0, 9.0)
    metal = grey(rng, 70, 160)
    reach = toward_road * rng.uniform(0.8, 2.0)
    return [
        board.rect(-0.04, 0.04, 0.0, height, metal, POLE),
        board.line((0.0, height), (reach, height + 0.25), 0.07, metal, POLE),
        board.ellipse(reach, height + 0.15, 0.28, 0.09, grey(rng, 150, 230), POLE),
    ]


def traffic_sign(rng: np.random.Generator, board: Billboard) -> list[Shape]:
    """A post (pole) with one or two plates (traffic sign); some seen from the grey back."""
    post_h = rng.uniform(2.2, 3.2)
    shapes = [board.rect(-0.03, 0.03, 0.0, post_h + 0.1, grey(rng, 80, 170), POLE)]
    top = post_h
    for _ in range(1 + int(rng.random() < 0.35)):
        kind = int(rng.integers(4))
        back = rng.random() < 0.25
        face = (
            grey(rng, 100, 170)
            if back
            else pick(rng, ((200, 30, 35), (30, 70, 160), (230, 190, 30), (235, 235, 235)), 15)
        )
        inner = (235, 235, 235) if face[0] < 220 else (30, 30, 30)
        size = rng.uniform(0.28, 0.4)
        if kind == 0:
            shapes.append(board.ellipse(0.0, top, size, size, face, SIGN))
            shapes.append(
                board.ellipse(0.0, top, size * 0.7, size * 0.7, face if back else inner, None)
            )
        elif kind == 1:
            shapes.append(
                board.poly(
                    [
                        (-size * 1.1, top - size * 0.8),
                        (size * 1.1, top - size * 0.8),
                        (0.0, top + size),
                    ],
                    face,
                    SIGN,
                )
            )
        elif kind == 2:
            shapes.append(
                board.poly(
                    [(0.0, top - size), (size, top), (0.0, top + size), (-size, top)], face, SIGN
                )
            )
        else:
            shapes.append(
                board.rect(-size * 1.6, size * 1.6, top - size * 0.5, top + size * 0.5, face, SIGN)
            )
        top -= 2.2 * size
    return shapes
