"""A request's run time, predicted before it runs: what `scheme=auto` weighs against a deadline.

Per setting (`server.auto.label_of`), the recent runs' (padded pixels, seconds). With runs at
two sizes or more, a least-squares line through them; with runs at one size, their median
scaled by pixels; with none, the model card's median latency for that setting scaled by pixels
and by how much faster or slower this server runs the settings it has seen than the card's
machine did. Fitted from measured requests as the peak predictor is, seeded by the warm-up.
"""

from __future__ import annotations

import statistics
import threading
from collections import deque

WINDOW = 64  # recent runs per setting
MAX_SETTINGS = 32


class LatencyModel:
    def __init__(self):
        self._runs: dict[str, deque[tuple[int, float]]] = {}
        self._speed: dict[str, float] = {}  # setting -> measured / card seconds, same pixels
        self._lock = threading.Lock()

    def observe(self, setting: str, pixels: int, seconds: float, card_seconds: float | None):
        """A run of `setting` on an image of `pixels` padded pixels took `seconds`;
        `card_seconds` is the card's figure for it scaled to those pixels, when it has one."""
        with self._lock:
            if setting not in self._runs and len(self._runs) >= MAX_SETTINGS:
                self._runs.pop(next(iter(self._runs)))
            self._runs.setdefault(setting, deque(maxlen=WINDOW)).append((pixels, seconds))
            if card_seconds:
                self._speed[setting] = seconds / card_seconds

    def seconds(self, setting: str, pixels: int, card_seconds: float | None) -> float:
        """Predicted seconds of `setting` on `pixels` padded pixels; `card_seconds` is the
        card's figure scaled to those pixels (the fallback for a setting never run)."""
        with self._lock:
            runs = list(self._runs.get(setting, ()))
            speed = statistics.median(self._speed.values()) if self._speed else 1.0
        if len({p for p, _ in runs}) >= 2:
            return max(fit_line(runs, pixels), 0.0)
        if runs:
            return statistics.median(s for _, s in runs) * pixels / runs[0][0]
        return (card_seconds or 0.0) * speed

    def describe(self) -> dict:
        """What `/v1/model` shows: per setting, its runs and its predicted ms per megapixel."""
        with self._lock:
            settings = {setting: len(runs) for setting, runs in self._runs.items()}
            speed = statistics.median(self._speed.values()) if self._speed else 1.0
        return {
            "settings": {
                setting: {
                    "runs": runs,
                    "ms_per_megapixel": round(self.seconds(setting, 2**20, None) * 1000, 2),
                }
                for setting, runs in settings.items()
            },
            "speed_against_card": round(speed, 3),
        }


def fit_line(runs: list[tuple[int, float]], pixels: int) -> float:
    """Least squares seconds = a + b × pixels through the runs, at `pixels`."""
    mean_p = statistics.fmean(p for p, _ in runs)
    mean_s = statistics.fmean(s for _, s in runs)
    spread = sum((p - mean_p) ** 2 for p, _ in runs)
    slope = sum((p - mean_p) * (s - mean_s) for p, s in runs) / spread
    return mean_s + slope * (pixels - mean_p)
