"""The auto benchmark's report: figures computed from the answers, not typed in."""

from __future__ import annotations

import numpy as np

from benchmarks import auto
from tests.server.conftest import TINY_TABLES


def row(scene: int, setting: str | None, peak: int, predicted: float, finished: float) -> dict:
    answer = {
        "status": 200,
        "round_trip_s": finished,
        "finished_s": finished,
        "scene": scene,
        "scheme": "pc",
        "latency_ms": 100.0,
        "peak_bytes": peak,
        "mask": np.zeros((4, 4), np.uint8),
    }
    if setting:
        answer |= {
            "setting": setting,
            "reason": "best" if setting == "all" else "memory",
            "predicted_peak_bytes": predicted,
            "predicted_latency_ms": 200.0,
        }
    return answer


def test_summary_counts_settings_prediction_hits_and_scores_the_masks():
    labels = [np.zeros((4, 4), np.int64), np.ones((4, 4), np.int64)]
    bodies = [(b"", label) for label in labels]
    rows = [row(0, "all", 10, 12, 1.0), row(1, "pc", 30, 20, 2.0), row(0, "pc", 5, 8, 3.0)]
    rows.append({"status": 503, "round_trip_s": 0.1, "finished_s": 0.1, "scene": 1})
    summary = auto.summarise({"query": "scheme=auto", "wall_s": 4.0, "rows": rows}, bodies, 2)
    assert summary["statuses"] == {"200": 3, "503": 1}
    assert summary["throughput_rps"] == 0.75
    assert summary["settings"] == {"all": 1, "pc": 2}
    assert summary["reasons"] == {"best": 1, "memory": 2}
    assert summary["peak_within_prediction"] == "2/3"
    assert summary["latency_measured_over_predicted"]["median"] == 0.5
    # Class 0 predicted everywhere: right on scene 0 twice, wrong on scene 1.
    assert summary["miou"] == round(100 * (32 / 48) / 2, 2)
    assert [t[1] for t in summary["timeline"]] == ["all", "pc", "pc"]


def test_the_best_setting_is_the_cards_most_accurate_at_the_size():
    card = {"evaluation": {"tables": {"1024x2048": TINY_TABLES["96x160"]}}}
    assert auto.best_setting(card) == "all"
