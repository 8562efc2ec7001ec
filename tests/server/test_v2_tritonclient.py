"""Conformance: tritonclient (Triton's HTTP client, from PyPI) against a real `qgn serve` on
loopback. Health, metadata, infer with binary and with JSON bodies under every scheme, masks
byte for byte those of `/v1/segment`, and each error the V2 routes promise.

tritonclient raises `InferenceServerException` without the response headers, so the 503's
`Retry-After` is read from the same V2 request sent with httpx.
"""

from __future__ import annotations

import base64
import io
import re
import threading
from collections.abc import Callable

import numpy as np
import pytest
import torch
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from model.quadtree import leaves_to_dense
from tests.server.conftest import encode, png_header_only, scene_image
from tests.server.test_e2e import RunningServer
from tests.server.test_v2 import SCHEMES, infer_body, sample

NAME, VERSION = "qgn-test", "0.0.1"
APIS = ("v1", "v2")
PNG = {"content-type": "image/png"}
# Small limits, so that going past them is cheap; one torch thread on a shared box.
ENV = {"QGN_MAX_UPLOAD_MB": "2", "QGN_MAX_PIXELS": "5000000", "OMP_NUM_THREADS": "1"}


class Served:
    """A `qgn serve` process and a tritonclient talking to it; `close()` stops both."""

    def __init__(self, weights, log, **env: str):
        self.server = RunningServer(weights, log, **{**ENV, **env})
        self.triton = triton.InferenceServerClient(
            url=f"127.0.0.1:{self.server.port}", connection_timeout=60, network_timeout=120
        )

    def close(self) -> None:
        self.triton.close()
        assert self.server.stop() in (0, -15), self.server.log.read_text()[-3000:]


@pytest.fixture(scope="module")
def served(tiny_weights, tmp_path_factory):
    running = Served(tiny_weights, tmp_path_factory.mktemp("v2-server") / "server.log")
    yield running
    running.close()


def image_input(image: bytes | np.ndarray, binary: bool = True) -> triton.InferInput:
    """An encoded image as BYTES [1], or pixels as UINT8 [H, W, 3]."""
    if isinstance(image, bytes):
        tensor = triton.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([image], dtype=np.object_), binary_data=binary)
    else:
        tensor = triton.InferInput("image", list(image.shape), "UINT8")
        tensor.set_data_from_numpy(image, binary_data=binary)
    return tensor


def refusal(call: Callable[[], object]) -> tuple[int, str]:
    """The status and message of the error a tritonclient call raises."""
    with pytest.raises(InferenceServerException) as raised:
        call()
    return int(raised.value.status()), raised.value.message()


def test_health_and_metadata(served):
    client, v1 = served.triton, served.server.http.get("/v1/model").json()
    assert (v1["name"], v1["version"]) == (NAME, VERSION)
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "qgn-serve" and "binary_tensor_data" in metadata["extensions"]
    model = client.get_model_metadata(NAME)
    assert model == client.get_model_metadata(NAME, VERSION)
    assert model["name"] == NAME and model["versions"] == [VERSION]
    assert {tensor["name"] for tensor in model["outputs"]} == {"mask", "leaves"}
    assert client.is_model_ready(NAME) and client.is_model_ready(NAME, VERSION)
    assert not client.is_model_ready("other") and not client.is_model_ready(NAME, "9")
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{NAME}/ready"):
        assert served.server.http.get(path).content == b""


def check(result: triton.InferResult, expected: np.ndarray, scheme: str, binary: bool) -> None:
    mask, leaves = result.as_numpy("mask"), result.as_numpy("leaves")
    assert mask.dtype == np.uint8 and mask.shape == expected.shape
    assert mask.tobytes() == expected.tobytes()  # /v1's mask, byte for byte
    assert leaves.dtype == np.int32 and leaves.shape[1] == 4
    painted = leaves_to_dense(torch.from_numpy(leaves.astype(np.int64)), *expected.shape)
    assert np.array_equal(painted.numpy(), mask)
    response = result.get_response()
    for output in response["outputs"]:
        assert ("data" in output) is not binary
    parameters = response["parameters"]
    assert parameters["scheme"] == scheme and parameters["device"] == "cpu"
    assert parameters["peak_memory_bytes"] > 0 and parameters["latency_ms"] > 0
    assert parameters["capped"] is False and parameters["degraded"] is False
    assert re.fullmatch(r"\d+(,\d+){5}", parameters["active_sites"])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_infer_binary_and_json_give_v1s_mask(served, scheme):
    client, http, parameters = served.triton, served.server.http, SCHEMES[scheme]
    image = scene_image(160, 224, seed=5)
    png = encode(image)
    counted = [f'qgn_requests_total{{api="{api}",code="200",scheme="{scheme}"}}' for api in APIS]
    before = http.get("/metrics").text

    query = "&".join(f"{key}={value}" for key, value in parameters.items())
    v1 = http.post(f"/v1/segment?{query}&format=png", content=png, headers=PNG)
    assert v1.status_code == 200, v1.text
    expected = np.asarray(Image.open(io.BytesIO(v1.content)))

    binary = client.infer(NAME, [image_input(png)], request_id="b-1", parameters=parameters)
    assert binary.get_response()["id"] == "b-1"
    check(binary, expected, scheme, binary=True)

    in_json = [triton.InferRequestedOutput(name, binary_data=False) for name in ("mask", "leaves")]
    pixels = client.infer(
        NAME, [image_input(image, binary=False)], VERSION, outputs=in_json, parameters=parameters
    )
    check(pixels, expected, scheme, binary=False)

    # tritonclient sends BYTES in JSON as UTF-8 text; an encoded image goes as base64 instead.
    request = {
        "id": "j-1",
        "parameters": parameters,
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "parameters": {"content_type": "base64"},
                "data": [base64.b64encode(png).decode()],
            }
        ],
    }
    response = http.post(f"/v2/models/{NAME}/infer", json=request)
    assert response.status_code == 200, response.text
    result = triton.InferResult.from_response_body(response.content)
    assert result.get_response()["id"] == "j-1"
    check(result, expected, scheme, binary=False)

    after = http.get("/metrics").text
    assert [sample(after, name) - sample(before, name) for name in counted] == [1, 3]


