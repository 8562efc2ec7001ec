import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from torch.utils._pytree import tree_leaves

from model import memory
from model.allocation_window import AllocationWindow
from model.memory import CpuAllocationTracker, MemoryProbe, measure
from model.qgn import qgn_tiny
from model.schemes import All, Budget, PredictedComposite, Threshold


@pytest.fixture(params=["allocation window", "dispatch tracker"])
def counting(request, monkeypatch):
    """Each CPU measurement: the allocation window, and the per-op tracker it falls back to."""
    if request.param == "dispatch tracker":
        monkeypatch.setattr(memory, "windows_count", lambda device_type: False)
    assert memory.measurement("cpu") == request.param
    return request.param


def test_counts_live_bytes_exactly(counting):
    with measure() as probe:
        a = torch.zeros(1000)  # 4000 bytes
        b = torch.ones(2000)  # 8000, live 12000
        del a  # live 8000
        c = b.view(2, 1000) * b.view(2, 1000)  # 8000 more, live 16000; a view costs nothing
        c.add_(b.view(2, 1000))  # in place: nothing new
        assert probe.live_bytes() == 16000
        del b, c
        assert probe.live_bytes() == 0
    assert probe.peak_bytes == 16000


def test_tensors_from_before_the_window_do_not_count(counting):
    weights = torch.randn(10_000)
    older = torch.randn(5_000)
    with measure() as probe:
        out = weights * weights
        del older  # freed inside, allocated before: not the window's
        assert probe.live_bytes() == out.nbytes
    assert probe.peak_bytes == out.nbytes


def test_phases_record_their_own_peak_and_start(counting):
    with MemoryProbe() as probe:
        probe.begin_phase("big")
        a = torch.zeros(10_000)
        del a
        probe.begin_phase("small")
        b = torch.zeros(100)
    assert probe.phase_peaks == {"big": 40_000, "small": 400}
    assert probe.phase_starts == {"big": 0, "small": 0}
    assert probe.peak_bytes == 40_000
    del b


def conv_peak() -> int:
    with torch.inference_mode(), measure() as probe:
        x = torch.randn(1, 8, 64, 64)
        torch.nn.functional.conv2d(x, torch.randn(8, 8, 3, 3), padding=1)
    return probe.peak_bytes


def test_same_work_same_peak(counting):
    returned = 2 * 8 * 64 * 64 * 4 + 8 * 8 * 9 * 4  # input, output, weight
    assert conv_peak() == conv_peak() >= returned
    if counting == "dispatch tracker":
        assert conv_peak() == returned


def test_the_window_sees_buffers_inside_ops(monkeypatch):
    """The per-op tracker sees what a convolution returns; the allocator also hands it a
    buffer it frees before returning (on this CPU build, im2col's columns)."""
    window = conv_peak()
    monkeypatch.setattr(memory, "windows_count", lambda device_type: False)
    assert window > conv_peak()


def test_windows_nest_and_each_counts_its_own():
    with AllocationWindow() as outer:
        a = torch.zeros(1000)
        with AllocationWindow() as inner:
            b = torch.zeros(500)
            del a  # the outer window's block: the inner does not count its free
            assert inner.live_bytes == 2000
        assert outer.live_bytes == 2000 and outer.peak_bytes == 6000
        del b
        assert outer.live_bytes == 0
    assert inner.peak_bytes == 2000 and outer.peak_bytes == 6000


