"""A cancelled inference stops at its next check and leaves nothing allocated."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from model import cancellation
from model.allocation_window import AllocationWindow
from model.qgn import qgn_tiny
from model.schemes import All, PredictedComposite


class SetAfter(threading.Event):
    """A flag that reads as set from its `after`-th look on: cancels at a chosen check."""

    def __init__(self, after: int):
        super().__init__()
        self.after, self.looks = after, 0

    def is_set(self) -> bool:
        self.looks += 1
        return self.looks >= self.after


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return qgn_tiny().eval()


def image(height: int = 96, width: int = 128) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (height, width, 3), dtype=np.uint8)


def test_outside_a_watching_block_check_does_nothing():
    cancellation.check()


def test_checks_are_spread_over_the_encoder_the_levels_and_the_convolutions(model):
    counting = SetAfter(10**9)
    with cancellation.watching(counting):
        model.predict(image(), All())
    # 96 rows: 7 bands of the first pass, 6 levels, the mask, and 8 offsets per sparse
    # convolution (4 levels of one block each, two convolutions a block).
    assert counting.looks >= 7 + 6 + 1 + 4 * 2 * 8


@pytest.mark.parametrize("after", [1, 5, 20, 60])
def test_a_cancelled_inference_raises_and_frees_its_memory(model, after):
    flag = SetAfter(after)
    with (
        AllocationWindow() as window,
        cancellation.watching(flag),
        pytest.raises(cancellation.Cancelled),
    ):
        model.predict(image(), All())
    assert window.live_bytes == 0


def test_blocks_nest_and_the_outer_flag_comes_back(model):
    outer, inner = threading.Event(), threading.Event()
    with cancellation.watching(outer):
        with cancellation.watching(inner):
            outer.set()
            model.predict(image(32, 32), PredictedComposite())  # the inner flag counts
        with pytest.raises(cancellation.Cancelled):
            cancellation.check()
