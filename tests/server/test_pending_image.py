"""Uploads are checked at once and decoded on admission: the size a request is planned for
is the size its pixels have, and decoding leaves only the pixels behind."""

from __future__ import annotations

import gc
import multiprocessing
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from server.errors import ApiError
from server.images import open_upload
from server.memory_limit import resident_bytes
from tests.server.conftest import encode, scene_image


@pytest.mark.parametrize("turn", [1, 3, 6, 8])
def test_the_planned_size_is_the_decoded_size_after_exif_rotation(turn):
    exif = Image.Exif()
    exif[0x0112] = turn
    pending = open_upload(encode(scene_image(48, 80), "JPEG", exif=exif), 10**6)
    pixels = pending.pixels()
    assert pixels.shape == (pending.height, pending.width, 3)
    assert (pending.height, pending.width) == ((80, 48) if turn in (6, 8) else (48, 80))


def test_a_broken_body_is_refused_on_decode_not_on_open():
    data = encode(scene_image(64, 96), "PNG")
    pending = open_upload(data[: len(data) // 2], 10**6)  # the header is whole
    assert (pending.height, pending.width) == (64, 96)
    with pytest.raises(ApiError) as refused:
        pending.pixels()
    assert refused.value.status == 400


def pixels_and_bytes_held_by_a_decode_on_a_worker() -> tuple[int, bool, int]:
    """In a fresh process: decodes a 12 MP JPEG on a thread that freed a large buffer first,
    as a worker has; returns the pixels' bytes, whether the array is writeable, and how much
    the process's resident memory rose."""
    image = Image.fromarray(scene_image(300, 400)).resize((4000, 3000))
    pending = open_upload(encode(image, "JPEG", quality=90), 10**8)
    del image
    gc.collect()
    measured = {}

    def decode_on_a_worker():
        np.ones(40 * 2**20, dtype=np.uint8)  # made and freed, as an earlier request's
        before = resident_bytes()
        measured["pixels"] = pending.pixels()
        measured["held"] = resident_bytes() - before

    worker = threading.Thread(target=decode_on_a_worker)
    worker.start()
    worker.join()
    pixels = measured["pixels"]
    writeable = isinstance(pixels, np.ndarray) and pixels.flags.writeable
    return pixels.nbytes, writeable, measured["held"]


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc")
def test_decoding_leaves_only_the_pixels_behind():
    """Pillow decodes into 4 bytes a pixel; once the array is made that buffer is freed and its
    pages returned, even while the pending image is still held (as a queued job holds it).
    The decode runs on a thread after a large buffer was freed there, as on a worker: glibc
    has then raised its mmap threshold, and Pillow's blocks come from the thread's heap, where
    freeing alone keeps them resident (90 MB held for 36 MB of pixels). It runs in a process of
    its own: in the suite's process the heap that earlier tests left decided the figure."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        nbytes, writeable, held = pool.apply(pixels_and_bytes_held_by_a_decode_on_a_worker)
    assert writeable
    assert held < nbytes + 16 * 2**20, f"{held} bytes held for {nbytes} of pixels"
