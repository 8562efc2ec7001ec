"""The Open Inference Protocol (V2) routes through the ASGI app: metadata, health, infer with
binary and JSON bodies, the same masks as `/v1/segment`, every error in the V2 form, metrics."""

from __future__ import annotations

import base64
import io
import json
import re
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from model.quadtree import leaves_to_dense
from server.settings import Settings
from tests.server.conftest import encode, png_header_only, scene_image, started

MODEL = "/v2/models/qgn-test"
HEADER_LENGTH = "Inference-Header-Content-Length"
SCHEMES = {
    "all": {"scheme": "all"},
    "pc": {"scheme": "pc"},
    "threshold": {"scheme": "threshold", "threshold": 0.3},
    "budget": {"scheme": "budget", "budget_mb": 4},
}


def infer_body(
    image: bytes | np.ndarray,
    parameters: dict | None = None,
    binary: bool = True,
    outputs: list[dict] | None = None,
    request_id: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A V2 infer request: encoded bytes as BYTES [1] or pixels as UINT8 [H, W, 3], sent as
    binary data or in the JSON (base64 for BYTES); every output binary when `binary`."""
    if isinstance(image, bytes):
        tensor = {"name": "image", "datatype": "BYTES", "shape": [1]}
        raw = struct.pack("<I", len(image)) + image
        in_json = {
            "parameters": {"content_type": "base64"},
            "data": [base64.b64encode(image).decode()],
        }
    else:
        tensor = {"name": "image", "datatype": "UINT8", "shape": list(image.shape)}
        raw = image.tobytes()
        in_json = {"data": image.tolist()}
    if binary:
        tensor["parameters"] = {"binary_data_size": len(raw)}
    else:
        tensor |= in_json
    request = {
        "inputs": [tensor],
        "parameters": {**(parameters or {}), "binary_data_output": binary},
    }
    if outputs is not None:
        request["outputs"] = outputs
    if request_id is not None:
        request["id"] = request_id
    header = json.dumps(request).encode()
    if not binary:
        return header, {"content-type": "application/json"}
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return header + raw, headers


def outputs_of(content: bytes, headers) -> tuple[dict, dict[str, np.ndarray]]:
    """The JSON part of a response and its outputs as arrays, from binary data or JSON."""
    length = int(headers.get(HEADER_LENGTH, len(content)))
    head = json.loads(content[:length])
    arrays, offset = {}, length
    for output in head["outputs"]:
        dtype = {"UINT8": np.uint8, "INT32": "<i4"}[output["datatype"]]
        if "data" in output:
            array = np.asarray(output["data"], dtype=dtype)
        else:
            size = output["parameters"]["binary_data_size"]
            array = np.frombuffer(content[offset : offset + size], dtype=dtype)
            offset += size
        arrays[output["name"]] = array.reshape(output["shape"])
    assert offset == len(content)
    return head, arrays


def v1_mask(client, png: bytes, parameters: dict) -> np.ndarray:
    query = "&".join(f"{key}={value}" for key, value in parameters.items())
    response = client.post(
        f"/v1/segment?{query}&format=png", content=png, headers={"content-type": "image/png"}
    )
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def infer(client, body_and_headers: tuple[bytes, dict], path: str = MODEL):
    body, headers = body_and_headers
    return client.post(f"{path}/infer", content=body, headers=headers)


def v2_error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return body["error"]


def replace_json(body_and_headers: tuple[bytes, dict], edit) -> tuple[bytes, dict]:
    """The request with its JSON part changed by `edit` (the binary data kept)."""
    body, headers = body_and_headers
    length = int(headers.get(HEADER_LENGTH, len(body)))
    request = json.loads(body[:length])
    edit(request)
    header = json.dumps(request).encode()
    if HEADER_LENGTH in headers:
        headers = {**headers, HEADER_LENGTH: str(len(header))}
    return header + body[length:], headers


def tensor(edit):
    return lambda request: edit(request["inputs"][0])


def test_server_and_model_metadata_and_health(client):
    v1 = client.get("/v1/model").json()
    assert client.get("/v2").json() == {
        "name": "qgn-serve",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data", "parameters"],
    }
    for path in ("/v2/health/live", "/v2/health/ready", f"{MODEL}/ready"):
        response = client.get(path)
        assert response.status_code == 200 and response.content == b"", path
    versioned = f"{MODEL}/versions/{v1['version']}"
    assert client.get(f"{versioned}/ready").status_code == 200
    metadata = client.get(MODEL).json()
    assert metadata == client.get(versioned).json()
    assert metadata["name"] == v1["name"] and metadata["versions"] == [v1["version"]]
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [1]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in metadata["outputs"]] == [
        ("mask", "UINT8", [-1, -1]),
        ("leaves", "INT32", [-1, 4]),
    ]
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v2", "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"} <= set(
        paths
    )
    assert "422" not in paths["/v2/models/{name}/infer"]["post"]["responses"]


@pytest.mark.parametrize(
    "path",
    [
        "/v2/models/other",
        "/v2/models/other/ready",
        f"{MODEL}/versions/9",
        f"{MODEL}/versions/9/ready",
    ],
)
def test_unknown_model_or_version_is_404(client, path):
    v2_error(client.get(path), 404)
    body = infer_body(encode(scene_image()))
    v2_error(infer(client, body, path.removesuffix("/ready")), 404)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_encoding_gives_v1s_mask_byte_for_byte(client, scheme):
    image = scene_image(96, 160, seed=3)
    png = encode(image)
    expected = v1_mask(client, png, SCHEMES[scheme])
    for sent, binary in ((png, True), (png, False), (image, True), (image, False)):
        response = infer(client, infer_body(sent, SCHEMES[scheme], binary, request_id="r-7"))
        assert response.status_code == 200, response.text
        kind = "application/octet-stream" if binary else "application/json"
        assert response.headers["content-type"] == kind
        head, arrays = outputs_of(response.content, response.headers)
        assert head["model_name"] == "qgn-test" and head["model_version"] == "0.0.1"
        assert head["id"] == "r-7"
        mask = arrays["mask"]
        assert mask.dtype == np.uint8 and mask.tobytes() == expected.tobytes()
        leaves = torch.from_numpy(arrays["leaves"].astype(np.int64))
        assert np.array_equal(leaves_to_dense(leaves, 96, 160).numpy(), mask)
        parameters = head["parameters"]
        assert parameters["scheme"] == scheme and parameters["device"] == "cpu"
        assert parameters["capped"] is False and parameters["degraded"] is False
        assert parameters["peak_memory_bytes"] > 0 and parameters["latency_ms"] > 0
        assert all(isinstance(value, str | int | float | bool) for value in parameters.values())
        assert re.fullmatch(r"\d+(,\d+){5}", parameters["active_sites"])
        if scheme == "budget":
            assert parameters["budget_mb"] == 4 and parameters["peak_memory_bytes"] <= 4 * 2**20
        if scheme == "threshold":
            assert parameters["threshold"] == 0.3


def test_outputs_can_be_chosen_and_mixed(client):
    png = encode(scene_image())
    outputs = [{"name": "leaves", "parameters": {"binary_data": True}}, {"name": "mask"}]
    mixed = replace_json(
        infer_body(png, outputs=outputs),
        lambda request: request["parameters"].update(binary_data_output=False),
    )
    response = infer(client, mixed)
    head, arrays = outputs_of(response.content, response.headers)
    assert [output["name"] for output in head["outputs"]] == ["leaves", "mask"]
    assert "parameters" in head["outputs"][0] and "data" in head["outputs"][1]
    assert arrays["leaves"].shape[1] == 4
    only_mask = infer(client, infer_body(png, binary=False, outputs=[{"name": "mask"}]))
    assert [output["name"] for output in only_mask.json()["outputs"]] == ["mask"]
    assert "id" not in only_mask.json()


def wrong_element_length() -> tuple[bytes, dict]:
    """BYTES binary data whose 4-byte length prefix does not match the bytes after it."""
    body, headers = infer_body(PNG)
    start = int(headers[HEADER_LENGTH])
    return body[:start] + struct.pack("<I", len(PNG) + 7) + body[start + 4 :], headers


PNG = encode(scene_image())
PIXELS = scene_image(32, 48)
BAD = {
    "not json": (b"{nonsense", {}),
    "no inputs": replace_json(infer_body(PNG), lambda r: r.pop("inputs")),
    "two inputs": replace_json(
        infer_body(PNG, binary=False), lambda r: r["inputs"].append(r["inputs"][0])
    ),
    "input name": replace_json(infer_body(PNG), tensor(lambda t: t.update(name="picture"))),
    "datatype": replace_json(infer_body(PNG), tensor(lambda t: t.update(datatype="FP32"))),
    "BYTES shape": replace_json(infer_body(PNG), tensor(lambda t: t.update(shape=[2]))),
    "UINT8 shape": replace_json(infer_body(PIXELS), tensor(lambda t: t.update(shape=[32, 16, 9]))),
    "size vs bytes": replace_json(
        infer_body(PNG), tensor(lambda t: t["parameters"].update(binary_data_size=5))
    ),
    "bytes, no size": replace_json(infer_body(PNG), tensor(lambda t: t.pop("parameters"))),
    "no data": replace_json(infer_body(PNG, binary=False), tensor(lambda t: t.pop("data"))),
    "element length": wrong_element_length(),
    "header past body": (infer_body(PNG)[0], {HEADER_LENGTH: "999999"}),
    "header not a number": (infer_body(PNG)[0], {HEADER_LENGTH: "ten"}),
    "no base64 flag": replace_json(
        infer_body(PNG, binary=False), tensor(lambda t: t.pop("parameters"))
    ),
    "bad base64": replace_json(
        infer_body(PNG, binary=False), tensor(lambda t: t.update(data=["%%"]))
    ),
    "not an image": infer_body(b"this is text, not a png"),
    "empty image": infer_body(b""),
    "TIFF": infer_body(encode(scene_image(), "TIFF")),
    "pixel over 255": replace_json(
        infer_body(PIXELS, binary=False), tensor(lambda t: t["data"][0][0].__setitem__(0, 256))
    ),
    "pixel count": replace_json(
        infer_body(PIXELS, binary=False), tensor(lambda t: t["data"].pop())
    ),
    "ragged pixels": replace_json(
        infer_body(PIXELS, binary=False), tensor(lambda t: t["data"][0].pop())
    ),
    "float pixels": replace_json(
        infer_body(PIXELS, binary=False), tensor(lambda t: t.update(data=[0.5] * (32 * 48 * 3)))
    ),
    "output name": infer_body(PNG, outputs=[{"name": "logits"}]),
    "output twice": infer_body(PNG, outputs=[{"name": "mask"}, {"name": "mask"}]),
    "oracle": infer_body(PNG, {"scheme": "oracle"}),
    "unknown scheme": infer_body(PNG, {"scheme": "dense"}),
    "threshold missing": infer_body(PNG, {"scheme": "threshold"}),
    "threshold range": infer_body(PNG, {"scheme": "threshold", "threshold": 1.5}),
    "threshold string": infer_body(PNG, {"scheme": "threshold", "threshold": "0.3"}),
    "threshold bool": infer_body(PNG, {"scheme": "threshold", "threshold": True}),
    "threshold with pc": infer_body(PNG, {"scheme": "pc", "threshold": 0.3}),
    "budget missing": infer_body(PNG, {"scheme": "budget"}),
    "budget zero": infer_body(PNG, {"scheme": "budget", "budget_mb": 0}),
    "budget with all": infer_body(PNG, {"scheme": "all", "budget_mb": 5}),
    "budget below minimum": infer_body(PNG, {"scheme": "budget", "budget_mb": 0.01}),
    "compressed": (infer_body(PNG)[0], {**infer_body(PNG)[1], "content-encoding": "gzip"}),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_tensors_images_and_parameters_are_400(client, case):
    v2_error(infer(client, BAD[case]), 400)


def test_the_minimum_budget_is_named_and_v1_keeps_its_422(client):
    message = v2_error(infer(client, BAD["budget below minimum"]), 400)
    assert "smallest feasible budget" in message and "MiB" in message
    v1 = client.post(
        "/v1/segment?scheme=budget&budget_mb=0.01",
        content=PNG,
        headers={"content-type": "image/png"},
    )
    assert v1.status_code == 422 and v1.json()["error"]["code"] == "budget_too_small"


def test_limits_are_413_before_decoding(client, monkeypatch):
    import server.images

    def no_decoding(*_):
        raise AssertionError("decoded past a limit")

    monkeypatch.setattr(server.images, "decode_rgb", no_decoding)
    assert "pixels" in v2_error(infer(client, infer_body(png_header_only(100_000, 100_000))), 413)
    huge = infer_body(np.zeros((1, 1, 3), dtype=np.uint8))
    wide = replace_json(huge, tensor(lambda t: t.update(shape=[3000, 3000, 3])))
    assert "9000000 pixels" in v2_error(infer(client, wide), 413)  # 5 megapixels here
    noise = np.random.default_rng(0).integers(0, 256, (1100, 1100, 3), dtype=np.uint8)
    v2_error(infer(client, infer_body(noise)), 413)  # 2 MiB upload limit here


def test_a_full_queue_a_loading_model_and_out_of_memory(tiny_weights, monkeypatch):
    with started(Settings(weights=tiny_weights, device="cpu", queue_size=1)) as client:
        engine = client.app.state.engine
        engine.admit()
        full = infer(client, infer_body(PNG))
        assert "queued or running" in v2_error(full, 503)
        assert int(full.headers["retry-after"]) >= 1
        engine._release()
        engine.metrics.queue_depth.dec()

        engine.ready = False
        for path in ("/v2/health/ready", f"{MODEL}/ready"):
            assert client.get(path).status_code == 503
        loading = infer(client, infer_body(PNG))
        assert "loading" in v2_error(loading, 503) and int(loading.headers["retry-after"]) >= 1
        assert client.get("/v2/health/live").status_code == 200
        engine.ready = True

        failures = {"left": 2}
        real_predict = engine.model.predict

        def predict(image, scheme):
            if failures["left"] > 0:
                failures["left"] -= 1
                raise torch.OutOfMemoryError("simulated: the device is full")
            return real_predict(image, scheme)

        monkeypatch.setattr(engine.model, "predict", predict)
        assert "out of memory" in v2_error(infer(client, infer_body(PNG)), 507)
        failures["left"] = 1
        degraded = infer(client, infer_body(PNG, {"scheme": "all"}, binary=False))
        assert degraded.json()["parameters"]["degraded"] is True
        text = client.get("/metrics").text
        assert 'qgn_degraded_total{api="v2",scheme="all"} 1.0' in text
        assert 'qgn_requests_total{api="v2",code="507",scheme="pc"} 1.0' in text


def sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_metrics_tell_the_apis_apart(client):
    ok_v2 = 'qgn_requests_total{api="v2",code="200",scheme="pc"}'
    ok_v1 = 'qgn_requests_total{api="v1",code="200",scheme="pc"}'
    bad_v2 = 'qgn_requests_total{api="v2",code="400",scheme="none"}'
    lost_v2 = 'qgn_requests_total{api="v2",code="404",scheme="none"}'
    counted = [ok_v2, ok_v1, bad_v2, lost_v2]
    before = client.get("/metrics").text
    infer(client, infer_body(PNG))
    infer(client, infer_body(PNG, binary=False), f"{MODEL}/versions/0.0.1")
    client.post("/v1/segment?scheme=pc", content=PNG, headers={"content-type": "image/png"})
    infer(client, (b"{", {}))
    infer(client, infer_body(PNG), "/v2/models/other")
    for path in ("/v2", "/v2/health/ready", MODEL, f"{MODEL}/ready"):
        client.get(path)  # metadata and health are not counted
    after = client.get("/metrics").text
    assert [sample(after, s) - sample(before, s) for s in counted] == [2, 1, 1, 1]
    for name in (
        'qgn_request_duration_seconds_count{api="v2",scheme="pc"}',
        'qgn_inference_duration_seconds_count{api="v2",scheme="pc"}',
        'qgn_inference_peak_memory_bytes_count{api="v2",scheme="pc"}',
        'qgn_active_site_fraction_count{api="v2",level="5"}',
    ):
        assert sample(after, name) - sample(before, name) == 2, name
    assert sample(after, "qgn_inflight_requests") == 0 and sample(after, "qgn_queue_depth") == 0
    assert 'qgn_budget_capped_total{api="v2",scheme="all"} 0.0' in after


def test_unknown_v2_routes_answer_in_the_v2_form(client):
    v2_error(client.get("/v2/nowhere"), 404)
    v2_error(client.get(f"{MODEL}/infer"), 405)
