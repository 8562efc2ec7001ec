"""The CPU image, run the hardened way (read-only, no capabilities, no new privileges, 3 GiB
of memory and no swap), checked over its published 127.0.0.1 port."""

from __future__ import annotations

import subprocess
import threading

import pytest

from model.scheme_request import MIB
from server.memory_limit import RESERVE_BYTES
from tests.container.conftest import (
    BIG_SIZE,
    Container,
    docker,
    model_info,
    run_container,
    street_png,
)

UID = 10001


def test_a_build_leaves_no_untagged_image_of_ours(image: str):
    """Each rebuild would otherwise keep the image and builder stage it replaced (~3 GB)."""
    assert docker("image", "inspect", "--format", "{{.Id}}", "qgn-serve-build:cpu")
    left = docker(
        "images", "--quiet", "--filter", "dangling=true", "--filter", "label=io.qgn-serve.stage"
    )
    assert left == ""


def test_runs_as_the_non_root_user_read_only(container: Container):
    assert container.exec("id", "-u") == str(UID)
    assert container.inspect("{{.Config.User}}") == f"{UID}:{UID}"
    assert container.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"
    touch = subprocess.run(
        ["docker", "exec", container.name, "touch", "/app/x"], capture_output=True, text=True
    )
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr
    assert container.inspect("{{.State.Health.Status}}") == "healthy"


def test_measures_with_the_allocation_window_and_sizes_its_budget_from_the_cgroup(container):
    info = model_info(container)
    assert info["memory_measurement"] == "allocation window"
    device = info["device_memory"]
    assert "cgroup limit 3072 MiB" in device["source"], device
    assert 1500 < device["mb"] < 3072 - 256, device
    container.exec("pip", "check")


@pytest.mark.parametrize(
    "query",
    ["scheme=all", "scheme=pc", "scheme=threshold&threshold=0.3", "scheme=budget&budget_mb=8"],
)
def test_every_scheme_segments_a_bundled_example(container: Container, query: str):
    response = container.segment(street_png(), query)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["scheme"] == query.split("&")[0].removeprefix("scheme=")
    assert body["stats"]["device"] == "cpu" and body["stats"]["peak_memory_bytes"] > 0
    if "budget_mb" in query:
        assert body["stats"]["peak_memory_bytes"] <= 8 * MIB


def test_the_largest_valid_request_is_answered_capped_and_the_server_lives(container, big_jpeg):
    """A 39.6 MP JPEG under `all` needs ~10 GiB uncapped: in 3 GiB it runs capped to what the
    device budget leaves beside its pixels, the process stays within what admission reserved
    plus the stated constant, nothing is killed, and the next request is served."""
    info = model_info(container)
    budget_bytes = info["device_memory"]["mb"] * MIB
    resident_before = container.resident_bytes()
    response = container.segment(big_jpeg, "scheme=all&format=png", "image/jpeg")
    assert response.status_code == 200, response.text
    width, height = BIG_SIZE
    cap_bytes = float(response.headers["X-QGN-Budget-Mb"]) * MIB  # `all`, capped
    assert response.headers["X-QGN-Scheme"] == "all"
    assert cap_bytes <= budget_bytes - 3 * width * height + MIB / 100
    peak = int(response.headers["X-QGN-Peak-Memory-Bytes"])
    assert peak <= cap_bytes
    rise = container.resident_bytes("VmHWM") - resident_before
    print(
        f"\n40 MP all: measured {peak / MIB:.0f} MiB, RSS rise {rise / MIB:.0f} MiB, "
        f"device budget {budget_bytes / MIB:.0f} MiB"
    )
    assert rise <= budget_bytes + RESERVE_BYTES
    assert container.inspect("{{.State.OOMKilled}}") == "false"
    assert container.inspect("{{.RestartCount}}") == "0"
    assert container.segment(street_png(), "scheme=pc").status_code == 200


def test_a_full_queue_of_the_largest_requests_is_served(container, big_jpeg):
    """Eight 39.6 MP uploads at once (the default queue): queued requests hold their
    compressed bytes, not their pixels, so the 3 GiB container answers them all."""
    results: list[int] = []

    def send():
        response = container.segment(big_jpeg, "scheme=pc&format=png", "image/jpeg")
        results.append(response.status_code)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=900)
    assert sorted(results) == [200] * 8, results
    assert container.inspect("{{.State.OOMKilled}}") == "false"
    assert container.inspect("{{.State.Running}}") == "true"


def test_docker_stop_answers_every_request_in_flight_and_exits_0(image):
    """`docker stop` (SIGTERM, 10 s of grace) with requests running and queued: every one is
    answered 200 and the server exits 0."""
    name = f"qgn-stop-{threading.get_native_id()}"
    with run_container(image, name) as container:
        results: list[int] = []

        def send():
            results.append(container.segment(street_png(), "scheme=pc").status_code)

        threads = [threading.Thread(target=send) for _ in range(4)]
        for thread in threads:
            thread.start()
        # One running and one queued at least: waiting for all four raced the first one's
        # answer on a loaded machine (it was done before the fourth arrived).
        container.wait_for_metric_at_least("qgn_inflight_requests", 2)
        docker("stop", name, timeout=60)
        for thread in threads:
            thread.join(timeout=60)
        assert results == [200] * 4, results
        assert container.inspect("{{.State.ExitCode}}") == "0"
        assert container.inspect("{{.State.OOMKilled}}") == "false"
