"""The CUDA path in a few minutes: `python -m benchmarks.gpu_check` (docker/gpu-check.sh runs
it on a GPU machine).

1. The model on CUDA, calibrated there: for pc, τ0.1 and all on a 1024×2048 street scene,
   the peak the server reports (the allocation window, else the allocator's statistics)
   beside `torch.cuda.max_memory_allocated` over the same call, and the latency.
2. The server on CUDA: `qgn serve` with 1 and then 2 workers on 127.0.0.1, 32 pc requests
   from 8 clients each time: throughput, and every answer 200.
A JSON summary goes to $OUT/gpu-check.json when OUT is set. Without CUDA it says so and
exits 2.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import torch
from PIL import Image

from model import memory
from model.cost import calibrate
from model.data import make_scene
from model.scheme_request import MIB, SchemeRequest
from model.schemes import build_scheme
from model.weights import DEFAULT_WEIGHTS, load_weights

SETTINGS = [SchemeRequest("pc"), SchemeRequest("threshold", threshold=0.1), SchemeRequest("all")]


def model_rows(device: torch.device) -> list[dict]:
    model, _ = load_weights(DEFAULT_WEIGHTS, device)
    started = time.perf_counter()
    model.cost = calibrate(model, device)
    print(f"calibrated on {device} in {time.perf_counter() - started:.1f} s", flush=True)
    scene, _ = make_scene(7, 1024, 2048)
    rows = []
    for request in SETTINGS:
        model.predict(scene, build_scheme(request))  # warm: kernels, rulebooks, allocator pools
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run = model.predict(scene, build_scheme(request))
        allocator_peak = torch.cuda.max_memory_allocated(device) - before
        rows.append(
            {
                "setting": request.name
                + (f"={request.threshold}" if request.threshold is not None else ""),
                "peak_mib": round(run.peak_bytes / MIB, 2),
                "allocator_peak_mib": round(allocator_peak / MIB, 2),
                "ratio": round(run.peak_bytes / max(allocator_peak, 1), 3),
                "latency_ms": round(run.latency_s * 1000, 1),
            }
        )
        print(rows[-1], flush=True)
    return rows


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_throughput(workers: int, image: bytes, requests: int = 32) -> dict:
    port = free_port()
    env = {**os.environ, "QGN_DEVICE": "cuda", "QGN_WORKERS": str(workers)}
    command = [sys.executable, "-c", "from server.cli import main; main()", "serve"]
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            model = http.get("/v1/model").json()

            def send(_):
                return http.post(
                    "/v1/segment?scheme=pc&format=png",
                    content=image,
                    headers={"content-type": "image/png"},
                ).status_code

            started = time.perf_counter()
            with ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(send, range(requests)))
            seconds = time.perf_counter() - started
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=60)
    row = {
        "workers": workers,
        "requests": requests,
        "ok": codes.count(200),
        "seconds": round(seconds, 2),
        "per_second": round(requests / seconds, 2),
        "memory_measurement": model.get("memory_measurement"),
        "device_memory": model.get("device_memory"),
        "exit_code": process.returncode,
    }
    print(row, flush=True)
    if codes.count(200) != requests:
        print(output[-3000:])
    return row


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 2
    device = torch.device("cuda")
    print(torch.cuda.get_device_name(device), "| measured by", memory.measurement(device))
    summary = {"device": torch.cuda.get_device_name(device), "model": model_rows(device)}
    scene, _ = make_scene(8, 1024, 2048)
    buffer = io.BytesIO()
    Image.fromarray(scene).save(buffer, "PNG")
    summary["server"] = [server_throughput(w, buffer.getvalue()) for w in (1, 2)]
    one, two = summary["server"]
    summary["two_workers_speedup"] = round(two["per_second"] / one["per_second"], 2)
    print(json.dumps(summary, indent=1))
    if out := os.environ.get("OUT"):
        Path(out, "gpu-check.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
