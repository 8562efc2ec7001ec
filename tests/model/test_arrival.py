"""An inference started while its pixels are still arriving waits for each band's rows and
gives exactly the mask of the whole image."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from model import arrival
from model.qgn import qgn_tiny
from model.schemes import All, Budget, PredictedComposite


class SlowRows:
    """Writes an image into a zeroed array 8 rows at a time on a thread, slowly."""

    def __init__(self, image: np.ndarray):
        self.image, self.pixels = image, np.zeros_like(image)
        self.ready, self.asked = 0, []
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._fill)
        self.thread.start()

    def _fill(self):
        for top in range(0, len(self.image), 8):
            time.sleep(0.002)
            self.pixels[top : top + 8] = self.image[top : top + 8]
            with self.changed:
                self.ready = min(top + 8, len(self.image))
                self.changed.notify_all()

    def wait(self, rows: int) -> None:
        self.asked.append(rows)
        with self.changed:
            self.changed.wait_for(lambda: self.ready >= rows)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return qgn_tiny().eval()


@pytest.mark.parametrize("scheme", [All, PredictedComposite, lambda: Budget.in_mib(0.05)])
@pytest.mark.parametrize("size", [(100, 70), (33, 200), (1, 64)])
def test_arriving_pixels_give_the_whole_images_mask(model, scheme, size):
    image = np.random.default_rng(size[0]).integers(0, 255, (*size, 3), dtype=np.uint8)
    whole = model.predict(image, scheme())
    rows = SlowRows(image)
    with arrival.arriving(rows.wait):
        streamed = model.predict(rows.pixels, scheme())
    rows.thread.join()
    assert torch.equal(streamed.mask, whole.mask)
    # Every row was asked for, in order, before the last band was read.
    assert rows.asked == sorted(rows.asked) and rows.asked[-1] == size[0]


def test_a_failed_arrival_stops_the_inference(model):
    def broken(rows: int) -> None:
        if rows > 16:
            raise OSError("the image data ends early")

    with arrival.arriving(broken), pytest.raises(OSError, match="ends early"):
        model.predict(np.zeros((64, 64, 3), np.uint8), All())


def test_outside_an_arriving_block_waiting_does_nothing():
    arrival.wait_for_rows(10**9)
