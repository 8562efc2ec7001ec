"""The RSS growth of a measured window: the cross-check of the allocation tracker.

Torch-free, so that the peers' own environment (`benchmarks.peers`) measures the same way.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def _status_bytes(field: str) -> int | None:
    """A memory line of Linux's /proc/self/status (VmRSS, VmHWM) in bytes; None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def max_rss_bytes() -> int:
    """getrusage's max RSS. On Linux it survives fork and exec, so a child starts with its
    parent's RSS as its max: hence the resettable high-water mark below for the delta."""
    scale = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB, macOS bytes
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class RssWatch:
    """The RSS growth of the measured inferences: the RSS high-water mark is reset (Linux:
    `5` into /proc/self/clear_refs) once the model, the scenes and a tiny primer inference
    are in memory; the growth is the high-water mark afterwards minus the RSS then. Where
    that cannot be reset, ru_maxrss stands in (and `reset` says so)."""

    def __init__(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.reset = True
        except OSError:
            self.reset = False
        self.before = _status_bytes("VmRSS") or 0
        self.max_before = max_rss_bytes()

    def result(self) -> dict:
        high = _status_bytes("VmHWM") if self.reset else None
        high = high if high is not None else max_rss_bytes()
        return {
            "rss_before_bytes": self.before,
            "rss_high_water_bytes": high,
            "max_rss_delta_bytes": max(high - self.before, 0),
            "rss_high_water_reset": self.reset,
            "max_rss_bytes": max_rss_bytes(),  # getrusage, as is (includes the parent's)
        }
