"""Device and start-up faults on the real process: an out-of-memory error is retried under a
tighter budget (200, degraded) or answered 507, never a crash or a stuck queue; weights that
do not fit their card stop start-up with a message that says so."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from model.weights import WeightsError, card_path, load_weights
from tests.reliability.conftest import healthy, metric, start_server
from tests.server.conftest import encode, scene_image
from tests.server.test_e2e import QGN

pytestmark = pytest.mark.reliability

PNG = {"content-type": "image/png"}


def test_injected_out_of_memory_degrades_or_gives_507_and_the_queue_moves_on(
    weights, tmp_path, summary
):
    # Three failures: the first request fails twice (507), the second once (200, degraded).
    server = start_server(weights, tmp_path / "server.log", QGN_FAULT_INJECT_OOM="3")
    try:
        assert "QGN_FAULT_INJECT_OOM=3" in server.log.read_text()  # warned at start
        image = encode(scene_image(96, 128, seed=3))

        failed = server.http.post("/v1/segment?scheme=pc", content=image, headers=PNG)
        assert failed.status_code == 507, failed.text
        assert failed.json()["error"]["code"] == "out_of_memory"
        assert healthy(server)

        degraded = server.http.post("/v1/segment?scheme=all", content=image, headers=PNG)
        assert degraded.status_code == 200, degraded.text
        body = degraded.json()
        assert body["degraded"] is True and body["scheme"] == "budget"
        assert 0 < body["stats"]["peak_memory_bytes"] <= body["budget_mb"] * 2**20

        normal = server.http.post("/v1/segment?scheme=all", content=image, headers=PNG)
        assert normal.status_code == 200 and normal.json()["degraded"] is False

        text = server.http.get("/metrics").text
        assert metric(text, 'qgn_degraded_total{api="v1",scheme="all"}') == 1
        assert metric(text, 'qgn_requests_total{api="v1",code="507",scheme="pc"}') == 1
        assert metric(text, 'qgn_requests_total{api="v1",code="200",scheme="all"}') == 2
        assert metric(text, "qgn_queue_depth") == 0
        assert metric(text, "qgn_inflight_requests") == 0
        assert "out of memory" in server.log.read_text()
    finally:
        assert server.stop() in (0, -15)
    summary["faults"] = {"oom_injected": 3, "codes": "507, 200 degraded, 200"}


def mismatched_copy(weights, folder, edit) -> object:
    """The weights with a copy of their card that `edit` changed (the sha256 still matches)."""
    folder.mkdir()
    copy = folder / weights.name
    shutil.copy(weights, copy)
    card = json.loads(card_path(weights).read_text())
    edit(card)
    card_path(copy).write_text(json.dumps(card))
    return copy


def wider_decoder(card: dict) -> None:
    card["config"]["decoder_widths"] = [width * 2 for width in card["config"]["decoder_widths"]]


def extra_class(card: dict) -> None:
    card["config"]["num_classes"] += 1
    card["classes"].append("ghost")


def fewer_class_names(card: dict) -> None:
    card["classes"] = card["classes"][:-1]


def unknown_config_key(card: dict) -> None:
    card["config"]["attention_heads"] = 4


@pytest.mark.parametrize(
    "edit,message",
    [
        (wider_decoder, "does not fit its card"),
        (extra_class, "does not fit its card"),
        (fewer_class_names, "card lists"),
        (unknown_config_key, "does not fit its card"),
    ],
)
def test_a_card_that_does_not_fit_the_tensors_is_refused(weights, tmp_path, edit, message):
    copy = mismatched_copy(weights, tmp_path / "mismatched", edit)
    with pytest.raises(WeightsError, match=message):
        load_weights(copy)


def test_serve_stops_on_a_mismatched_card_with_a_clear_message(weights, tmp_path):
    copy = mismatched_copy(weights, tmp_path / "mismatched", wider_decoder)
    run = subprocess.run(
        [QGN, "serve", "--host", "127.0.0.1", "--port", "0"],
        env={"QGN_WEIGHTS": str(copy), "QGN_DEVICE": "cpu", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode != 0
    assert "does not fit its card" in run.stderr and str(copy) in run.stderr
    assert "Application startup failed" in run.stderr
