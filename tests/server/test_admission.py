"""Admission by predicted peak: the queue's order and room, the predictor, the engine's plan
and the settings that size them."""

from __future__ import annotations

import math
import os
import threading

import pytest

from model.cost import calibrate
from model.scheme_request import MIB, SchemeRequest
from model.schemes import Capped, build_scheme
from model.weights import load_weights
from server.admission import AdmissionQueue, Job
from server.errors import ApiError
from server.images import PendingImage
from server.prediction import MARGIN, PeakPredictor
from server.settings import Settings
from tests.server.conftest import scene_image, started


def taken_in_background(queue: AdmissionQueue) -> tuple[threading.Thread, list]:
    taken: list = []
    thread = threading.Thread(target=lambda: taken.append(queue.take()), daemon=True)
    thread.start()
    return thread, taken


def test_the_head_waits_for_room_and_nothing_overtakes_it():
    queue = AdmissionQueue(10)
    big_first, big_second, small = Job("a", 6), Job("b", 6), Job("c", 1)
    for job in (big_first, big_second, small):
        queue.put(job)
    assert queue.take() is big_first and queue.admitted_bytes == 6 and queue.busy == 1
    # `small` would fit beside `big_first`, but `big_second` came first: both wait.
    thread, taken = taken_in_background(queue)
    thread.join(timeout=0.3)
    assert taken == [] and queue.waiting == 2
    queue.done(big_first)
    thread.join(timeout=30)
    assert taken == [big_second]
    assert queue.take() is small and queue.admitted_bytes == 7 and queue.busy == 2


def test_a_job_that_decides_at_admission_is_told_the_free_bytes_and_who_could_start():
    asked = []

    def reserve(free: int, could_start: int) -> int | None:
        asked.append((free, could_start))
        return free // could_start if free >= 4 else None

    queue = AdmissionQueue(12, workers=2)
    queue.put(Job("running", 4))
    assert queue.take().reserved_bytes == 4
    deciding, behind = Job("auto", 1, reserve=reserve), Job("next", 2)
    queue.put(deciding)
    queue.put(behind)
    # 8 bytes free, one idle worker: only the head could start now.
    assert queue.take() is deciding and deciding.reserved_bytes == 8 and asked == [(8, 1)]
    queue.done(deciding)
    queue.put(Job("auto 2", 1, reserve=reserve))
    # `next` first, then: 6 free, no idle worker (counted as one).
    assert queue.take() is behind and queue.take().reserved_bytes == 6 and asked[-1] == (6, 1)
    queue = AdmissionQueue(12, workers=2)
    queue.put(Job("auto 3", 1, reserve=reserve))
    queue.put(Job("waiting", 2))
    # Two idle workers and a job behind: the head is offered a half.
    assert queue.take().reserved_bytes == 6 and asked[-1] == (12, 2)
    # Nothing fits: the head waits.
    full = AdmissionQueue(3)
    full.put(Job("auto 4", 1, reserve=reserve))
    thread, taken = taken_in_background(full)
    thread.join(timeout=0.3)
    assert taken == [] and full.waiting == 1
    full.close()


def test_a_cancelled_job_is_dropped_and_close_drains():
    queue = AdmissionQueue(10)
    waiting, next_one = Job("a", 10), Job("b", 10)
    queue.put(waiting)
    queue.put(next_one)
    assert waiting.future.cancel()  # its client gave up while it waited
    assert queue.take() is next_one
    queue.close()
    with pytest.raises(RuntimeError):
        queue.put(Job("late", 1))
    queue.put(Job("retry", 1), first=True)  # a retry of a running request still goes in
    queue.done(next_one)
    assert queue.take().payload == "retry"
    assert queue.take() is None  # closed and empty: the worker stops
    with pytest.raises(ValueError, match="can never fit"):
        AdmissionQueue(5).put(Job("huge", 6))


