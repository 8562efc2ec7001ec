"""The whole path of a request: round trip against inference, and what each stage costs.

    python -m benchmarks.path --weights weights/qgn_small_synthetic.safetensors

For 512×1024 and 1024×2048 held-out synthetic street scenes, PNG and JPEG in, JSON and PNG
out, in one run on one machine:

- *round trip*: a client on loopback posting to a real `qgn serve` (one worker, one torch
  thread) until the answer is read, against the `latency_ms` the server reports for the
  inference of the same request (ratio per request, then the median);
- *stages*, in this process with the server's own functions, one torch thread: decode
  (`load_image`), inference with its measurement (`QGN.predict`), the same inference with the
  memory counter replaced by one that counts nothing (their difference is what measuring
  costs) and by the per-op tracker the CPU falls back to without a compiler, the mask PNG
  (`encode_mask_png`), and the JSON body (`json_or_png_response`: leaves, base64 mask, orjson).

Medians over `--runs` after a warm-up. Not a test: it asserts nothing. Results in `--out`:
`path-<machine>-<date>.json` and `.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from benchmarks.run import machine_info
from model import memory
from model.cost import calibrate
from model.data import make_scene
from model.data.synthetic import VAL_SEEDS
from model.schemes import make_scheme
from model.weights import DEFAULT_WEIGHTS, load_weights
from server.images import encode_mask_png, load_image
from server.inference import Served
from server.routes.segment import json_or_png_response
from tests.server.conftest import encode
from tests.server.test_e2e import RunningServer

SIZES = [(512, 1024), (1024, 2048)]
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg"}
ENCODE_OPTIONS = {"PNG": {}, "JPEG": {"quality": 90}}
MAX_PIXELS = 40_000_000  # the server's default


class CountsNothing:
    """A memory counter that does no work: the inference as it would run unmeasured."""

    live_bytes = peak_bytes = 0

    def __enter__(self) -> CountsNothing:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def reset_peak(self) -> None:
        pass


def median_ms(samples: list[float]) -> float:
    return round(1000 * statistics.median(samples), 2)


def timed(function, runs: int) -> tuple[float, object]:
    """Median seconds of `function()` over `runs` calls after one warm-up, and its last result."""
    result = function()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        result = function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), result


def stages(model, card, image: np.ndarray, bodies: dict[str, bytes], runs: int) -> dict:
    """Each stage of the server's path, in this process."""
    row = {}
    for fmt, body in bodies.items():
        seconds, _ = timed(lambda body=body: load_image(body, MAX_PIXELS), runs)
        row[f"decode_{fmt.lower()}_ms"] = round(1000 * seconds, 2)
    # Measured, unmeasured and per-op-tracked inferences alternate, so that the machine's
    # drift hits all three.
    counter = memory.counter
    counters = {
        "inference_ms": counter,
        "unmeasured_inference_ms": lambda device: CountsNothing(),
        "dispatch_tracker_inference_ms": lambda device: memory.CpuAllocationTracker(),
    }
    samples = {name: [] for name in counters}
    for _ in range(runs + 1):
        for name, patched in counters.items():
            memory.counter = patched
            try:
                start = time.perf_counter()
                model.predict(image, make_scheme("pc"))
                samples[name].append(time.perf_counter() - start)
            finally:
                memory.counter = counter
    for name, seconds in samples.items():
        row[name] = median_ms(seconds[1:])
    unmeasured = row["unmeasured_inference_ms"]
    row["measurement_share"] = round(row["inference_ms"] / unmeasured - 1, 3)
    row["dispatch_tracker_share"] = round(row["dispatch_tracker_inference_ms"] / unmeasured - 1, 3)
    prediction = model.predict(image, make_scheme("pc"))
    mask = prediction.mask.numpy()
    seconds, png = timed(lambda: encode_mask_png(mask, card["palette"]), runs)
    row["mask_png_ms"] = round(1000 * seconds, 2)
    classes = card["classes"]
    served = Served(prediction)
    seconds, response = timed(lambda: json_or_png_response(served, png, "json", classes), runs)
    row["json_body_ms"] = round(1000 * seconds, 2)
    row["json_bytes"] = len(response.body)
    row["mask_png_bytes"] = len(png)
    row["leaves"] = int(prediction.leaves.shape[0])
    row["peak_mib"] = round(prediction.peak_bytes / 2**20, 2)
    return row