def test_windows_on_other_threads_count_only_their_own_work():
    """What makes concurrent requests measurable one by one: each thread's window sees its
    thread's allocations, however the threads interleave."""
    barrier = threading.Barrier(2)
    peaks = {}

    def work(elements: int) -> None:
        with AllocationWindow() as window:
            held = []
            for _ in range(50):
                barrier.wait()
                held.append(torch.ones(elements))
            del held
        peaks[elements] = window.peak_bytes

    threads = [threading.Thread(target=work, args=(n,)) for n in (100, 1000)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peaks == {100: 50 * 400, 1000: 50 * 4000}


def test_the_window_follows_work_into_intra_op_threads():
    """A parallel op's chunks run on torch's pool; what they allocate is the window's."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(64, 256, 256)
        with AllocationWindow() as window:
            out = x.sort(dim=-1).values
        assert window.live_bytes == out.nbytes
        assert window.peak_bytes >= out.nbytes
    finally:
        torch.set_num_threads(threads)


def test_a_window_closed_out_of_order_says_so():
    outer = AllocationWindow().__enter__()
    inner = AllocationWindow().__enter__()
    with pytest.raises(RuntimeError, match="innermost first"):
        outer.__exit__(None, None, None)
    inner.__exit__(None, None, None)
    kept = torch.zeros(10)  # still counted: the failed close left the outer window open
    outer.__exit__(None, None, None)
    assert outer.live_bytes == kept.nbytes
    with AllocationWindow() as after:
        torch.zeros(10)
    assert after.peak_bytes == 40


def test_without_a_compiler_the_cpu_falls_back_to_the_dispatch_tracker(tmp_path):
    """A fresh cache and no compiler: the probe says why, counts per op, and predict works."""
    script = (
        "import torch\n"
        "from model import allocation_window, memory\n"
        "from model.qgn import qgn_tiny\n"
        "from model.schemes import PredictedComposite\n"
        "assert memory.measurement('cpu') == 'dispatch tracker'\n"
        "print(allocation_window.unavailable_reason())\n"
        "image = torch.zeros(40, 48, 3, dtype=torch.uint8)\n"
        "print(qgn_tiny(5).eval().predict(image, PredictedComposite()).peak_bytes > 0)\n"
    )
    env = {**os.environ, "QGN_NATIVE_CACHE": str(tmp_path), "CXX": str(tmp_path / "no-c++")}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    reason, measured = done.stdout.split("\n")[:2]
    assert "no-c++" in reason and measured == "True"
    assert not list(tmp_path.iterdir())  # no half-built library left behind


def test_the_library_builds_into_a_fresh_cache(tmp_path):
    env = {**os.environ, "QGN_NATIVE_CACHE": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "model.allocation_window"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    built = Path(done.stdout.strip())
    assert built.parent == tmp_path and built.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [built.name]
    # Readable and loadable by every user: an image builds it as root for a non-root server
    # (the temporary file it is written through starts 0600).
    assert stat.S_IMODE(built.stat().st_mode) == 0o755


class EveryOpTracker(CpuAllocationTracker):
    """The obvious tracker, for reference: on every op, every CPU output whose storage is not
    an input's is counted."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            leaf.untyped_storage().data_ptr()
            for leaf in tree_leaves((args, kwargs))
            if isinstance(leaf, torch.Tensor) and leaf.device.type == "cpu"
        }
        for leaf in tree_leaves(out):
            if not isinstance(leaf, torch.Tensor) or leaf.device.type != "cpu":
                continue
            if leaf.untyped_storage().data_ptr() not in inputs:
                self._track(leaf.untyped_storage())
        return out


def test_the_fast_tracker_measures_what_the_obvious_one_does(monkeypatch):
    monkeypatch.setattr(memory, "windows_count", lambda device_type: False)
    model = qgn_tiny(num_classes=5).eval()
    generator = torch.Generator().manual_seed(4)
    image = torch.randint(0, 256, (70, 90, 3), dtype=torch.uint8, generator=generator)
    schemes = [All, PredictedComposite, lambda: Threshold(0.4), lambda: Budget(400_000)]
    fast = [model.predict(image, make()) for make in schemes]
    monkeypatch.setattr(memory, "CpuAllocationTracker", EveryOpTracker)
    obvious = [model.predict(image, make()) for make in schemes]
    for a, b in zip(fast, obvious, strict=True):
        assert a.peak_bytes == b.peak_bytes > 0
        assert a.phase_peaks == b.phase_peaks and a.phase_starts == b.phase_starts


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device (CI has none): checked where one is"
)
def test_on_cuda_the_window_reads_what_the_allocator_statistics_read():
    """One request alone: the per-request window and the device-wide statistics agree to the
    byte; a second thread's allocations stay out of the window."""
    device = torch.device("cuda")
    assert memory.measurement(device) == "allocation window"
    weight = torch.randn(16, 16, 3, 3, device=device)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with AllocationWindow(device) as alone:
        x = torch.randn(1, 16, 256, 256, device=device)
        torch.nn.functional.conv2d(x, weight, padding=1)
        torch.cuda.synchronize(device)
    assert alone.peak_bytes == torch.cuda.max_memory_allocated(device) - base
    assert alone.peak_bytes >= 2 * x.nbytes
    with AllocationWindow(device) as window:
        neighbour = threading.Thread(target=lambda: torch.empty(1 << 26, device=device))
        neighbour.start()
        neighbour.join()
        y = x * 2
    assert window.peak_bytes == window.live_bytes == y.nbytes
