"""Propagation schemes: which sites of a level continue to the next, chosen per call.

After each level's prediction a site either stops (its best real class becomes a leaf) or
propagates its activation to its four children. The rule changes at inference time without
retraining: that is the memory knob QGN Serve sells. A scheme sees one level at a time
(`LevelView`) and returns a boolean mask over its sites.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from model.quadtree import COMPOSITE
from model.scheme_request import MIB, SchemeError, SchemeRequest, mib_to_bytes


@dataclass(frozen=True)
class SchemeRun:
    """What ran, recorded once by `QGN.predict` and read downstream: the scheme, its
    threshold, the budget in force (MiB), whether the server's cap limited it, and whether it
    was degraded to a tighter budget after running out of memory."""

    name: str
    threshold: float | None = None
    budget_mb: float | None = None
    capped: bool = False
    degraded: bool = False

    def as_dict(self) -> dict:
        return {
            "scheme": self.name,
            "threshold": self.threshold,
            "budget_mb": self.budget_mb,
            "capped": self.capped,
            "degraded": self.degraded,
        }


@dataclass
class LevelView:
    """What a scheme may look at when it decides for one level."""

    level: int
    logits: Tensor  # (N, C + 1), class 0 = composite
    coords: Tensor  # (N, 3) as (batch, row, col) at this level
    live_bytes: int  # bytes the measured inference holds right now
    child_site_bytes: int  # bytes one active site of the next level costs at its peak
    child_stage_bytes: int  # fixed bytes the next level's stage costs if it runs at all

    @property
    def composite_prob(self) -> Tensor:
        return torch.softmax(self.logits.float(), dim=1)[:, COMPOSITE]


class Scheme(ABC):
    """Decides which sites of a level propagate to their children."""

    name: ClassVar[str]

    @abstractmethod
    def select(self, view: LevelView) -> Tensor:
        """A bool mask over the level's sites: True = propagate."""

    def ran(self) -> SchemeRun:
        """What this scheme ran as; read after the run (a cap knows then whether it bound)."""
        return SchemeRun(self.name)

    def holds_skips(self, held_floor_bytes: int, kept_bytes: int) -> bool:
        """Whether the encoder keeps its stride-8 and stride-16 maps whole (fast) rather than
        recomputing them at the sites of levels 1 and 2 (least memory); `held_floor_bytes` is
        the peak of a run that keeps them and refines nothing, `kept_bytes` the maps. Only
        budgets say no."""
        return True


class All(Scheme):
    """QGN-All: every site propagates and every pixel reads level 5; the most memory."""

    name = "all"

    def select(self, view: LevelView) -> Tensor:
        return torch.ones(len(view.logits), dtype=torch.bool, device=view.logits.device)


class Nothing(Scheme):
    """Refines nothing, keeping the encoder's maps as every scheme but a small budget does:
    what calibration measures the held floor with."""

    name = "none"

    def select(self, view: LevelView) -> Tensor:
        return torch.zeros(len(view.logits), dtype=torch.bool, device=view.logits.device)


# The levels where a rule-based scheme (pc, threshold) also refines the neighbours of the sites
# it chose. A boundary the stride-32 and stride-16 predictions see in one cell often runs on in
# the next, predicted uniform there: that cell became a leaf of the wrong class for part of its
# pixels, and at 1024×2048 a cell is a smaller share of an object, so this cost pc 3 points
# against 512×1024. With the ring (20 validation scenes at 512×1024, 8 at 1024×2048, shipped
# weights): pc 76.4 → 78.1 and 73.8 → 77.9 mIoU at the same peak; τ 0.1 78.4 → 79.1 and
# 76.1 → 78.7 (`all`: 79.0 at 1024×2048) for ~14 % more time. Levels 2+ add time, little mIoU.
RING_LEVELS = (0, 1)


def with_ring(chosen: Tensor, coords: Tensor) -> Tensor:
    """`chosen`, and every site of `coords` (the level's sites, (N, 3) as (batch, row, col))
    next to a chosen one, diagonals included."""
    if not bool(chosen.any()):
        return chosen
    batch, row, col = coords.unbind(dim=1)  # int32 indexes as it is: no int64 copy
    rows, cols = int(row.max()) + 1, int(col.max()) + 1
    size = (int(batch.max()) + 1, rows + 2, cols + 2)
    marked = torch.zeros(size, dtype=torch.bool, device=coords.device)
    marked[batch, row + 1, col + 1] = chosen
    near = torch.zeros_like(marked[:, :rows, :cols])
    for down in range(3):
        for across in range(3):
            near |= marked[:, down : down + rows, across : across + cols]
    return near[batch, row, col]


