"""`scheme=auto`: under load, give up accuracy before availability.

The candidates are data, not a list in code: the model card's evaluated settings that a client
may request (`all`, `pc`, the thresholds, the budgets) at the evaluated size nearest the image,
ranked by their measured mIoU, and last the image's own minimum budget, which refines nothing
(the card's `none` row says what that scores). For each the engine predicts this image's peak
(`server.prediction`) and run time (`server.latency`). The choice is made once, when the
request leaves the queue: the most accurate candidate that fits the memory free right now, the
caps, and what is left of the deadline (`choose`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from model.cost import padded_pixels
from model.scheme_request import MIB, SchemeRequest

REASONS = ("best", "memory", "max_memory", "deadline")
FLOOR = "budget=min"  # the label of the image's minimum budget


@dataclass(frozen=True)
class Candidate:
    label: str  # "all", "pc", "threshold=0.3", "budget=107.4", FLOOR
    request: SchemeRequest
    miou: float  # the card's, at the nearest evaluated size
    card_latency_ms: float
    card_pixels: int

    def card_seconds(self, pixels: int) -> float:
        """The card's latency for this setting, scaled to `pixels` padded pixels."""
        return self.card_latency_ms / 1000 * pixels / self.card_pixels


@dataclass(frozen=True)
class Option:
    """A candidate for one image: what it is predicted to hold and to take."""

    candidate: Candidate
    peak_bytes: int
    seconds: float


@dataclass(frozen=True)
class AutoChoice:
    setting: str
    reason: str  # one of REASONS: what kept a more accurate candidate from running
    predicted_peak_bytes: int
    free_memory_bytes: int
    predicted_latency_s: float | None  # said when the request had a deadline

    def as_dict(self) -> dict:
        said = {
            "setting": self.setting,
            "reason": self.reason,
            "predicted_peak_mb": round(self.predicted_peak_bytes / MIB, 2),
            "free_memory_mb": round(self.free_memory_bytes / MIB, 2),
        }
        if self.predicted_latency_s is not None:
            said["predicted_latency_ms"] = round(self.predicted_latency_s * 1000, 1)
        return said


def label_of(request: SchemeRequest) -> str:
    if request.name == "threshold":
        return f"threshold={request.threshold:g}"
    if request.name == "budget":
        return f"budget={request.budget_mb:g}"
    return request.name


def request_of(row: dict) -> SchemeRequest | None:
    """The request of a card row ("threshold 0.3", "budget 107.4 MiB"), None for the rows a
    client cannot ask for (`none`, `oracle`)."""
    name, _, value = row["setting"].partition(" ")
    if name == "threshold":
        return SchemeRequest("threshold", threshold=float(value))
    if name == "budget":
        return SchemeRequest("budget", budget_mb=float(value.removesuffix(" MiB")))
    return SchemeRequest(name) if name in ("all", "pc") else None


def nearest_table(card: dict, height: int, width: int) -> tuple[int, list[dict]]:
    """The card's table evaluated at the size nearest this image's (in log pixels), and that
    size's padded pixels; no rows when the card has no evaluation."""
    tables = (card.get("evaluation") or {}).get("tables") or {}
    pixels = padded_pixels(height, width)
    if not tables:
        return pixels, []

    def distance(size: str) -> float:
        h, w = (int(side) for side in size.split("x"))
        return abs(math.log(padded_pixels(h, w) / pixels))

    size = min(tables, key=distance)
    h, w = (int(side) for side in size.split("x"))
    return padded_pixels(h, w), tables[size]["rows"]


def candidates(card: dict, height: int, width: int, floor_mb: float) -> list[Candidate]:
    """Most accurate first; the image's minimum budget last, with the card's `none` mIoU."""
    card_pixels, rows = nearest_table(card, height, width)
    found, floor = [], None
    for row in rows:
        request = request_of(row)
        kept = (row["miou"], row["latency_ms_median"], card_pixels)
        if request is not None:
            found.append(Candidate(label_of(request), request, *kept))
        elif row["setting"] == "none":
            floor = Candidate(FLOOR, SchemeRequest("budget", budget_mb=floor_mb), *kept)
    found.sort(key=lambda c: -c.miou)
    return found + ([floor] if floor else [])


def card_seconds(card: dict, label: str, height: int, width: int) -> float | None:
    """The card's latency for the setting `label`, scaled to this image; None without one."""
    # The minimum budget's value does not change its card figure (the `none` row's).
    for candidate in candidates(card, height, width, floor_mb=1.0):
        if candidate.label == label:
            return candidate.card_seconds(padded_pixels(height, width))
    return None


def choose(
    options: list[Option], excluded: dict[int, str], room_bytes: int, time_left_s: float | None
) -> tuple[Option, str] | None:
    """The most accurate option that fits `room_bytes` and `time_left_s`, with the reason a
    more accurate one did not run; `excluded` are options the caps rule out (index -> reason).
    None when nothing fits the room (the request waits). When everything that fits the room
    is too slow, the fastest of them runs (reason `deadline`)."""
    reason = None
    fitting = []
    for index, option in enumerate(options):
        if index in excluded:
            reason = reason or excluded[index]
            continue
        if option.peak_bytes > room_bytes:
            reason = reason or "memory"
            continue
        fitting.append(option)
        if time_left_s is None or option.seconds <= time_left_s:
            return option, reason or "best"
        reason = reason or "deadline"
    if not fitting:
        return None
    return min(fitting, key=lambda option: option.seconds), "deadline"
