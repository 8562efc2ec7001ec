"""Queue, timeouts, device faults and settings: what keeps the server up under pressure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.weights import WeightsError, load_weights
from server.errors import ApiError
from server.settings import Settings, SettingsError
from tests.server.conftest import encode, scene_image, started

PNG = {"content-type": "image/png"}
QGN = str(Path(sys.executable).with_name("qgn"))


def test_a_full_queue_refuses_with_retry_after(tiny_weights):
    with started(Settings(weights=tiny_weights, device="cpu", queue_size=2)) as client:
        engine = client.app.state.engine
        engine.admit()
        engine.admit()
        with pytest.raises(ApiError) as refused:
            engine.admit()
        assert refused.value.status == 503
        assert int(refused.value.headers["Retry-After"]) >= 1
        response = client.post("/v1/segment", content=encode(scene_image()), headers=PNG)
        assert response.status_code == 503 and response.json()["error"]["code"] == "queue_full"
        assert int(response.headers["retry-after"]) >= 1
        engine._release()
        engine._release()
        engine.metrics.queue_depth.dec(2)
        assert (
            client.post("/v1/segment", content=encode(scene_image()), headers=PNG).status_code
            == 200
        )


def test_a_request_past_its_timeout_gets_504_and_frees_its_place(tiny_weights):
    with started(Settings(weights=tiny_weights, device="cpu", request_timeout_s=1e-4)) as client:
        response = client.post(
            "/v1/segment?scheme=all", content=encode(scene_image(256, 256)), headers=PNG
        )
        assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
        engine = client.app.state.engine
        engine.shutdown()  # drains: the device finishes the request that timed out
        assert engine._admitted == 0 and engine.queue.admitted_bytes == 0


def test_out_of_memory_retries_under_a_tighter_budget_then_gives_507(tiny_weights, monkeypatch):
    with started(Settings(weights=tiny_weights, device="cpu")) as client:
        model = client.app.state.engine.model
        real_predict = model.predict
        failures = {"left": 1}

        def predict(image, scheme):
            if failures["left"] > 0:
                failures["left"] -= 1
                raise torch.OutOfMemoryError("simulated: the device is full")
            return real_predict(image, scheme)

        monkeypatch.setattr(model, "predict", predict)
        body = client.post(
            "/v1/segment?scheme=all", content=encode(scene_image()), headers=PNG
        ).json()
        assert body["degraded"] is True and body["scheme"] == "budget" and body["budget_mb"] > 0
        assert body["stats"]["peak_memory_bytes"] <= body["budget_mb"] * 2**20
        assert 'qgn_degraded_total{api="v1",scheme="all"} 1.0' in client.get("/metrics").text

        failures["left"] = 2
        response = client.post("/v1/segment?scheme=pc", content=encode(scene_image()), headers=PNG)
        assert response.status_code == 507 and response.json()["error"]["code"] == "out_of_memory"
        assert client.get("/healthz").status_code == 200
        ok = client.post("/v1/segment?scheme=pc", content=encode(scene_image()), headers=PNG)
        assert ok.status_code == 200  # the queue is not stuck


@pytest.mark.parametrize(
    "env,message",
    [
        ({"QGN_DEVICE": "tpu"}, "QGN_DEVICE"),
        ({"QGN_DEFAULT_SCHEME": "threshold"}, "QGN_DEFAULT_SCHEME"),
        ({"QGN_MAX_UPLOAD_MB": "lots"}, "QGN_MAX_UPLOAD_MB must be a number"),
        ({"QGN_MAX_PIXELS": "-1"}, "QGN_MAX_PIXELS must be a positive number"),
        ({"QGN_QUEUE_SIZE": "0"}, "QGN_QUEUE_SIZE"),
        ({"QGN_MEMORY_BUDGET_MB": "nan"}, "QGN_MEMORY_BUDGET_MB"),
        ({"QGN_REQUEST_TIMEOUT_S": "0"}, "QGN_REQUEST_TIMEOUT_S"),
        ({"QGN_WORKERS": "0"}, "QGN_WORKERS"),
        ({"QGN_WORKERS": "two"}, "QGN_WORKERS must be an integer"),
        ({"QGN_TORCH_THREADS": "-2"}, "QGN_TORCH_THREADS"),
        ({"QGN_DEVICE_MEMORY_MB": "inf"}, "QGN_DEVICE_MEMORY_MB"),
    ],
)
def test_bad_settings_are_named(env, message):
    with pytest.raises(SettingsError, match=message):
        Settings.from_env(env)


def test_settings_defaults_and_values():
    settings = Settings.from_env({"QGN_MEMORY_BUDGET_MB": "512", "QGN_QUEUE_SIZE": "3"})
    assert settings.memory_budget_mb == 512.0 and settings.queue_size == 3
    assert settings.default_scheme == "pc" and settings.max_upload_bytes == 25 * 2**20


def test_serve_refuses_bad_settings_and_bad_weights(tmp_path, tiny_weights):
    bad_env = subprocess.run(
        [QGN, "serve", "--port", "1"],
        env={"QGN_QUEUE_SIZE": "many", "PATH": ""},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad_env.returncode == 2 and "QGN_QUEUE_SIZE must be an integer" in bad_env.stderr

    corrupt = tmp_path / "tiny.safetensors"
    corrupt.write_bytes(tiny_weights.read_bytes()[:-8] + b"\0" * 8)
    corrupt.with_suffix(".json").write_text(tiny_weights.with_suffix(".json").read_text())
    with pytest.raises(WeightsError, match="sha256"):
        load_weights(corrupt)
    run = subprocess.run(
        [QGN, "serve", "--port", "0"],
        env={"QGN_WEIGHTS": str(corrupt), "QGN_DEVICE": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert "sha256" in run.stderr and "corrupt" in run.stderr