def test_errors_reach_the_client_in_the_v2_form(served):
    client, png = served.triton, encode(scene_image())

    def infer(image=png, name=NAME, version="", **parameters):
        return lambda: client.infer(name, [image_input(image)], version, parameters=parameters)

    assert refusal(lambda: client.get_model_metadata("other"))[0] == 404
    assert refusal(lambda: client.get_model_metadata(NAME, "9"))[0] == 404
    status, message = refusal(infer(name="other"))
    assert status == 404 and "unknown model 'other'" in message
    assert refusal(infer(version="9"))[0] == 404
    for bad in ({"scheme": "oracle"}, {"scheme": "threshold"}, {"scheme": "pc", "budget_mb": 5}):
        assert refusal(infer(**bad))[0] == 400, bad
    status, message = refusal(infer(scheme="budget", budget_mb=0.01))
    assert status == 400 and "smallest feasible budget" in message
    assert refusal(infer(b"this is text, not a png"))[0] == 400
    assert refusal(infer(np.zeros((8, 8, 4), dtype=np.uint8)))[0] == 400
    status, message = refusal(infer(png_header_only(10_000, 10_000)))
    assert status == 413 and "100000000 pixels" in message
    noise = np.random.default_rng(0).integers(0, 256, (1100, 1100, 3), dtype=np.uint8)
    assert refusal(infer(encode(noise)))[0] == 413  # over the 2 MiB upload limit
    assert served.triton.is_server_ready()


def held_queue(served: Served, probe: Callable[[], bool], tries: int = 50) -> bool:
    """Whether `probe` saw its V2 request refused while a slow `/v1` request (768×1024 under
    `all`: seconds on one thread) held the only place in the queue. The slow request is sent
    again while it is refused (a probe took the place first); probes leave it a moment."""
    big = encode(scene_image(768, 1024, seed=1))
    released = threading.Event()

    def hold() -> None:
        for _ in range(tries):
            response = served.server.http.post("/v1/segment?scheme=all", content=big, headers=PNG)
            if response.status_code != 503:
                break
        released.set()

    slow = threading.Thread(target=hold)
    slow.start()
    try:
        while not released.is_set():
            if probe():
                return True
            released.wait(0.1)
    finally:
        slow.join(timeout=300)
    return False


def test_a_full_queue_is_503_and_out_of_memory_507(tiny_weights, tmp_path):
    served = Served(
        tiny_weights, tmp_path / "server.log", QGN_QUEUE_SIZE="1", QGN_FAULT_INJECT_OOM="2"
    )
    try:
        png = encode(scene_image())

        def infer() -> triton.InferResult:
            return served.triton.infer(NAME, [image_input(png)])

        status, message = refusal(infer)  # the first inference fails, and so does its retry
        assert status == 507 and "out of memory" in message

        def refused_by_tritonclient() -> bool:
            try:
                infer()
            except InferenceServerException as error:
                assert error.status() == "503", error.message()
                assert "retry later" in error.message()
                return True
            return False

        def refused_with_retry_after() -> bool:
            body, headers = infer_body(png)
            response = served.server.http.post(
                f"/v2/models/{NAME}/infer", content=body, headers=headers
            )
            if response.status_code == 200:
                return False
            assert response.status_code == 503 and set(response.json()) == {"error"}
            assert int(response.headers["retry-after"]) >= 1
            return True

        assert held_queue(served, refused_by_tritonclient)
        assert held_queue(served, refused_with_retry_after)
        infer()  # the queue moves on
        text = served.server.http.get("/metrics").text
        assert sample(text, 'qgn_requests_total{api="v2",code="507",scheme="pc"}') == 1
        assert sample(text, 'qgn_requests_total{api="v2",code="503",scheme="pc"}') >= 2
    finally:
        served.close()
