"""Several requests at once: throughput and latency of `qgn serve` by workers and device budget.

    python -m benchmarks.concurrency --weights weights/qgn_small_synthetic.safetensors

Four clients send 512×1024 `pc` requests (held-out synthetic street scenes, PNG) as fast as
they are answered to a real `qgn serve` on loopback, one configuration after another, in
rounds (the machine is shared: a ratio is read within a round):

- `1w×2t`: QGN_WORKERS=1, QGN_TORCH_THREADS=2;
- `1w×1t`: QGN_WORKERS=1, QGN_TORCH_THREADS=1 (what one worker does with one thread: the
  reference for the budget-bound run, whose admission lets one inference run at a time);
- `2w×1t`: QGN_WORKERS=2, QGN_TORCH_THREADS=1;
- `2w×1t, budget 1.3×`: the same with QGN_DEVICE_MEMORY_MB at 1.3 × one request's predicted
  peak (read from the `2w×1t` server's inference log), so two never fit at once.

Per configuration: requests per second, p50 and p99 latency as the clients saw them, status
codes, and from the server's inference log the measured over predicted peak of every request.
Not a test: it asserts nothing and takes a few minutes. Results: `--out`, JSON and Markdown.
The servers are the reliability tests' (`RunningServer`, read through their inference log).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import date
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from model.data.synthetic import VAL_SEEDS
from model.scheme_request import MIB
from model.weights import DEFAULT_WEIGHTS
from tests.reliability.test_concurrency import inferences, overlapping_pairs
from tests.server.test_e2e import RunningServer

HEIGHT, WIDTH = 512, 1024
CLIENTS = 4
SCENES = 8
PREDICTION_SIZES = [(256, 512), (512, 1024), (768, 1536)]


def scenes(sizes: list[tuple[int, int]], seeds: list[int]) -> dict[tuple[int, int], list[bytes]]:
    from model.data import make_scene

    bodies: dict[tuple[int, int], list[bytes]] = {}
    for height, width in sizes:
        for seed in seeds:
            image, _ = make_scene(seed, height, width)
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            bodies.setdefault((height, width), []).append(buffer.getvalue())
    return bodies


def load(server: RunningServer, requests: list[tuple[str, bytes]]) -> dict:
    """`CLIENTS` clients taking the requests (query, PNG) in turn, each sending its next one
    when the last is answered."""
    latencies: list[float] = []
    codes: Counter = Counter()
    lock = threading.Lock()
    pending = iter(requests)

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=300) as http:
            while True:
                with lock:
                    query, body = next(pending, (None, b""))
                if query is None:
                    return
                start = time.perf_counter()
                try:
                    code = http.post(
                        f"/v1/segment?{query}", content=body, headers={"content-type": "image/png"}
                    ).status_code
                except httpx.HTTPError:
                    code = 0
                with lock:
                    latencies.append(time.perf_counter() - start)
                    codes[code] += 1

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    p50, p99 = np.percentile(latencies, [50, 99])
    return {
        "requests": len(latencies),
        "seconds": round(seconds, 2),
        "req_per_s": round(len(latencies) / seconds, 2),
        "p50_ms": round(float(p50) * 1000, 1),
        "p99_ms": round(float(p99) * 1000, 1),
        "codes": {str(code): count for code, count in sorted(codes.items())},
    }


def prediction_error(runs: list[dict]) -> dict:
    ratios = [run["predicted_peak_bytes"] / run["peak_memory_bytes"] for run in runs]
    return {
        "predicted_over_measured_mean": round(float(np.mean(ratios)), 3),
        "predicted_at_least_measured": round(float(np.mean([r >= 1 for r in ratios])), 4),
    }


def measure(args, name: str, env: dict[str, str], bodies: list[bytes], round_: int) -> dict:
    log = args.logs / f"{round_}-{len(list(args.logs.iterdir()))}.log"
    server = RunningServer(Path(args.weights), log, QGN_QUEUE_SIZE="16", **env)
    pc = [("scheme=pc", bodies[i % len(bodies)]) for i in range(CLIENTS * args.per_client)]
    try:
        load(server, pc[:CLIENTS])  # warm: every worker once, and pc's prediction learnt
        timed_from = len(inferences(server))
        result = load(server, pc)
        runs = inferences(server)[timed_from:]
    finally:
        server.stop()
    return {
        "config": name,
        "round": round_,
        "env": env,
        **result,
        "inference_ms_p50": round(1000 * float(np.median([r["end"] - r["start"] for r in runs]))),
        "overlapping_pairs": overlapping_pairs(runs),
        **prediction_error(runs),
        "predicted_peak_mib": round(max(run["predicted_peak_bytes"] for run in runs) / MIB, 2),
        "measured_peak_mib_max": round(max(run["peak_memory_bytes"] for run in runs) / MIB, 2),
    }


def measure_predictions(args, env: dict[str, str]) -> list[dict]:
    """Every scheme but budget on scenes of three sizes, in a shuffled order, on one server:
    the predictor learns as it goes, as in service."""
    seeds = list(VAL_SEEDS)[SCENES : SCENES + args.prediction_scenes]
    bodies = scenes(PREDICTION_SIZES, seeds)
    requests = [
        (query, body)
        for query in (
            "scheme=pc",
            "scheme=threshold&threshold=0.3",
            "scheme=threshold&threshold=0.7",
        )
        for size in PREDICTION_SIZES
        for body in bodies[size]
    ] + [("scheme=all", body) for body in bodies[PREDICTION_SIZES[0]]]
    order = np.random.default_rng(0).permutation(len(requests))
    server = RunningServer(Path(args.weights), args.logs / "predictions.log", **env)
    try:
        result = load(server, [requests[i] for i in order])
        runs = inferences(server)
    finally:
        server.stop()
    rows = []
    for scheme, threshold in (("pc", None), ("threshold", 0.3), ("threshold", 0.7), ("all", None)):
        mine = [r for r in runs if r["scheme"] == scheme and r["threshold"] == threshold]
        rows.append(
            {
                "scheme": scheme if threshold is None else f"threshold {threshold}",
                "requests": len(mine),
                **prediction_error(mine),
                "measured_over_predicted_max": round(
                    max(r["peak_memory_bytes"] / r["predicted_peak_bytes"] for r in mine), 3
                ),
            }
        )
    rows.append({"scheme": "every request", "requests": len(runs), **prediction_error(runs)})
    print(json.dumps({"prediction_load": result}), flush=True)
    return rows


def markdown(rows: list[dict], predictions: list[dict], meta: dict) -> str:
    lines = [
        f"# Several requests at once — {meta['machine']}, {meta['date']}",
        "",
        f"{CLIENTS} clients, {HEIGHT}×{WIDTH} `pc`, {meta['per_client']} requests per client "
        f"per configuration after one warm-up each; {meta['rounds']} rounds; weights "
        f"`{meta['weights']}`; load average at start {meta['load_average']}. Ratios are within "
        "a round (the machine is shared). *inference ms*: a worker's time per request, from "
        "the server's inference log.",
        "",
        "| round | config | req/s | × 1w×2t | × 1w×1t | p50 ms | p99 ms | codes | inference ms "
        "| overlapping pairs | predicted / measured (mean) | predicted ≥ measured |",
        "|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        mates = {r["config"]: r["req_per_s"] for r in rows if r["round"] == row["round"]}
        lines.append(
            f"| {row['round']} | {row['config']} | {row['req_per_s']} | "
            f"{row['req_per_s'] / mates['1w×2t']:.2f} | {row['req_per_s'] / mates['1w×1t']:.2f} | "
            f"{row['p50_ms']} | {row['p99_ms']} | "
            f"{row['codes']} | {row['inference_ms_p50']} | {row['overlapping_pairs']} | "
            f"{row['predicted_over_measured_mean']} | {row['predicted_at_least_measured']:.1%} |"
        )
    lines += [
        "",
        "## Prediction error",
        "",
        f"One `2w×1t` server; scenes at {', '.join(f'{h}×{w}' for h, w in PREDICTION_SIZES)} "
        f"({meta['prediction_scenes']} each) under `pc`, `threshold` 0.3 and 0.7, and `all` at "
        "the smallest size, in a shuffled order (the predictor learns as it goes).",
        "",
        "| scheme | requests | predicted / measured (mean) | predicted ≥ measured "
        "| measured / predicted (max) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in predictions:
        lines.append(
            f"| {row['scheme']} | {row['requests']} | {row['predicted_over_measured_mean']} | "
            f"{row['predicted_at_least_measured']:.1%} | "
            f"{row.get('measured_over_predicted_max', '')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--per-client", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prediction-scenes", type=int, default=12)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.logs = Path(tempfile.mkdtemp(prefix="qgn-concurrency-"))
    meta = {
        "machine": f"cpu{os.cpu_count()}-{platform.machine()}",
        "date": date.today().isoformat(),
        "weights": args.weights,
        "per_client": args.per_client,
        "rounds": args.rounds,
        "prediction_scenes": args.prediction_scenes,
        "load_average": " ".join(f"{load:.2f}" for load in os.getloadavg()),
    }
    bodies = scenes([(HEIGHT, WIDTH)], list(VAL_SEEDS)[:SCENES])[(HEIGHT, WIDTH)]
    one = {"QGN_WORKERS": "1", "QGN_TORCH_THREADS": "2"}
    one_thread = {"QGN_WORKERS": "1", "QGN_TORCH_THREADS": "1"}
    two = {"QGN_WORKERS": "2", "QGN_TORCH_THREADS": "1"}
    rows = []
    for round_ in range(1, args.rounds + 1):
        for name, env in (("1w×2t", one), ("1w×1t", one_thread), ("2w×1t", two)):
            rows.append(measure(args, name, env, bodies, round_))
            print(json.dumps(rows[-1]), flush=True)
        one_request_mib = rows[-1]["predicted_peak_mib"]
        tight = {**two, "QGN_DEVICE_MEMORY_MB": f"{1.3 * one_request_mib:.2f}"}
        rows.append(measure(args, "2w×1t, budget 1.3×", tight, bodies, round_))
        print(json.dumps(rows[-1]), flush=True)
    predictions = measure_predictions(args, two) if args.prediction_scenes else []
    stem = args.out / f"concurrency-{meta['machine']}-{meta['date']}"
    report = {**meta, "rows": rows, "predictions": predictions}
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    stem.with_suffix(".md").write_text(markdown(rows, predictions, meta))
    print(markdown(rows, predictions, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