def round_trips(server: RunningServer, bodies: dict[str, bytes], runs: int) -> list[dict]:
    """Per input format and output format: client round trip and the server's latency_ms."""
    rows = []
    for fmt, body in bodies.items():
        for out in ("json", "png"):
            trips, inferences = [], []
            for run in range(runs + 1):
                start = time.perf_counter()
                response = server.http.post(
                    f"/v1/segment?scheme=pc&format={out}",
                    content=body,
                    headers={"content-type": FORMATS[fmt]},
                )
                trip = time.perf_counter() - start
                if response.status_code != 200:
                    raise RuntimeError(f"{response.status_code}: {response.text[:300]}")
                if out == "json":
                    latency_ms = response.json()["stats"]["latency_ms"]
                else:
                    latency_ms = float(response.headers["x-qgn-latency-ms"])
                if run:  # the first is a warm-up
                    trips.append(trip)
                    inferences.append(latency_ms / 1000)
            ratios = [t / i for t, i in zip(trips, inferences, strict=True)]
            rows.append(
                {
                    "input": fmt,
                    "output": out,
                    "round_trip_ms": median_ms(trips),
                    "latency_ms": median_ms(inferences),
                    "round_trip_over_latency": round(statistics.median(ratios), 3),
                    "upload_bytes": len(body),
                    "response_bytes": len(response.content),
                }
            )
    return rows


def markdown(report: dict) -> str:
    lines = [
        f"# The whole path of a request — {report['machine']}, {report['date']}",
        "",
        f"`pc` on held-out synthetic scenes, weights `{report['weights']}`, one worker and one "
        f"torch thread, medians of {report['runs']} runs after a warm-up; load average at start "
        f"{report['load_average']}. *× latency*: each request's round trip over the "
        "`latency_ms` the server reported for it (median).",
        "",
        "## Round trip (real `qgn serve`, loopback)",
        "",
        "| size | in | out | round trip ms | latency_ms | × latency | upload | response |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for size in report["sizes"]:
        for row in size["round_trips"]:
            lines.append(
                f"| {size['size']} | {row['input']} | {row['output']} | {row['round_trip_ms']} | "
                f"{row['latency_ms']} | {row['round_trip_over_latency']} | "
                f"{row['upload_bytes'] / 1e6:.2f} MB | {row['response_bytes'] / 1e6:.2f} MB |"
            )
    lines += [
        "",
        "## Stages (in process, the server's functions)",
        "",
        "| size | decode PNG ms | decode JPEG ms | inference ms | unmeasured ms | measuring "
        "| per-op tracker ms | its cost | mask PNG ms | JSON body ms | leaves | peak MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in report["sizes"]:
        s = size["stages"]
        lines.append(
            f"| {size['size']} | {s['decode_png_ms']} | {s['decode_jpeg_ms']} | "
            f"{s['inference_ms']} | {s['unmeasured_inference_ms']} | "
            f"{s['measurement_share']:+.1%} | {s['dispatch_tracker_inference_ms']} | "
            f"{s['dispatch_tracker_share']:+.1%} | {s['mask_png_ms']} | {s['json_body_ms']} | "
            f"{s['leaves']} | {s['peak_mib']} |"
        )
    lines += [
        "",
        f"Memory measured by: {report['measurement']}. *per-op tracker*: the same inference "
        "measured by the `TorchDispatchMode` fallback instead.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    model, card = load_weights(args.weights)
    model.cost = calibrate(model, "cpu")
    report = {
        "machine": machine_info()["slug"],
        "date": date.today().isoformat(),
        "weights": args.weights,
        "runs": args.runs,
        "load_average": " ".join(f"{load:.2f}" for load in os.getloadavg()),
        "measurement": memory.measurement("cpu"),
        "sizes": [],
    }
    log = Path(tempfile.mkdtemp(prefix="qgn-path-")) / "server.log"
    server = RunningServer(Path(args.weights), log, QGN_WORKERS="1", QGN_TORCH_THREADS="1")
    try:
        for height, width in SIZES:
            image, _ = make_scene(VAL_SEEDS[0], height, width)
            bodies = {fmt: encode(image, fmt, **ENCODE_OPTIONS[fmt]) for fmt in FORMATS}
            size = {
                "size": f"{height}×{width}",
                "round_trips": round_trips(server, bodies, args.runs),
                "stages": stages(model, card, image, bodies, args.runs),
            }
            report["sizes"].append(size)
            print(json.dumps(size), flush=True)
    finally:
        server.stop()
    stem = args.out / f"path-{report['machine']}-{report['date']}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
