"""A request's peak memory, predicted before it runs: what admission reserves for it.

- `budget`: the budget in force (the `Budget` planner keeps the measured peak under it), or
  `all`'s prediction when that is lower.
- `all`: the cost model's bound (`MemoryCost.run_peak_bytes`) from the in-image site counts of
  every level: the floor, each level's stage over what is live when it starts, the mask; plus
  5 %.
- `pc` and `threshold`: what they refine depends on the image, and no logits exist before the
  request runs, so the prediction is statistical: the highest measured peak over the floor of
  the same size among this scheme's (and threshold's, to 0.05) recent requests of about this
  size (pixels within a factor √2), times a margin, never above `all`'s bound. The floor is a
  fit whose error depends on the shape, so a size not seen yet takes the highest figure of any
  size; a threshold not seen yet takes the nearest lower one's; with none, and for `pc`
  unseen, `all`'s bound, which holds for any image (they refine a subset of `all`'s sites).
  `pc` and the thresholds 0.1 … 0.9 are seeded at warm-up (`Engine.warm_up`).

The prediction is not enforced: a request runs as asked (its mask does not depend on what
else runs), and its measured / predicted peak is exported as a histogram.
"""

from __future__ import annotations

import math
import threading
from collections import deque

from model.cost import MemoryCost, padded_pixels
from model.qgn import LEVELS, QGN
from model.quadtree import level_shape
from model.scheme_request import SchemeRequest, mib_to_bytes

MARGIN = 1.25
ALL_MARGIN = 1.05
WINDOW = 64  # recent requests per scheme
THRESHOLD_STEP = 0.05
MAX_KEYS = 32


class PeakPredictor:
    def __init__(self, model: QGN, margin: float = MARGIN):
        self.model = model  # its cost is read at each call: calibration replaces it
        self.margin = margin
        # Per key, the recent (size class, peak over floor) of its runs.
        self._ratios: dict[tuple[str, float | None], deque[tuple[int, float]]] = {}
        self._lock = threading.Lock()

    @property
    def cost(self) -> MemoryCost:
        return self.model.cost

    @staticmethod
    def key(request: SchemeRequest) -> tuple[str, float | None]:
        if request.name != "threshold":
            return (request.name, None)
        return (request.name, round(round(request.threshold / THRESHOLD_STEP) * THRESHOLD_STEP, 2))

    def all_bytes(self, height: int, width: int) -> int:
        """`all`'s peak bound: the cost model's bound of a run refining every site."""
        sites = [math.prod(level_shape(height, width, level, LEVELS)) for level in range(LEVELS)]
        return math.ceil(ALL_MARGIN * self.cost.run_peak_bytes(height, width, sites))

    def peak_bytes(
        self, request: SchemeRequest, height: int, width: int, cap_mb: float | None
    ) -> int:
        """Predicted peak bytes of `request` on an image of this size, under the server's
        per-request cap `cap_mb` (a capped scheme's peak stays under the cap)."""
        bound = self.all_bytes(height, width)
        if cap_mb is not None:
            bound = min(bound, mib_to_bytes(cap_mb))
        if request.name == "budget":
            return min(bound, mib_to_bytes(request.budget_mb))
        if request.name == "all":
            return bound
        ratio = self._ratio(self.key(request), self.size_class(height, width))
        if ratio is None:
            return bound
        floor = self.cost.min_budget_bytes(height, width)
        return min(bound, math.ceil(self.margin * ratio * floor))

    @staticmethod
    def size_class(height: int, width: int) -> int:
        """Images whose padded pixels are within a factor √2 share a class."""
        return round(2 * math.log2(padded_pixels(height, width)))

    def _ratio(self, key: tuple[str, float | None], size: int) -> float | None:
        """The highest recent peak over floor of this key at this size class (of any size
        when this one is not among them); for a threshold not seen yet, that of the nearest
        lower threshold seen (a lower one refines more, over a set of images)."""
        with self._lock:
            if key not in self._ratios and key[0] == "threshold":
                lower = [k for k in self._ratios if k[0] == "threshold" and k[1] <= key[1]]
                key = max(lower, default=key)
            if key not in self._ratios:
                return None
            seen = self._ratios[key]
            return max((r for s, r in seen if s == size), default=max(r for _, r in seen))

    def observe(self, request: SchemeRequest, height: int, width: int, peak_bytes: int) -> None:
        """Learns from a run of `request` as asked (not capped, not degraded)."""
        if request.name not in ("pc", "threshold"):
            return
        ratio = peak_bytes / self.cost.min_budget_bytes(height, width)
        with self._lock:
            key = self.key(request)
            if key not in self._ratios and len(self._ratios) >= MAX_KEYS:
                self._ratios.pop(next(iter(self._ratios)))
            history = self._ratios.setdefault(key, deque(maxlen=WINDOW))
            history.append((self.size_class(height, width), ratio))
