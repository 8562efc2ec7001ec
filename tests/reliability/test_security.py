"""The defences SECURITY.md promises, tried: no pickle for weights, no request value reaching
the filesystem, and the upload and pixel limits holding before anything is decoded."""

from __future__ import annotations

import json
import pickle
import socket
import sys
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image
from safetensors import SafetensorError

from model.scheme_request import MIB
from model.weights import WeightsError, card_path, load_weights, sha256_of
from server.settings import Settings
from tests.reliability.conftest import healthy, memory_bytes
from tests.server.conftest import encode, png_header_only, scene_image, started

pytestmark = pytest.mark.reliability

PNG = {"content-type": "image/png"}


# --- Weights: safetensors only, never pickle ----------------------------------------------
def test_loading_weights_never_unpickles(weights, monkeypatch):
    def refuse(*_, **__):
        raise AssertionError("weights loading reached pickle")

    for module, name in (
        (pickle, "load"),
        (pickle, "loads"),
        (pickle, "Unpickler"),
        (torch, "load"),
        (torch.serialization, "load"),
    ):
        monkeypatch.setattr(module, name, refuse)
    model, card = load_weights(weights)
    assert card["weights_sha256"] == sha256_of(weights) and not model.training


class Exploit:
    """Unpickling this creates the file `target`: proof that a pickle ran."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_a_pickle_in_place_of_the_weights_is_never_run(weights, tmp_path):
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(Exploit(tmp_path / "pwned")))
    card = json.loads(card_path(weights).read_text())
    card["weights_sha256"] = sha256_of(evil)  # even with a card that vouches for it
    card_path(evil).write_text(json.dumps(card))
    # Refused by the safetensors parser; WeightsError would be the clearer message.
    with pytest.raises((WeightsError, SafetensorError)):
        load_weights(evil)
    assert not (tmp_path / "pwned").exists()


# --- No request value reaches the filesystem ---------------------------------------------
HOSTILE_VALUES = [
    "../../etc/passwd",
    "/etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "file:///etc/passwd",
    "~/.ssh/id_rsa",
    "C:\\Windows\\win.ini",
    "qgn-marker\x00.png",
    "%s%s%n%x",
    "qgn-marker" * 1000,
]
MARKERS = ("passwd", "id_rsa", "win.ini", "qgn-marker")
KNOWN_PARAMETERS = ("scheme", "threshold", "budget_mb", "format")
UNKNOWN_PARAMETERS = ("weights", "path", "file", "model")


class FileAccesses:
    """Paths with a hostile marker that the process tried to open or list (an audit hook)."""

    def __init__(self):
        self.recording = False
        self.seen: list[str] = []
        sys.addaudithook(self.hook)  # audit hooks cannot be removed: this one idles after

    def hook(self, event: str, args: tuple) -> None:
        if not self.recording or event not in ("open", "os.listdir", "os.scandir"):
            return
        path = args[0] if args else None
        if isinstance(path, bytes):
            path = path.decode("latin-1")
        if isinstance(path, str) and any(marker in path for marker in MARKERS):
            self.seen.append(path)


def hostile_requests(weights: Path):
    """(description, query params, multipart file name, the statuses allowed): a parameter we
    know is refused (422); one we do not know is ignored (200); a file name is never used, but
    one of 10 000 characters breaks the multipart header limit (400)."""
    for value in [*HOSTILE_VALUES, str(weights)]:
        for name in KNOWN_PARAMETERS:
            yield f"{name}={value[:40]!r}", {name: value}, "image.png", {422}
        for name in UNKNOWN_PARAMETERS:
            yield f"{name}={value[:40]!r}", {name: value}, "image.png", {200}
        yield f"filename {value[:40]!r}", {}, value, {200, 400}


@pytest.fixture(scope="module")
def app_client(weights):
    """The app in this process, on one torch thread (as the servers here, see SERVER_ENV)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with started(Settings(weights=weights, device="cpu")) as client:
        yield client
    torch.set_num_threads(threads)


