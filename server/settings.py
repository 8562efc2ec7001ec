"""Server settings, from environment variables, validated once at start-up."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from model.weights import DEFAULT_WEIGHTS


class SettingsError(ValueError):
    """A setting has a value the server cannot run with; the message names it."""


@dataclass(frozen=True)
class Settings:
    weights: Path = DEFAULT_WEIGHTS
    device: str = "auto"
    default_scheme: str = "pc"
    max_upload_mb: float = 25.0
    max_pixels: int = 40_000_000
    queue_size: int = 8
    memory_budget_mb: float | None = None
    request_timeout_s: float = 120.0
    # SIGTERM: accepted requests are finished for this long, the rest get 503; inside
    # Docker's default 10 s grace period with room for the answers to go out.
    drain_timeout_s: float = 7.0
    workers: int = 1
    # None: the defaults `threads_per_worker` and `Engine` resolve (they depend on the machine).
    torch_threads: int | None = None
    device_memory_mb: float | None = None

    def __post_init__(self):
        if self.device not in ("auto", "cpu", "cuda"):
            raise SettingsError(f"QGN_DEVICE must be auto, cpu or cuda, got {self.device!r}")
        if self.default_scheme not in ("all", "pc", "auto"):
            raise SettingsError(
                f"QGN_DEFAULT_SCHEME must be all, pc or auto (schemes that need no parameter), "
                f"got {self.default_scheme!r}"
            )
        _positive("QGN_MAX_UPLOAD_MB", self.max_upload_mb)
        _positive("QGN_MAX_PIXELS", self.max_pixels)
        _positive("QGN_QUEUE_SIZE", self.queue_size)
        _positive("QGN_REQUEST_TIMEOUT_S", self.request_timeout_s)
        _positive("QGN_DRAIN_TIMEOUT_S", self.drain_timeout_s)
        if self.memory_budget_mb is not None:
            _positive("QGN_MEMORY_BUDGET_MB", self.memory_budget_mb)
        _positive("QGN_WORKERS", self.workers)
        if self.torch_threads is not None:
            _positive("QGN_TORCH_THREADS", self.torch_threads)
        if self.device_memory_mb is not None:
            _positive("QGN_DEVICE_MEMORY_MB", self.device_memory_mb)

    def threads_per_worker(self, env: Mapping[str, str] | None = None) -> int:
        """QGN_TORCH_THREADS, else OMP_NUM_THREADS when it is set, else the cores this
        process may use divided by the workers (at least 1): more would oversubscribe them."""
        if self.torch_threads is not None:
            return self.torch_threads
        omp = (os.environ if env is None else env).get("OMP_NUM_THREADS", "").strip()
        if omp.isdigit() and int(omp) > 0:
            return int(omp)
        return max(1, len(os.sched_getaffinity(0)) // self.workers)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def number(name: str, kind, default):
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                return kind(raw)
            except ValueError:
                what = "an integer" if kind is int else "a number"
                raise SettingsError(f"{name} must be {what}, got {raw!r}") from None

        return cls(
            weights=Path(env.get("QGN_WEIGHTS") or DEFAULT_WEIGHTS),
            device=env.get("QGN_DEVICE", "auto").strip().lower() or "auto",
            default_scheme=env.get("QGN_DEFAULT_SCHEME", "pc").strip() or "pc",
            max_upload_mb=number("QGN_MAX_UPLOAD_MB", float, 25.0),
            max_pixels=number("QGN_MAX_PIXELS", int, 40_000_000),
            queue_size=number("QGN_QUEUE_SIZE", int, 8),
            memory_budget_mb=number("QGN_MEMORY_BUDGET_MB", float, None),
            request_timeout_s=number("QGN_REQUEST_TIMEOUT_S", float, 120.0),
            drain_timeout_s=number("QGN_DRAIN_TIMEOUT_S", float, 7.0),
            workers=number("QGN_WORKERS", int, 1),
            torch_threads=number("QGN_TORCH_THREADS", int, None),
            device_memory_mb=number("QGN_DEVICE_MEMORY_MB", float, None),
        )


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise SettingsError(f"{name} must be a positive number, got {value!r}")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings.from_env()
