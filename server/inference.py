"""The device side of the server: N worker threads behind one bounded, admitting queue.

The queue holds at most `queue_size` requests, waiting or running; past that a request is
refused at once with 503 and a `Retry-After`. A request is admitted to a worker when its
predicted peak (`server.prediction`) fits in what the running ones leave of the device budget
(`QGN_DEVICE_MEMORY_MB`, or `server.memory_limit`'s default), first come first served
(`server.admission`); a request whose prediction alone exceeds that budget runs capped to it.
An upload is decoded when its request is admitted, and on the CPU its pixels are part of
what it reserves. Each request's measured peak is its own: the CPU tracker is per thread.
A request that outlives the timeout gets 504 and is cancelled: it stops at its next check
(`model.cancellation`) and frees its place and memory. On SIGTERM the engine drains
(`drain`): accepted requests are finished while the drain timeout lasts, the rest get 503.
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
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from model import allocation_window, arrival, cancellation, memory
from model.cost import padded_pixels
from model.data import make_scene
from model.qgn import QGN, Prediction
from model.scheme_request import MIB, SchemeRequest, mib_to_bytes
from model.schemes import Budget, Scheme, build_scheme, make_scheme
from server import auto
from server.admission import AdmissionQueue, Job
from server.auto import AutoChoice
from server.errors import ApiError
from server.images import PendingImage
from server.latency import LatencyModel
from server.memory_limit import device_memory
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


# Bytes a pixel of a decoded upload holds on the host while its request runs (RGB uint8).
PIXEL_BYTES = 3


@dataclass
class Work:
    """What a worker runs: the image, the scheme asked for and the scheme planned for it;
    `cancel` stops it at its next check, answered with `refusal` (504 after a timeout, 503
    when a draining server gives up on it)."""

    image: PendingImage
    request: SchemeRequest
    scheme: Scheme
    predicted_bytes: int  # the model's predicted peak; the job reserves the pixels too
    cancel: threading.Event = field(default_factory=threading.Event)
    auto: AutoChoice | None = None  # what scheme=auto chose, once it was admitted
    refusal: ApiError | None = None
    started: bool = False  # it left the queue (to run, or answered while it waited)
    running: bool = False  # a worker has it now


@dataclass(frozen=True)
class Served:
    """A request's answer: the prediction, and what scheme=auto chose (None otherwise)."""

    prediction: Prediction
    auto: AutoChoice | None = None


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
        self.latency = LatencyModel()
        self.queue = AdmissionQueue(MIB, settings.workers)
        self._size_device_budget()
        self.draining = False
        self._accepted: dict[int, Job] = {}  # id(job) -> every job not answered yet
        self._lock = threading.RLock()  # settling a future runs its callbacks, which take it
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
        self._workers = [
            threading.Thread(target=self._work, name=f"qgn-worker-{index}", daemon=True)
            for index in range(settings.workers)
        ]
        for worker in self._workers:
            worker.start()

    def _size_device_budget(self) -> None:
        """What the requests may hold together (`server.memory_limit`); on the CPU sized
        again after the warm-up, from what the process then holds."""
        settings = self.settings
        self.device_memory = device_memory(
            self.device, settings.device_memory_mb, settings.queue_size * settings.max_upload_bytes
        )
        self.device_memory_bytes = self.queue.capacity_bytes = self.device_memory.bytes
        self.metrics.device_memory_budget.set(self.device_memory_bytes)
        log.info(
            "device budget %.1f MiB: %s", self.device_memory_bytes / MIB, self.device_memory.source
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
        typical = self._typical_run_s(default=1.0)
        return max(1, math.ceil(typical * max(self._admitted, 1) / self.settings.workers))

    def _typical_run_s(self, default: float) -> float:
        """The median of the recent inferences' seconds (`default` before there are any)."""
        return float(np.median(self._recent_seconds)) if self._recent_seconds else default

    def admit(self) -> None:
        """Takes a place in the queue (waiting or running), or refuses with 503."""
        if self.draining:
            raise self.shutting_down()
        with self._lock:
            if self._admitted >= self.settings.queue_size:
                raise ApiError(
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

    def pixel_bytes(self, height: int, width: int) -> int:
        """What the decoded image holds outside the model's measured peak: on the CPU the
        model reads the pixels in place, so they are the request's as well; on CUDA they are
        copied to the device inside the measured peak, and host memory is not the budget."""
        return PIXEL_BYTES * height * width if self.device.type == "cpu" else 0

    def plan(self, image: PendingImage, request: SchemeRequest, arrived: float = 0.0) -> Job:
        """The job to queue: the scheme under the server's cap, reserving its predicted peak
        and its pixels; 413/422 when no budget can hold this image. A request predicted above
        the device budget runs capped to what the budget leaves beside its pixels."""
        if request.name == "auto":
            return self._plan_auto(image, request, arrived)
        height, width = image.height, image.width
        floor = self.min_budget_mb(height, width)
        self._fits_the_device(height, width, floor)
        cap = self.settings.memory_budget_mb
        pixels = self.pixel_bytes(height, width)
        device_mb = (self.device_memory_bytes - pixels) / MIB  # what the model may hold
        if request.name == "budget" and request.budget_mb < floor:
            raise ApiError(
                "budget_too_small",
                f"budget_mb={request.budget_mb} is below the smallest feasible budget for a "
                f"{width}×{height} image: {floor} MiB",
                min_budget_mb=floor,
            )
        predicted = self.predictor.peak_bytes(request, height, width, cap)
        if predicted + pixels > self.device_memory_bytes:
            cap, predicted = (
                device_mb if cap is None else min(cap, device_mb),
                self.device_memory_bytes - pixels,
            )
        work = Work(image, request, build_scheme(request, cap_mb=cap), predicted)
        return Job(work, predicted + pixels)

    def _fits_the_device(self, height: int, width: int, floor: float) -> None:
        """413 when even the image's minimum budget cannot fit the cap or the device."""
        pixels = self.pixel_bytes(height, width)
        device_mb = (self.device_memory_bytes - pixels) / MIB
        in_device = f"has a device budget of {self.device_memory_bytes / MIB:g} MiB"
        if pixels:
            in_device += f", {pixels / MIB:.2f} MiB of it for the image's pixels"
        limits = [(device_mb, in_device)]
        cap = self.settings.memory_budget_mb
        if cap is not None:
            limits.insert(0, (cap, f"caps every request at {cap:g} MiB"))
        for limit, what in limits:
            if floor > limit:
                raise ApiError(
                    "over_memory_budget",
                    f"a {width}×{height} image needs at least {floor} MiB; this server {what}",
                    min_budget_mb=floor,
                )

    def _plan_auto(self, image: PendingImage, request: SchemeRequest, arrived: float) -> Job:
        """scheme=auto: every candidate's predicted peak and run time for this image, the caps
        applied now; the choice itself waits for admission (`Job.reserve`). 422 when even the
        minimum budget is over `max_memory_mb`, 503 at once when the predicted wait and the
        fastest candidate cannot meet the deadline."""
        height, width = image.height, image.width
        floor = self.min_budget_mb(height, width)
        self._fits_the_device(height, width, floor)
        if request.max_memory_mb is not None and floor > request.max_memory_mb:
            raise ApiError(
                "budget_too_small",
                f"max_memory_mb={request.max_memory_mb} is below the smallest feasible budget "
                f"for a {width}×{height} image: {floor} MiB",
                min_budget_mb=floor,
            )
        ranked = auto.candidates(self.card, height, width, floor)
        if not ranked:
            raise ApiError(
                "invalid_parameter",
                "scheme=auto ranks settings by the model card's evaluation, and this model's "
                "card has none; name a scheme",
            )
        caps = [c for c in (self.settings.memory_budget_mb, request.max_memory_mb) if c]
        cap = min(caps, default=None)
        pixels = self.pixel_bytes(height, width)
        padded = padded_pixels(height, width)
        options, excluded = [], {}
        for index, candidate in enumerate(ranked):
            peak = self.predictor.peak_bytes(candidate.request, height, width, None)
            card_s = candidate.card_seconds(padded)
            seconds = self.latency.seconds(candidate.label, padded, card_s)
            options.append(auto.Option(candidate, peak, seconds))
            if cap is not None and peak > mib_to_bytes(cap):
                excluded[index] = "max_memory"
            elif peak + pixels > self.device_memory_bytes:
                excluded[index] = "memory"
        deadline_s = None if request.deadline_ms is None else request.deadline_ms / 1000
        if deadline_s is not None:
            wait = self.predicted_wait_s()
            fastest = min(o.seconds for i, o in enumerate(options) if i not in excluded)
            spent = time.monotonic() - arrived
            if wait + fastest > deadline_s - spent:
                raise ApiError(
                    "deadline_unreachable",
                    f"deadline_ms={request.deadline_ms:g} cannot be met: {spent * 1000:.0f} ms "
                    f"have passed since the request arrived, the predicted wait is "
                    f"{wait * 1000:.0f} ms and the fastest setting takes {fastest * 1000:.0f} ms",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
        cheapest = min(o.peak_bytes for i, o in enumerate(options) if i not in excluded)
        work = Work(image, request, build_scheme(SchemeRequest("pc")), cheapest)

        def reserve(free_bytes: int, could_start: int) -> int | None:
            """At admission: the choice, and what it reserves (None: wait for room). Under
            load the free memory is shared with the requests that could start beside this
            one (idle workers, requests waiting), so that one accurate request does not
            hold the device while the others queue; if nothing fits a share, the whole."""
            left = None if deadline_s is None else deadline_s - (time.monotonic() - arrived)
            share = free_bytes // could_start - pixels
            chosen = auto.choose(options, excluded, share, left)
            if chosen is None and could_start > 1:
                chosen = auto.choose(options, excluded, free_bytes - pixels, left)
            if chosen is None:
                return None
            option, reason = chosen
            work.request = option.candidate.request
            work.scheme = build_scheme(work.request, cap_mb=cap)
            work.predicted_bytes = option.peak_bytes
            work.auto = AutoChoice(
                option.candidate.label,
                reason,
                option.peak_bytes,
                free_bytes,
                option.seconds if deadline_s is not None else None,
            )
            self.metrics.auto_choices.labels(option.candidate.label, reason).inc()
            return option.peak_bytes + pixels

        return Job(work, cheapest + pixels, reserve=reserve)

    def predicted_wait_s(self) -> float:
        """How long a request arriving now waits for a worker: the typical run of what is
        queued ahead, plus one when every worker is busy, shared among the workers."""
        typical = self._typical_run_s(default=0.0)
        ahead = self.queue.waiting + (self.queue.busy >= self.settings.workers)
        return typical * ahead / self.settings.workers

    # Running -----------------------------------------------------------------------------
    async def segment(
        self, image: PendingImage, request: SchemeRequest, arrived: float | None = None
    ) -> Served:
        """Admits, waits for room on a worker, and waits at most the request timeout; a
        request that outlives it is cancelled (504). The prediction records what ran; the
        route encodes it in the format its API answers in."""
        arrived = time.monotonic() if arrived is None else arrived
        job = self.plan(image, request, arrived)
        self.admit()
        try:
            self.queue.put(job)
        except RuntimeError:  # the engine is shutting down
            self._release()
            self.metrics.queue_depth.dec()
            raise self.shutting_down() from None
        with self._lock:
            self._accepted[id(job)] = job
        job.future.add_done_callback(lambda _: self._finished(job))
        try:
            prediction = await asyncio.wait_for(
                asyncio.wrap_future(job.future), timeout=self.settings.request_timeout_s
            )
            return Served(prediction, job.payload.auto)
        except TimeoutError:
            timeout = ApiError(
                "timeout",
                f"the request took longer than QGN_REQUEST_TIMEOUT_S="
                f"{self.settings.request_timeout_s} s",
            )
            self._cancel(job, timeout)
            raise timeout from None

    def _cancel(self, job: Job, refusal: ApiError) -> None:
        """Stops a job: a waiting one is answered `refusal` at once and never runs, a running
        one stops at its next check and is answered `refusal` then."""
        work: Work = job.payload
        with self._lock:
            work.refusal = work.refusal or refusal
            work.cancel.set()
            if not work.running and not job.future.done():
                job.future.set_exception(work.refusal)

    def _settle(self, job: Job, result: Prediction | None, error: BaseException | None):
        """Answers the job's client, unless a timeout or a drain answered it already."""
        with self._lock:
            if job.future.done():
                return
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)

    def _finished(self, job: Job) -> None:
        """The client has its answer: the job leaves the queue's count if it never ran, and
        its place is free."""
        with self._lock:
            if not job.payload.started:
                job.payload.started = True
                self.metrics.queue_depth.dec()
            self._accepted.pop(id(job), None)
        self._release()

    def _work(self) -> None:
        """A worker: takes the head job once it fits, until the queue is closed and empty."""
        while (job := self.queue.take()) is not None:
            self.metrics.busy_workers.inc()
            self.metrics.admitted_bytes.inc(job.reserved_bytes)
            try:
                self._run(job)
            finally:
                with self._lock:
                    job.payload.running = False
                self.metrics.admitted_bytes.dec(job.reserved_bytes)
                self.metrics.busy_workers.dec()
                self.queue.done(job)

    def _start(self, job: Job) -> bool:
        """Marks the job running; False when it was answered while it waited (timed out,
        or refused by a drain)."""
        work: Work = job.payload
        with self._lock:
            if job.retry_of is None:
                if job.future.done():
                    return False
                work.started = True
                self.metrics.queue_depth.dec()
                if not job.future.set_running_or_notify_cancel():
                    return False
            if work.cancel.is_set() or job.future.done():
                return False
            work.running = True
            return True

    def _run(self, job: Job) -> None:
        """Decodes the image, runs the job and settles its future; after an out-of-memory
        error the retry goes back to the head of the queue, to be admitted like any
        request."""
        work: Work = job.payload
        if not self._start(job):
            return
        try:
            # On the CPU the model reads the pixels in place, so it starts on the first rows
            # while a PNG's others are decoded (model.arrival); CUDA copies them whole first.
            pixels = work.image.arriving(in_bands=self.device.type == "cpu")
        except BaseException as error:
            self._settle(job, None, error)
            return
        started = time.time()
        try:
            with cancellation.watching(work.cancel), arrival.arriving(pixels.wait_rows):
                prediction = self._predict(pixels.array, work.scheme)
        except (torch.OutOfMemoryError, MemoryError) as error:
            self._free_device_memory()
            pixels.join()
            if job.retry_of is None and not work.cancel.is_set() and pixels.error is None:
                self._queue_retry(job, PendingImage.of(pixels.array), error)
            else:
                self._settle(job, None, work.refusal or self._out_of_memory(work.scheme))
            return
        except cancellation.Cancelled:
            log.info("inference cancelled: %s", work.refusal.message if work.refusal else "")
            self._settle(job, None, work.refusal)
            return
        except BaseException as error:
            self._settle(job, None, error)
            return
        finally:
            pixels.join()
        # latency_ms is the inference's: time it waited for the decode is the decode's.
        prediction = replace(prediction, latency_s=prediction.latency_s - pixels.waited_s)
        del pixels
        self._log_inference(job, started, prediction)
        self._recent_seconds.append(prediction.latency_s)
        self._learn(job, prediction)
        if job.retry_of is not None:
            prediction = replace(prediction, scheme=replace(prediction.scheme, degraded=True))
        self._settle(job, prediction, None)

    def _queue_retry(self, job: Job, image: PendingImage, error: BaseException) -> None:
        """One retry under a budget of half what the device could not give (507 if that
        fails too), with the pixels already decoded; the prediction records that it was
        degraded."""
        work: Work = job.payload
        request = work.request
        pixels = self.pixel_bytes(image.height, image.width)
        floor = self.min_budget_mb(image.height, image.width)
        in_force = cap = self.settings.memory_budget_mb
        if request.name == "budget":
            in_force = request.budget_mb if cap is None else min(request.budget_mb, cap)
        budget = max(floor, self._tighter_budget_mb(in_force, image))
        budget = min(budget, max(floor, (self.device_memory_bytes - pixels) / MIB))
        log.warning("out of memory (%s); retrying under %.1f MiB", type(error).__name__, budget)
        # The same Work (its cancel flag and answer) with the decoded image and a budget.
        work.image, work.scheme = image, Budget.in_mib(budget)
        work.predicted_bytes = math.ceil(budget * MIB)
        reserved = math.ceil(min(budget * MIB + pixels, self.device_memory_bytes))
        self.queue.put(Job(work, reserved, job.future, retry_of=error), first=True)

    @staticmethod
    def _out_of_memory(scheme: Scheme) -> ApiError:
        return ApiError(
            "out_of_memory",
            f"the device ran out of memory, also when retried under "
            f"{scheme.budget_mb:.1f} MiB; send a smaller image or a smaller budget",
        )

    def _learn(self, job: Job, prediction: Prediction) -> None:
        """The prediction's error in the metrics; the predictor learns from runs as asked."""
        work: Work = job.payload
        height, width = work.image.height, work.image.width
        self.metrics.prediction_ratio.labels(prediction.scheme.name).observe(
            prediction.peak_bytes / max(work.predicted_bytes, 1)
        )
        if job.retry_of is None and not prediction.scheme.capped:
            self.predictor.observe(work.request, height, width, prediction.peak_bytes)
            label = work.auto.setting if work.auto else auto.label_of(work.request)
            self._observe_latency(label, height, width, prediction.latency_s)
        if self.device.type == "cuda":
            self.metrics.device_peak_memory.set(torch.cuda.max_memory_allocated(self.device))

    def _observe_latency(self, label: str, height: int, width: int, seconds: float) -> None:
        """The latency model learns a run, beside the card's figure for it (its speed)."""
        card_s = auto.card_seconds(self.card, label, height, width)
        self.latency.observe(label, padded_pixels(height, width), seconds, card_s)

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
                    "predicted_peak_bytes": job.payload.predicted_bytes,
                    "reserved_bytes": job.reserved_bytes,
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

    def _tighter_budget_mb(self, budget: float | None, image: PendingImage) -> float:
        """Half the budget that failed; without one, twice the image's minimum."""
        if budget is not None:
            return budget / 2
        return 2 * self.min_budget_mb(image.height, image.width)

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
            run = self.model.predict(scene, build_scheme(request))
            self.predictor.observe(request, 256, 512, run.peak_bytes)
            self._observe_latency(auto.label_of(request), 256, 512, run.latency_s)
        if self.device.type == "cpu" and self.settings.device_memory_mb is None:
            self._size_device_budget()
        self.ready = True

    # Stopping ----------------------------------------------------------------------------
    @staticmethod
    def shutting_down(detail: str = "") -> ApiError:
        return ApiError(
            "shutting_down",
            f"the server is shutting down{detail}; retry on another replica or later",
            headers={"Retry-After": "5"},
        )

    def drain(self, timeout_s: float) -> None:
        """SIGTERM: readiness fails and new requests get 503 at once (`draining`); the
        accepted ones, running or queued, are finished while `timeout_s` lasts; any left
        then are answered 503 (a waiting one at once, a running one at its next check)."""
        self.draining = True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._accepted:
                    return
            time.sleep(0.02)
        refusal = self.shutting_down(f" and could not finish this request in {timeout_s:g} s")
        with self._lock:
            left = list(self._accepted.values())
        log.warning("drain: %d request(s) not finished in %g s get 503", len(left), timeout_s)
        for job in left:
            self._cancel(job, refusal)

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """The workers finish what is queued (nothing, after `drain`), then stop; a worker
        still inside an inference after `timeout_s` is left to die with the process."""
        self.queue.close()
        deadline = time.monotonic() + timeout_s
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
