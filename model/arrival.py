"""Pixels that are still arriving when the inference starts.

The encoder's first pass reads the image top to bottom, a band of rows at a time, and nothing
reads a row before that pass has (`model.regions.stream_encoder`). So the inference can start
while the image is still being decoded on another thread: before each band the pass calls
`wait_for_rows`, which blocks until the rows it reads are in. The server uses this to hide a
PNG's decode behind the inference; outside an `arriving` block every row is in and the call
costs a lookup.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_local = threading.local()


@contextmanager
def arriving(wait: Callable[[int], None]) -> Iterator[None]:
    """Makes `wait_for_rows(n)` on this thread call `wait(n)`, which returns once the image's
    first n rows are written (or raises why they never will be)."""
    outer = getattr(_local, "wait", None)
    _local.wait = wait
    try:
        yield
    finally:
        _local.wait = outer


def wait_for_rows(rows: int) -> None:
    """Returns once the first `rows` rows of the image being inferred are in."""
    wait = getattr(_local, "wait", None)
    if wait is not None:
        wait(rows)