def test_predictions_bound_all_and_learn_pc(tiny_weights):
    model, _ = load_weights(tiny_weights)
    model.cost = calibrate(model, "cpu")  # as the server does at start
    predictor = PeakPredictor(model)
    # On a one-row image level 3 bounds its recomputed skip as one tile a site (175 sites, a
    # whole chunk of tiles: 2.05 MB predicted), where they share 22 tiles: the run peaks at
    # 0.87 MB, there since the stream holds less (it was 0.95 MB, the stream's).
    for height, width, slack in ((96, 160, 2.5), (200, 300, 2.5), (1, 700, 3.0)):
        image = scene_image(height, width, seed=2)
        measured = model.predict(image, build_scheme(SchemeRequest("all"))).peak_bytes
        predicted = predictor.peak_bytes(SchemeRequest("all"), height, width, None)
        assert measured <= predicted <= slack * measured, (height, width)
    bound = predictor.all_bytes(96, 160)
    # Unseen: the bound that holds for any image; a budget reserves itself.
    assert predictor.peak_bytes(SchemeRequest("pc"), 96, 160, None) == bound
    assert predictor.peak_bytes(SchemeRequest("threshold", threshold=0.4), 96, 160, None) == bound
    assert predictor.peak_bytes(SchemeRequest("budget", budget_mb=0.5), 96, 160, None) == MIB // 2
    assert predictor.peak_bytes(SchemeRequest("all"), 96, 160, 0.25) == MIB // 4  # the cap holds
    huge = SchemeRequest("budget", budget_mb=1e308)  # finite, but not in bytes
    assert predictor.peak_bytes(huge, 96, 160, 1e308) == bound
    floor = model.cost.min_budget_bytes(96, 160)
    predictor.observe(SchemeRequest("pc"), 96, 160, floor // 2)
    predicted = predictor.peak_bytes(SchemeRequest("pc"), 96, 160, None)
    assert predicted == pytest.approx(MARGIN * floor / 2, abs=2)
    predictor.observe(SchemeRequest("threshold", threshold=0.41), 96, 160, floor)
    assert predictor.peak_bytes(
        SchemeRequest("threshold", threshold=0.39), 96, 160, None
    ) == pytest.approx(MARGIN * floor, abs=2)  # the same step of 0.05
    assert predictor.peak_bytes(
        SchemeRequest("threshold", threshold=0.9), 96, 160, None
    ) == pytest.approx(MARGIN * floor, abs=2)  # unseen: the nearest lower threshold's figure
    assert predictor.peak_bytes(SchemeRequest("threshold", threshold=0.1), 96, 160, None) == bound


def test_pc_is_predicted_from_runs_of_its_own_size_first(tiny_weights):
    """The floor's fit errs differently by shape, so a ratio learnt at one size would
    over- or under-reserve at another: a seen size uses its own runs, an unseen one the
    highest ratio of any size."""
    model, _ = load_weights(tiny_weights)
    predictor = PeakPredictor(model)
    small, large = (96, 160), (600, 800)
    assert predictor.size_class(*small) != predictor.size_class(*large)
    assert predictor.size_class(96, 160) == predictor.size_class(90, 150)
    floor = {size: model.cost.min_budget_bytes(*size) for size in (small, large)}
    predictor.observe(SchemeRequest("pc"), *small, 2 * floor[small])
    unseen = predictor.peak_bytes(SchemeRequest("pc"), *large, None)
    assert unseen == min(predictor.all_bytes(*large), math.ceil(MARGIN * 2 * floor[large]))
    predictor.observe(SchemeRequest("pc"), *large, floor[large])
    own = predictor.peak_bytes(SchemeRequest("pc"), *large, None)
    assert own == pytest.approx(MARGIN * floor[large], abs=2)
    small_again = predictor.peak_bytes(SchemeRequest("pc"), *small, None)
    assert small_again == pytest.approx(MARGIN * 2 * floor[small], abs=2)


def test_a_request_predicted_above_the_device_budget_runs_capped_to_it(tiny_weights):
    """On the CPU the decoded pixels are the request's too: the cap is what the device budget
    leaves beside them, and the reservation is the whole budget."""
    image = PendingImage.of(scene_image(160, 224, seed=1))
    with started(Settings(weights=tiny_weights, device="cpu", device_memory_mb=2.0)) as client:
        engine = client.app.state.engine
        job = engine.plan(image, SchemeRequest("all"))
        assert job.reserved_bytes == engine.device_memory_bytes == 2 * MIB
        pixels = 3 * 160 * 224
        assert isinstance(job.payload.scheme, Capped)
        assert job.payload.scheme.cap.budget_mb == pytest.approx((2 * MIB - pixels) / MIB)
        with pytest.raises(ApiError) as refused:
            engine.plan(PendingImage.of(scene_image(2048, 2048)), SchemeRequest("pc"))
        assert refused.value.status == 413 and "device budget of 2 MiB" in refused.value.message
        assert "12.00 MiB of it for the image's pixels" in refused.value.message
        text = client.get("/metrics").text
        assert "qgn_device_memory_budget_bytes 2.097152e+06" in text
        assert "qgn_workers 1.0" in text


def test_torch_threads_default_to_the_cores_per_worker():
    assert Settings(torch_threads=3).threads_per_worker({}) == 3
    assert Settings(workers=2).threads_per_worker({"OMP_NUM_THREADS": "1"}) == 1
    cores = len(os.sched_getaffinity(0))
    assert Settings(workers=2).threads_per_worker({}) == max(1, cores // 2)
    assert Settings(workers=64).threads_per_worker({}) == 1
    settings = Settings.from_env(
        {"QGN_WORKERS": "2", "QGN_TORCH_THREADS": "1", "QGN_DEVICE_MEMORY_MB": "300"}
    )
    assert (settings.workers, settings.torch_threads, settings.device_memory_mb) == (2, 1, 300.0)
