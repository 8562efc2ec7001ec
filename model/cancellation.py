"""Stopping an inference that nobody waits for any more.

A request that times out, or that a draining server gives up on, should stop computing and
free its memory instead of running on for minutes. Threads cannot be killed, so the
inference checks a flag between chunks of its work (each level, each band of rows of the
encoder, each chunk of recomputed tiles): `check()` raises `Cancelled` once the flag of the
thread's current `watching` block is set. Outside such a block it costs a lookup and does
nothing, so training and evaluation are unaffected.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Cancelled(Exception):
    """The inference was stopped by its flag; the memory it held is freed as it unwinds."""


_local = threading.local()


@contextmanager
def watching(flag: threading.Event) -> Iterator[None]:
    """Makes `check()` on this thread raise once `flag` is set (blocks nest: the innermost
    flag counts)."""
    outer = getattr(_local, "flag", None)
    _local.flag = flag
    try:
        yield
    finally:
        _local.flag = outer


def check() -> None:
    """Raises `Cancelled` when the current thread's flag is set."""
    flag = getattr(_local, "flag", None)
    if flag is not None and flag.is_set():
        raise Cancelled("the inference was cancelled")