def test_no_parameter_value_is_used_as_a_path(weights, server, app_client, summary):
    """Each value goes to the real server (status) and to the app in this process, where an
    audit hook sees every file the request opens."""
    accesses = FileAccesses()
    accesses.recording = True
    open("/etc/passwd").close()  # the hook does see an open
    accesses.recording = False
    assert accesses.seen == ["/etc/passwd"]
    accesses.seen.clear()
    image = encode(scene_image(32, 32))
    tried = 0
    for description, params, filename, allowed in hostile_requests(weights):
        files = {"image": (filename, image, "image/png")}
        over_http = server.http.post("/v1/segment", params=params, files=files)
        accesses.recording = True
        try:
            in_process = app_client.post("/v1/segment", params=params, files=files)
        finally:
            accesses.recording = False
        tried += 1
        for response in (over_http, in_process):
            assert response.status_code in allowed, (description, response.text)
            assert response.headers["content-type"] == "application/json"
        assert not accesses.seen, (description, accesses.seen)
    assert healthy(server)
    paths = ("/v1/segment/../../etc/passwd", "/v1/..%2F..%2Fetc%2Fpasswd", "/etc/passwd")
    for path in paths:
        assert server.http.get(path).status_code == 404
    summary["security"] = {"path_values_tried": tried + len(paths)}


# --- Limits hold before decoding ----------------------------------------------------------
def raw_exchange(port: int, head: bytes, chunks=()) -> tuple[int, dict]:
    """Sends `head`, then `chunks` while the server still reads; the status and JSON body."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:  # the server answered and stopped reading: what we want to see
            pass
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < 2:
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    header, _, body = reply.partition(b"\r\n\r\n")
    length = int(
        next(
            line for line in header.split(b"\r\n") if line.lower().startswith(b"content-length")
        ).split(b":")[1]
    )
    return int(header.split()[1]), json.loads(body[:length])


def test_the_upload_limit_holds_before_the_body_is_read(server):
    port = int(server.url.rsplit(":", 1)[1])
    # 1 GiB declared, four bytes sent: refused from the header alone.
    status, body = raw_exchange(
        port,
        b"POST /v1/segment HTTP/1.1\r\nHost: qgn\r\nContent-Type: image/png\r\n"
        b"Content-Length: 1073741824\r\n\r\n\x89PNG",
    )
    assert (status, body["error"]["code"]) == (413, "upload_too_large")

    # No length declared (chunked): cut off once the stream passes the limit (25 MiB).
    rss_before = memory_bytes(server.process.pid)
    megabyte = b"%x\r\n%s\r\n" % (MIB, b"\0" * MIB)
    status, body = raw_exchange(
        port,
        b"POST /v1/segment HTTP/1.1\r\nHost: qgn\r\nContent-Type: image/png\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
        (megabyte for _ in range(64)),
    )
    assert (status, body["error"]["code"]) == (413, "upload_too_large")
    assert memory_bytes(server.process.pid) - rss_before < 64 * MIB

    # Multipart: the same limit, framing aside.
    big = httpx.post(
        f"{server.url}/v1/segment",
        files={"image": ("big.png", b"\0" * (26 * MIB), "image/png")},
        timeout=60,
    )
    assert big.status_code == 413 and big.json()["error"]["code"] == "upload_too_large"
    assert healthy(server)


def test_the_pixel_limit_holds_before_a_pixel_is_decoded(app_client, monkeypatch):
    decoded = []
    real_load = Image.Image.load

    def load(image):
        decoded.append(image.size)
        return real_load(image)

    monkeypatch.setattr(Image.Image, "load", load)
    for width, height in ((100_000, 100_000), (6_400, 6_400), (40_000_001, 1)):
        response = app_client.post(
            "/v1/segment", content=png_header_only(width, height), headers=PNG
        )
        assert response.status_code == 413 and response.json()["error"]["code"] == (
            "too_many_pixels"
        )
    assert decoded == []  # Pillow never got as far as the pixel data
    ok = app_client.post("/v1/segment", content=encode(scene_image(32, 32)), headers=PNG)
    assert ok.status_code == 200 and (32, 32) in decoded  # the spy does see real decoding
