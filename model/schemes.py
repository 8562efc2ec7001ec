"""Propagation schemes: which sites of a level continue to the next, chosen per call.

After each level's prediction a site either stops (its best real class becomes a leaf) or
propagates its activation to its four children. The rule changes at inference time without
retraining: that is the memory knob QGN Serve sells. A scheme sees one level at a time
(`LevelView`) and returns a boolean mask over its sites.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from model.quadtree import COMPOSITE


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

    def describe(self) -> dict:
        return {"scheme": self.name}


class All(Scheme):
    """QGN-All: every site propagates; the high-memory, best-accuracy scheme."""

    name = "all"

    def select(self, view: LevelView) -> Tensor:
        return torch.ones(len(view.logits), dtype=torch.bool, device=view.logits.device)


class PredictedComposite(Scheme):
    """QGN-PC: only sites whose argmax is the composite class propagate."""

    name = "pc"

    def select(self, view: LevelView) -> Tensor:
        return view.logits.argmax(dim=1) == COMPOSITE


class Threshold(Scheme):
    """Sites with p(composite) >= tau propagate; tau = 0 is `all`."""

    name = "threshold"

    def __init__(self, tau: float):
        if not (isinstance(tau, int | float) and math.isfinite(tau) and 0.0 <= tau <= 1.0):
            raise ValueError(f"threshold must be a number in [0, 1], got {tau!r}")
        self.tau = float(tau)

    def select(self, view: LevelView) -> Tensor:
        return view.composite_prob >= self.tau

    def describe(self) -> dict:
        return {"scheme": self.name, "threshold": self.tau}


class Budget(Scheme):
    """The most uncertain sites (highest p(composite)) that fit a memory budget.

    The decoder's peak is the peak of its costliest level, not the sum of levels (a level's
    working tensors are freed before the next one starts), so each level may fill what the
    budget leaves after the bytes already live: a parent costs four child sites.
    """

    name = "budget"

    def __init__(self, budget_bytes: int):
        if not (isinstance(budget_bytes, int) and budget_bytes > 0):
            raise ValueError(f"budget must be a positive number of bytes, got {budget_bytes!r}")
        self.budget_bytes = budget_bytes

    def parents_that_fit(self, view: LevelView) -> int:
        room = self.budget_bytes - view.live_bytes - view.child_stage_bytes
        if room <= 0:
            return 0
        return int(room // (4 * max(view.child_site_bytes, 1)))

    def select(self, view: LevelView) -> Tensor:
        count = min(self.parents_that_fit(view), len(view.logits))
        chosen = torch.zeros(len(view.logits), dtype=torch.bool, device=view.logits.device)
        if count > 0:
            chosen[torch.topk(view.composite_prob, count, sorted=False).indices] = True
        return chosen

    def describe(self) -> dict:
        return {"scheme": self.name, "budget_mb": self.budget_bytes / 2**20}


class Oracle(Scheme):
    """The ground-truth composite sites: the upper bound of `pc`, and teacher forcing in
    training. `targets` are `dense_to_levels` maps stacked per level as (B, rows, cols)."""

    name = "oracle"

    def __init__(self, targets: list[Tensor]):
        self.targets = targets

    def select(self, view: LevelView) -> Tensor:
        target = self.targets[view.level].to(view.coords.device)
        b, r, c = view.coords.unbind(dim=1)
        return target[b, r, c] == COMPOSITE


class Capped(Scheme):
    """Another scheme, never refining more than a memory budget allows: the server's cap.

    Where the inner scheme picks more sites than fit, the most uncertain of its picks are
    kept; `bound` tells afterwards whether the cap changed anything.
    """

    def __init__(self, inner: Scheme, budget_bytes: int):
        self.inner = inner
        self.budget = Budget(budget_bytes)
        self.name = inner.name
        self.bound = False

    def select(self, view: LevelView) -> Tensor:
        chosen = self.inner.select(view)
        room = self.budget.parents_that_fit(view)
        if int(chosen.sum()) <= room:
            return chosen
        self.bound = True
        kept = torch.zeros_like(chosen)
        if room > 0:
            prob = view.composite_prob
            prob = torch.where(chosen, prob, torch.full_like(prob, -1.0))
            kept[torch.topk(prob, room, sorted=False).indices] = True
        return kept

    def describe(self) -> dict:
        return {**self.inner.describe(), "budget_mb": self.budget.budget_bytes / 2**20}


SCHEMES: dict[str, type[Scheme]] = {
    cls.name: cls for cls in (All, PredictedComposite, Threshold, Budget, Oracle)
}


def make_scheme(
    name: str,
    threshold: float | None = None,
    budget_bytes: int | None = None,
    targets: list[Tensor] | None = None,
) -> Scheme:
    """Builds a scheme by name; unknown names raise a KeyError listing the valid ones."""
    if name not in SCHEMES:
        raise KeyError(f"unknown scheme {name!r}; valid schemes: {', '.join(SCHEMES)}")
    if name == "threshold":
        if threshold is None:
            raise ValueError("scheme 'threshold' needs a threshold in [0, 1]")
        return Threshold(threshold)
    if name == "budget":
        if budget_bytes is None:
            raise ValueError("scheme 'budget' needs a budget in bytes")
        return Budget(budget_bytes)
    if name == "oracle":
        if targets is None:
            raise ValueError("scheme 'oracle' needs ground-truth targets")
        return Oracle(targets)
    return SCHEMES[name]()
