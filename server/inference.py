"""The device side of the server: N worker threads behind one bounded, admitting queue.

The queue holds at most `queue_size` requests, waiting or running; past that a request is
refused at once with 503 and a `Retry-After`. A request is admitted to a worker when its
predicted peak (`server.prediction`) fits in what the running ones leave of the device budget
(`QGN_DEVICE_MEMORY_MB`), first come first served (`server.admission`); a request whose
prediction alone exceeds that budget runs capped to it. Each request's measured peak is its
own: the CPU tracker is per thread. A request that outlives the timeout gets 504, and keeps
its place until the device has really finished it, so the queue never over-fills.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, replace

import numpy as np
import torch

from model import allocation_window, memory
from model.data import make_scene
from model.qgn import QGN, Prediction
from model.schemes import MIB, Budget, Scheme, SchemeRequest, make_scheme, mib_to_bytes
from server.admission import AdmissionQueue, Job
from server.errors import ApiError
from server.images import encode_mask_png
from server.metrics import Metrics
from server.prediction import PeakPredictor
from server.settings import Settings

log = logging.getLogger("qgn.inference")
# Test hook, not a setting: QGN_FAULT_INJECT_OOM=N makes the first N request inferences raise
# torch.OutOfMemoryError, so the out-of-memory path can be tried on a real process and a CPU.
FAULT_INJECT_OOM = "QGN_FAULT_INJECT_OOM"
# Thresholds run at warm-up: any threshold from the lowest up has a figure to start from.
WARM_UP_THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)
WARM_UP_SCENE_SEED = 0


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


def device_memory_bytes(device: torch.device, settings: Settings) -> int:
    """QGN_DEVICE_MEMORY_MB, or by default: on CUDA the device's free memory now (the weights
    are loaded) less a reserve of 10 % of its total; on the CPU half the machine's memory."""
    if settings.device_memory_mb is not None:
        return mib_to_bytes(settings.device_memory_mb)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return max(MIB, free - total // 10)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


@dataclass
class Work:
    """What a worker runs: the image, the scheme asked for and the scheme planned for it."""

    image: np.ndarray
    request: SchemeRequest
    scheme: Scheme


class Engine:
    def __init__(
        self, model: QGN, card: dict, device: torch.device, settings: Settings, metrics: Metrics
    ):
        self.model = model
        self.card = card
        self.device = device
        self.settings = settings
        self.metrics = metrics
        self.predictor = PeakPredictor(model)
        self.device_memory_bytes = device_memory_bytes(device, settings)
        self.queue = AdmissionQueue(self.device_memory_bytes)
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
        self.measurement = memory.measurement(device)
        log.info("peak memory per request measured by the %s", self.measurement)
        if self.measurement == "cuda allocator statistics" and settings.workers > 1:
            log.warning(
                "QGN_WORKERS=%d on CUDA without the allocation window (%s): the allocator's "
                "peak statistics are per device, so a request's peak_memory_bytes includes "
                "what the others held meanwhile",
                settings.workers,
                allocation_window.unavailable_reason(),
            )
        metrics.workers.set(settings.workers)
        metrics.device_memory_budget.set(self.device_memory_bytes)
        self._workers = [
            threading.Thread(target=self._work, name=f"qgn-worker-{index}", daemon=True)
            for index in range(settings.workers)
        ]
        for worker in self._workers:
            worker.start()

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
        return max(1, math.ceil(typical * max(self._admitted, 1) / self.settings.workers))

    def admit(self) -> None:
        """Takes a place in the queue (waiting or running), or refuses with 503."""
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

    def plan(self, image: np.ndarray, request: SchemeRequest) -> Job:
        """The job to queue: the scheme under the server's cap, reserving its predicted peak;
        413/422 when no budget can hold this image. A request predicted above the device
        budget runs capped to it."""
        height, width = image.shape[:2]
        floor = self.min_budget_mb(height, width)
        cap = self.settings.memory_budget_mb
        device_mb = self.device_memory_bytes / MIB
        for limit, what in ((cap, "caps every request at"), (device_mb, "has a device budget of")):
            if limit is not None and floor > limit:
                raise ApiError(
                    413,
                    "over_memory_budget",
                    f"a {width}×{height} image needs at least {floor} MiB; this server {what} "
                    f"{limit:g} MiB",
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
        predicted = self.predictor.predict(request, height, width, cap)
        if predicted > self.device_memory_bytes:
            cap, predicted = (
                device_mb if cap is None else min(cap, device_mb),
                self.device_memory_bytes,
            )
        return Job(Work(image, request, request.build(cap_mb=cap)), predicted)

    # Running -----------------------------------------------------------------------------
    async def segment(self, image: np.ndarray, request: SchemeRequest) -> SegmentResult:
        """Admits, waits for room on a worker, and waits at most the request timeout."""
        job = self.plan(image, request)
        self.admit()
        try:
            self.queue.put(job)
        except RuntimeError:  # the engine is shutting down
            self._release()
            self.metrics.queue_depth.dec()
            raise ApiError(
                503, "shutting_down", "the server is shutting down", headers={"Retry-After": "5"}
            ) from None
        job.future.add_done_callback(self._finished)
        try:
            return await asyncio.wait_for(
                asyncio.wrap_future(job.future), timeout=self.settings.request_timeout_s
            )
        except TimeoutError:
            raise ApiError(
                504,
                "timeout",
                f"the request took longer than QGN_REQUEST_TIMEOUT_S="
                f"{self.settings.request_timeout_s} s",
            ) from None

    def _finished(self, future) -> None:
        if future.cancelled():  # it timed out while waiting: it never ran
            self.metrics.queue_depth.dec()
        self._release()

    def _work(self) -> None:
        """A worker: takes the head job once it fits, until the queue is closed and empty."""
        while (job := self.queue.take()) is not None:
            self.metrics.busy_workers.inc()
            self.metrics.admitted_bytes.inc(job.reserved_bytes)
            try:
                self._run(job)
            finally:
                self.metrics.admitted_bytes.dec(job.reserved_bytes)
                self.metrics.busy_workers.dec()
                self.queue.done(job)

    def _run(self, job: Job) -> None:
        """Runs one job and settles its future; after an out-of-memory error the retry goes
        back to the head of the queue, to be admitted like any request."""
        work: Work = job.payload
        if job.retry_of is None:
            if not job.future.set_running_or_notify_cancel():
                return
            self.metrics.queue_depth.dec()
        started = time.time()
        try:
            prediction = self._predict(work.image, work.scheme)
        except (torch.OutOfMemoryError, MemoryError) as error:
            self._free_device_memory()
            if job.retry_of is None:
                self._queue_retry(job, error)
            else:
                job.future.set_exception(self._out_of_memory(work.scheme))
            return
        except BaseException as error:
            job.future.set_exception(error)
            return
        self._log_inference(job, started, prediction)
        self._recent_seconds.append(prediction.latency_s)
        self._learn(job, prediction)
        if job.retry_of is not None:
            prediction = replace(prediction, scheme=replace(prediction.scheme, degraded=True))
        try:
            mask_png = encode_mask_png(prediction.mask.numpy(), self.card["palette"])
        except BaseException as error:
            job.future.set_exception(error)
            return
        job.future.set_result(SegmentResult(prediction=prediction, mask_png=mask_png))

    def _queue_retry(self, job: Job, error: BaseException) -> None:
        """One retry under a budget of half what the device could not give (507 if that
        fails too); the prediction records that it was degraded."""
        work: Work = job.payload
        image, request = work.image, work.request
        floor = self.min_budget_mb(image.shape[0], image.shape[1])
        in_force = cap = self.settings.memory_budget_mb
        if request.name == "budget":
            in_force = request.budget_mb if cap is None else min(request.budget_mb, cap)
        budget = max(floor, self._tighter_budget_mb(in_force, image))
        budget = min(budget, max(floor, self.device_memory_bytes / MIB))
        log.warning("out of memory (%s); retrying under %.1f MiB", type(error).__name__, budget)
        retry = Job(
            Work(image, request, Budget.in_mib(budget)),
            math.ceil(min(budget * MIB, self.device_memory_bytes)),
            job.future,
            retry_of=error,
        )
        self.queue.put(retry, first=True)

    @staticmethod
    def _out_of_memory(scheme: Scheme) -> ApiError:
        return ApiError(
            507,
            "out_of_memory",
            f"the device ran out of memory, also when retried under "
            f"{scheme.budget_mb:.1f} MiB; send a smaller image or a smaller budget",
        )

    def _learn(self, job: Job, prediction: Prediction) -> None:
        """The prediction's error in the metrics; the predictor learns from runs as asked."""
        work: Work = job.payload
        height, width = work.image.shape[:2]
        self.metrics.prediction_ratio.labels(prediction.scheme.name).observe(
            prediction.peak_bytes / max(job.reserved_bytes, 1)
        )
        if job.retry_of is None and not prediction.scheme.capped:
            self.predictor.observe(work.request, height, width, prediction.peak_bytes)
        if self.device.type == "cuda":
            self.metrics.device_peak_memory.set(torch.cuda.max_memory_allocated(self.device))

    def _log_inference(self, job: Job, started: float, prediction: Prediction) -> None:
        """One structured line per inference: which worker, when (epoch seconds), predicted
        and measured bytes; the tests read overlaps from it."""
        log.info(
            json.dumps(
                {
                    "event": "inference",
                    "worker": threading.current_thread().name,
                    "start": round(started, 6),
                    "end": round(time.time(), 6),
                    "scheme": prediction.scheme.name,
                    "threshold": prediction.scheme.threshold,
                    "predicted_peak_bytes": job.reserved_bytes,
                    "peak_memory_bytes": prediction.peak_bytes,
                }
            )
        )

    def _predict(self, image: np.ndarray, scheme: Scheme) -> Prediction:
        with self._lock:  # several workers may get here
            inject = self._oom_to_inject > 0
            self._oom_to_inject -= inject
        if inject:
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
        """One inference per scheme kind on a small image, and `pc` and a few thresholds on a
        synthetic street scene (they seed the predictions: an unseen scheme reserves `all`'s
        bound, tens of times its peak, and a scene of a few flat regions seeded them below
        real scenes of its size), then the server is ready."""
        image = np.zeros((64, 64, 3), dtype=np.uint8)
        image[:, 32:] = 200
        for name in ("all", "pc"):
            self.model.predict(image, make_scheme(name))
        scene, _ = make_scene(WARM_UP_SCENE_SEED, 256, 512)
        for request in [SchemeRequest("pc")] + [
            SchemeRequest("threshold", threshold=t) for t in WARM_UP_THRESHOLDS
        ]:
            run = self.model.predict(scene, request.build())
            self.predictor.observe(request, 256, 512, run.peak_bytes)
        self.ready = True

    def shutdown(self) -> None:
        """Drains: the workers finish every queued request, then stop."""
        self.queue.close()
        for worker in self._workers:
            worker.join()
