"""The device side of the server: one worker thread per device behind a bounded queue.

Inference is serialised on a single worker, so each request's measured peak is its own (on
CUDA the peak statistics are per device; on the CPU the tracker is per thread anyway). The
queue holds at most `queue_size` admitted requests, waiting or running; past that a request
is refused at once with 503 and a `Retry-After`. A request that outlives the timeout gets 504,
and keeps its place until the device has really finished it, so the queue never over-fills.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import torch

from model.qgn import QGN, Prediction
from model.schemes import Budget, Scheme, SchemeRequest, make_scheme
from server.errors import ApiError
from server.images import encode_mask_png
from server.metrics import Metrics
from server.settings import Settings

log = logging.getLogger("qgn.inference")
MIB = 2**20
# Test hook, not a setting: QGN_FAULT_INJECT_OOM=N makes the first N request inferences raise
# torch.OutOfMemoryError, so the out-of-memory path can be tried on a real process and a CPU.
FAULT_INJECT_OOM = "QGN_FAULT_INJECT_OOM"


@dataclass
class SegmentResult:
    """The prediction (which records what ran) and its mask as a palette PNG."""

    prediction: Prediction
    mask_png: bytes


def pick_device(requested: str) -> torch.device:
    """`auto` takes CUDA when there is one and says so when there is not."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("QGN_DEVICE=cuda, but torch sees no CUDA device")
    if requested == "auto":
        if torch.cuda.is_available():
            requested = "cuda"
        else:
            log.warning("no CUDA device visible: running on the CPU")
            requested = "cpu"
    return torch.device(requested)