class RuleScheme(Scheme):
    """A scheme that chooses by a rule on each site's logits (`chooses`), and at the levels
    of `RING_LEVELS` also refines the chosen sites' neighbours."""

    @abstractmethod
    def chooses(self, view: LevelView) -> Tensor:
        """The rule's own bool mask over the level's sites."""

    def select(self, view: LevelView) -> Tensor:
        chosen = self.chooses(view)
        return with_ring(chosen, view.coords) if view.level in RING_LEVELS else chosen


class PredictedComposite(RuleScheme):
    """QGN-PC: sites whose argmax is the composite class propagate (with the ring)."""

    name = "pc"

    def chooses(self, view: LevelView) -> Tensor:
        return view.logits.argmax(dim=1) == COMPOSITE


class Threshold(RuleScheme):
    """Sites with p(composite) >= tau propagate (with the ring); tau = 0 is `all`."""

    name = "threshold"

    def __init__(self, tau: float):
        if not (isinstance(tau, int | float) and math.isfinite(tau) and 0.0 <= tau <= 1.0):
            raise ValueError(f"threshold must be a number in [0, 1], got {tau!r}")
        self.tau = float(tau)

    def chooses(self, view: LevelView) -> Tensor:
        return view.composite_prob >= self.tau

    def ran(self) -> SchemeRun:
        return SchemeRun(self.name, threshold=self.tau)


# The threshold whose sites a budget refines: the finest the card measures. Refining below it
# bought nothing there (512×1024, shipped weights: τ 0.1 80.93 mIoU at 5.7 MiB, `all` 80.60
# at 108.1), and a budget spent on it refined nothing at all where τ 0.1 fitted (below).
BUDGET_THRESHOLD = 0.1


def most_uncertain(chosen: Tensor, composite_prob: Tensor, room: int) -> Tensor:
    """The `room` sites of `chosen` with the highest p(composite); `chosen` itself when it
    has no more."""
    if int(chosen.sum()) <= room:
        return chosen
    kept = torch.zeros_like(chosen)
    if room > 0:
        prob = torch.where(chosen, composite_prob, torch.full_like(composite_prob, -1.0))
        kept[torch.topk(prob, room, sorted=False).indices] = True
    return kept


