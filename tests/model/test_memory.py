import torch
from torch.utils._pytree import tree_leaves

from model import memory
from model.memory import CpuAllocationTracker, MemoryProbe, measure
from model.qgn import qgn_tiny
from model.schemes import All, Budget, PredictedComposite, Threshold


def test_tracker_counts_live_storages_exactly():
    with measure() as probe:
        a = torch.zeros(1000)  # 4000 bytes
        b = torch.ones(2000)  # 8000, live 12000
        del a  # live 8000
        c = b.view(2, 1000) * 2  # 8000 more, live 16000; a view costs nothing
        c.add_(1)  # in place: nothing new
        assert probe.live_bytes() == 16000
        del b, c
        assert probe.live_bytes() == 0
    assert probe.peak_bytes == 16000


def test_tensors_from_before_the_window_do_not_count():
    weights = torch.randn(10_000)
    with measure() as probe:
        out = weights * 2
    assert probe.peak_bytes == out.nbytes


def test_phases_record_their_own_peak_and_start():
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


def test_same_work_same_peak():
    def work():
        with torch.inference_mode(), measure() as probe:
            x = torch.randn(1, 8, 64, 64)
            torch.nn.functional.conv2d(x, torch.randn(8, 8, 3, 3), padding=1)
        return probe.peak_bytes

    assert work() == work() == 2 * 8 * 64 * 64 * 4 + 8 * 8 * 9 * 4


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