class Engine:
    def __init__(
        self, model: QGN, card: dict, device: torch.device, settings: Settings, metrics: Metrics
    ):
        self.model = model
        self.card = card
        self.device = device
        self.settings = settings
        self.metrics = metrics
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qgn-device")
        self._lock = threading.Lock()
        self._admitted = 0
        self._recent_seconds: deque[float] = deque(maxlen=20)
        self.ready = False
        self._oom_to_inject = int(os.environ.get(FAULT_INJECT_OOM) or 0)
        if self._oom_to_inject:
            log.warning(
                "%s=%d: the first %d inferences will fail with a simulated out-of-memory "
                "error (a test hook; never set it in production)",
                FAULT_INJECT_OOM,
                self._oom_to_inject,
                self._oom_to_inject,
            )

    @property
    def name(self) -> str:
        """The served model's name (the card's), as `/v1/model` and `/v2/models` say it."""
        return self.card.get("name", "qgn")

    @property
    def version(self) -> str:
        return str(self.card.get("version", "0"))

    # Admission ---------------------------------------------------------------------------
    def retry_after_s(self) -> int:
        typical = float(np.median(self._recent_seconds)) if self._recent_seconds else 1.0
        return max(1, math.ceil(typical * max(self._admitted, 1)))

    def admit(self) -> None:
        with self._lock:
            if self._admitted >= self.settings.queue_size:
                raise ApiError(
                    503,
                    "queue_full",
                    f"{self._admitted} requests are queued or running (the limit is "
                    f"{self.settings.queue_size}); retry later",
                    headers={"Retry-After": str(self.retry_after_s())},
                )
            self._admitted += 1
        self.metrics.queue_depth.inc()

    def _release(self, _future=None) -> None:
        with self._lock:
            self._admitted -= 1

    # Budgets -----------------------------------------------------------------------------
    def min_budget_mb(self, height: int, width: int) -> float:
        """The smallest budget an image of this size can run under, in MiB (rounded up)."""
        return math.ceil(self.model.cost.min_budget_bytes(height, width) / MIB * 100) / 100

    def plan(self, request: SchemeRequest, height: int, width: int) -> Scheme:
        """The scheme to run under the server's cap; 413/422 when no budget can hold this
        image."""
        floor = self.min_budget_mb(height, width)
        cap = self.settings.memory_budget_mb
        if cap is not None and floor > cap:
            raise ApiError(
                413,
                "over_memory_budget",
                f"a {width}×{height} image needs at least {floor} MiB; this server caps every "
                f"request at {cap} MiB",
                min_budget_mb=floor,
            )
        if request.name == "budget" and request.budget_mb < floor:
            raise ApiError(
                422,
                "budget_too_small",
                f"budget_mb={request.budget_mb} is below the smallest feasible budget for a "
                f"{width}×{height} image: {floor} MiB",
                min_budget_mb=floor,
            )
        return request.build(cap_mb=cap)

    # Running -----------------------------------------------------------------------------
    async def segment(self, image: np.ndarray, request: SchemeRequest) -> SegmentResult:
        """Admits, runs on the device worker, and waits at most the request timeout."""
        scheme = self.plan(request, image.shape[0], image.shape[1])
        self.admit()
        try:
            future = self.executor.submit(self._run, image, request, scheme)
        except RuntimeError:  # the executor is shutting down
            self._release()
            self.metrics.queue_depth.dec()
            raise ApiError(
                503, "shutting_down", "the server is shutting down", headers={"Retry-After": "5"}
            ) from None
        future.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(
                asyncio.wrap_future(future), timeout=self.settings.request_timeout_s
            )
        except TimeoutError:
            raise ApiError(
                504,
                "timeout",
                f"the request took longer than QGN_REQUEST_TIMEOUT_S="
                f"{self.settings.request_timeout_s} s",
            ) from None

    def _run(self, image, request: SchemeRequest, scheme: Scheme) -> SegmentResult:
        self.metrics.queue_depth.dec()
        start = time.perf_counter()
        try:
            prediction = self._predict(image, scheme)
        except (torch.OutOfMemoryError, MemoryError) as error:
            prediction = self._retry_tighter(image, request, error)
        self._recent_seconds.append(time.perf_counter() - start)
        mask_png = encode_mask_png(prediction.mask.numpy(), self.card["palette"])
        return SegmentResult(prediction=prediction, mask_png=mask_png)

    def _retry_tighter(
        self, image: np.ndarray, request: SchemeRequest, error: BaseException
    ) -> Prediction:
        """One retry under a budget of half what the device could not give; 507 if that
        fails too. The prediction records that it was degraded."""
        floor = self.min_budget_mb(image.shape[0], image.shape[1])
        in_force = cap = self.settings.memory_budget_mb
        if request.name == "budget":
            in_force = request.budget_mb if cap is None else min(request.budget_mb, cap)
        budget = max(floor, self._tighter_budget_mb(in_force, image))
        log.warning("out of memory (%s); retrying under %.1f MiB", type(error).__name__, budget)
        self._free_device_memory()
        try:
            prediction = self._predict(image, Budget.in_mib(budget))
        except (torch.OutOfMemoryError, MemoryError):
            self._free_device_memory()
            raise ApiError(
                507,
                "out_of_memory",
                f"the device ran out of memory, also when retried under {budget:.1f} MiB; "
                f"send a smaller image or a smaller budget",
            ) from None
        return replace(prediction, scheme=replace(prediction.scheme, degraded=True))

    def _predict(self, image: np.ndarray, scheme: Scheme) -> Prediction:
        if self._oom_to_inject > 0:  # only the device worker thread gets here
            self._oom_to_inject -= 1
            raise torch.OutOfMemoryError(f"simulated by {FAULT_INJECT_OOM} (a test hook)")
        return self.model.predict(image, scheme)

    def _tighter_budget_mb(self, budget: float | None, image: np.ndarray) -> float:
        """Half the budget that failed; without one, twice the image's minimum."""
        if budget is not None:
            return budget / 2
        return 2 * self.min_budget_mb(image.shape[0], image.shape[1])

    def _free_device_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def warm_up(self) -> None:
        """One inference per scheme kind on a small image, then the server is ready."""
        image = np.zeros((64, 64, 3), dtype=np.uint8)
        image[:, 32:] = 200
        for name in ("all", "pc"):
            self.model.predict(image, make_scheme(name))
        self.ready = True

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=False)