class Budget(Scheme):
    """τ 0.1's sites (the ring included), the most uncertain first, as many as the budget
    lets the next level hold after the bytes already live: the measured peak stays within the
    budget whatever the levels below do, and a budget that fits τ 0.1's run gets it.

    It used to take the k most uncertain of all sites for the largest k whose subtree fitted,
    assuming the levels below propagate the same share k/N. That projection is `all`'s cost
    at k = N and far above what boundaries need at small k: on 12 validation scenes a budget
    of 6.5 MiB at 512×1024, or 20 MiB at 1024×2048, refined nothing (44.9 and 55.7 mIoU,
    where τ 0.1 peaked at 5.4 and 15.1 MiB), and large budgets bought sites below τ 0.1 that
    changed nothing (60 MiB: 78.2 at 47.9 MiB against τ 0.1's 78.1 at 5.4). Now: 76.7 at
    6.5 MiB and 63.0 at 20.
    """

    name = "budget"
    rule = Threshold(BUDGET_THRESHOLD)  # the sites it refines, as many as fit

    def __init__(self, budget_bytes: int, capped: bool = False):
        if not (isinstance(budget_bytes, int) and budget_bytes > 0):
            raise ValueError(f"budget must be a positive number of bytes, got {budget_bytes!r}")
        self.budget_bytes = budget_bytes
        self.budget_mb = budget_bytes / MIB
        self.capped = capped  # the server's cap replaced the client's larger budget

    @classmethod
    def in_mib(cls, budget_mb: float, capped: bool = False) -> Budget:
        """A budget given in MiB, reported back exactly as given."""
        scheme = cls(max(1, mib_to_bytes(budget_mb)), capped)
        scheme.budget_mb = budget_mb
        return scheme

    def parents_that_fit(self, view: LevelView) -> int:
        """How many sites may propagate for the next level alone to fit."""
        room = self.budget_bytes - view.live_bytes - view.child_stage_bytes
        if room <= 0:
            return 0
        return int(room // (4 * max(view.child_site_bytes, 1)))

    def select(self, view: LevelView) -> Tensor:
        chosen = self.rule.select(view)
        return most_uncertain(chosen, view.composite_prob, self.parents_that_fit(view))

    def ran(self) -> SchemeRun:
        return SchemeRun(self.name, budget_mb=self.budget_mb, capped=self.capped)

    def holds_skips(self, held_floor_bytes: int, kept_bytes: int) -> bool:
        """Only with room for the kept maps twice over: a budget just above the held floor
        kept them and had nothing left to refine with (1024×2048, 4 validation scenes: 18.1 MiB
        refined nothing, 55.2 mIoU; recomputing at sites instead, 78.3 at 8.6 MiB, in 4.8×
        the time)."""
        return held_floor_bytes + kept_bytes <= self.budget_bytes


class Oracle(RuleScheme):
    """The ground-truth composite sites, with pc's ring: the upper bound of `pc` (its rule
    with a perfect prediction). `targets` are `dense_to_levels` maps stacked per level as
    (B, rows, cols)."""

    name = "oracle"

    def __init__(self, targets: list[Tensor]):
        self.targets = targets

    def chooses(self, view: LevelView) -> Tensor:
        target = self.targets[view.level].to(view.coords.device)
        b, r, c = view.coords.unbind(dim=1)
        return target[b, r, c] == COMPOSITE


class Capped(Scheme):
    """Another scheme, never refining more than a memory budget allows: the server's cap.

    Where the inner scheme picks more sites than fit, the most uncertain of its picks are
    kept, and where the cap has no room for the kept maps the encoder keeps no map whole; `ran()`
    then says the cap bound, with the cap as the budget in force.
    """

    def __init__(self, inner: Scheme, cap_mb: float):
        self.inner = inner
        self.cap = Budget.in_mib(cap_mb)
        self.name = inner.name
        self.bound = False

    def select(self, view: LevelView) -> Tensor:
        chosen = self.inner.select(view)
        kept = most_uncertain(chosen, view.composite_prob, self.cap.parents_that_fit(view))
        self.bound = self.bound or kept is not chosen
        return kept

    def holds_skips(self, held_floor_bytes: int, kept_bytes: int) -> bool:
        """The inner scheme's choice unless the cap would not hold the maps: the cap then
        shaped the run (the low-memory encoder), and `ran()` says so."""
        inner = self.inner.holds_skips(held_floor_bytes, kept_bytes)
        held = inner and self.cap.holds_skips(held_floor_bytes, kept_bytes)
        self.bound = self.bound or (inner and not held)
        return held

    def ran(self) -> SchemeRun:
        inner = self.inner.ran()
        return replace(inner, budget_mb=self.cap.budget_mb, capped=True) if self.bound else inner


def build_scheme(
    request: SchemeRequest, cap_mb: float | None = None, targets: list[Tensor] | None = None
) -> Scheme:
    """The scheme to run; `cap_mb` is the server's cap on any one request (a budget above
    it is cut to it, another scheme runs `Capped`)."""
    if request.name == "budget":
        if cap_mb is not None and cap_mb < request.budget_mb:
            return Budget.in_mib(cap_mb, capped=True)
        return Budget.in_mib(request.budget_mb)
    if request.name == "auto":
        raise SchemeError("unknown_scheme", "scheme=auto is resolved by the server at admission")
    if request.name == "oracle":
        if targets is None:
            raise SchemeError("missing_parameter", "scheme 'oracle' needs ground-truth targets")
        scheme: Scheme = Oracle(targets)
    elif request.name == "threshold":
        scheme = Threshold(request.threshold)
    else:
        scheme = All() if request.name == "all" else PredictedComposite()
    return scheme if cap_mb is None else Capped(scheme, cap_mb)


def make_scheme(
    name: str,
    threshold: float | None = None,
    budget_mb: float | None = None,
    targets: list[Tensor] | None = None,
) -> Scheme:
    """A scheme by name (a shorthand for `build_scheme(SchemeRequest(...))`)."""
    return build_scheme(SchemeRequest(name, threshold, budget_mb), targets=targets)
