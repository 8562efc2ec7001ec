import torch

from model.memory import MemoryProbe, measure


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
