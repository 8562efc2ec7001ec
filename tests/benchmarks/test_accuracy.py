"""Issue 26's targets, read from one accuracy run's rows."""

import json

from benchmarks.accuracy import MIB, carried_peer_row, markdown, targets


def row(model, setting, height, miou, peak_mib):
    return {
        "model": model,
        "setting": setting,
        "height": height,
        "width": 2 * height,
        "miou": miou,
        "peak_bytes": round(peak_mib * MIB),
        "latency_s": 0.1,
    }


def verdicts(rows):
    return {t["target"]: t["met"] for t in targets(rows)}


def test_a_peer_is_matched_only_by_a_setting_four_times_cheaper():
    rows = [
        row("qgn", "pc", 512, 74.0, 5.0),
        row("qgn", "threshold=0.1", 512, 76.0, 11.0),
        row("qgn", "all", 512, 77.0, 240.0),
        row("peer", "trained", 512, 76.5, 40.0),  # 0.25× its peak: 10 MiB, only pc fits
    ]
    assert not verdicts(rows)["QGN within 1 point of peer at ≤ 0.25× its peak, 512×1024"]
    rows[-1]["peak_bytes"] = 44 * MIB  # now τ 0.1 (11 MiB) fits, 0.5 below the peer
    assert verdicts(rows)["QGN within 1 point of peer at ≤ 0.25× its peak, 512×1024"]


def test_full_resolution_and_the_fine_threshold_targets():
    rows = [
        row("qgn", "pc", 512, 74.0, 5.4),
        row("qgn", "pc", 1024, 73.1, 15.1),
        row("qgn", "threshold=0.1", 512, 76.2, 12.0),
        row("qgn", "all", 512, 77.0, 241.8),
        row("qgn", "threshold=0.1", 1024, 75.0, 50.0),
        row("qgn", "all", 1024, 75.5, 967.2),
    ]
    found = verdicts(rows)
    assert found["pc at 1024×2048 within 1 point of 512×1024"]
    assert found["τ 0.1 within 1 point of all at ≤ 0.05× its peak, 512×1024"]
    assert not found["τ 0.1 within 1 point of all at ≤ 0.05× its peak, 1024×2048"]  # 50 > 48.4
    rows[1]["miou"] = 72.9
    assert not verdicts(rows)["pc at 1024×2048 within 1 point of 512×1024"]


def test_the_fine_threshold_target_is_also_read_on_the_mean_peak():
    """The largest scene's peak over 0.05× `all`'s, the mean under it: one missed, one met."""
    rows = [
        row("qgn", "threshold=0.1", 512, 76.2, 5.56) | {"peak_bytes_mean": 4.4 * MIB},
        row("qgn", "all", 512, 76.0, 95.7) | {"peak_bytes_mean": 95.7 * MIB},
    ]
    found = verdicts(rows)
    size = "τ 0.1 within 1 point of all at ≤ 0.05× its peak, 512×1024"
    assert not found[size] and found[f"{size}, mean peak over the scenes"]
    rows[0]["miou"] = 74.9  # more than a point below: neither
    assert not any(verdicts(rows).values())


def test_a_carried_peer_row_names_the_report_it_came_from(tmp_path):
    earlier = tmp_path / "accuracy-m-2026-12-01.json"
    rows = [row("lraspp", "step 5750", 512, 72.13, 86.0), row("qgn", "pc", 512, 79.0, 5.0)]
    earlier.write_text(json.dumps({"rows": rows}))
    carried = carried_peer_row(earlier, "lraspp", 512, 1024)
    assert carried == rows[0] | {"carried_from": earlier.name}
    assert carried_peer_row(earlier, "lraspp", 1024, 2048) is None
    assert carried_peer_row(earlier, "dense-twin", 512, 1024) is None
    table = markdown({"machine": "m", "date": "d", "setup": "", "rows": [carried], "targets": []})
    assert "| lraspp | step 5750 (from accuracy-m-2026-12-01.json) | 512×1024 | 72.13 |" in table
    assert "| 86.0 |  | 0.1 |" in table  # no mean peak in that report
