"""`scheme=auto` under overload, against the best fixed setting and against `pc`.

    python -m benchmarks.auto [--clients 8] [--requests 2] [--scenes 8]

At 1024×2048, on held-out synthetic scenes with their labels, a real `qgn serve` with two
workers of one torch thread each and a device budget that holds one request of the best fixed
setting (the card's most accurate at that size, `all`) and a half: first alone, the best
setting's latency and `auto` with a deadline of half of it; then `--clients` clients, each
sending `--requests` requests back to back, three times on fresh servers: the best fixed
setting, `auto`, and `pc`. Per run: wall time, throughput, p50/p95 round trip, status codes,
mIoU of what was answered (one confusion matrix), the share of each setting `auto` chose and
why, measured peak against predicted, and the latency model's error (the clients send a
deadline too far to steer anything, so that each answer says its predicted latency).

Output: `results/auto-<machine>-<date>.json`, `.md` and `.png` (the settings `auto` chose over
time). Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import threading
import time
from collections import Counter
from datetime import date
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from benchmarks.run import machine_info
from model.data import make_scene
from model.data.synthetic import VAL_SEEDS
from model.evaluate import confusion, mean_iou
from model.scheme_request import MIB
from model.weights import DEFAULT_WEIGHTS, load_card
from server.auto import request_of
from tests.server.test_e2e import RunningServer

SIZE = (1024, 2048)
FAR_DEADLINE_MS = 3_600_000  # far enough never to steer: it makes answers say their latency


def scenes(count: int) -> list[tuple[bytes, np.ndarray]]:
    found = []
    for index, seed in enumerate(VAL_SEEDS[:count]):
        image, label = make_scene(seed, *SIZE)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        found.append((buffer.getvalue(), label))
        print(f"\rscenes {index + 1}/{count}", end="", flush=True)
    print()
    return found


def post(client: httpx.Client, query: str, body: bytes) -> tuple[httpx.Response, float]:
    start = time.perf_counter()
    response = client.post(
        f"/v1/segment?{query}&format=png", content=body, headers={"content-type": "image/png"}
    )
    return response, time.perf_counter() - start


def answer_row(response: httpx.Response, trip: float, started: float, scene: int) -> dict:
    headers = response.headers
    row = {"status": response.status_code, "round_trip_s": trip, "scene": scene}
    row["finished_s"] = time.perf_counter() - started
    if response.status_code != 200:
        return row
    row |= {
        "scheme": headers["x-qgn-scheme"],
        "latency_ms": float(headers["x-qgn-latency-ms"]),
        "peak_bytes": int(headers["x-qgn-peak-memory-bytes"]),
    }
    if "x-qgn-auto-setting" in headers:
        row |= {
            "setting": headers["x-qgn-auto-setting"],
            "reason": headers["x-qgn-auto-reason"],
            "predicted_peak_bytes": float(headers["x-qgn-auto-predicted-peak-mb"]) * MIB,
            "predicted_latency_ms": float(headers["x-qgn-auto-predicted-latency-ms"]),
        }
    row["mask"] = np.asarray(Image.open(io.BytesIO(response.content)))
    return row


def load(server: RunningServer, query: str, bodies, clients: int, requests: int) -> dict:
    """`clients` clients, `requests` each, back to back; scenes dealt round robin."""
    rows: list[dict] = []
    lock = threading.Lock()
    started = time.perf_counter()

    def client(number: int) -> None:
        with httpx.Client(base_url=server.url, timeout=600) as http:
            for turn in range(requests):
                scene = (number * requests + turn) % len(bodies)
                response, trip = post(http, query, bodies[scene][0])
                with lock:
                    rows.append(answer_row(response, trip, started, scene))
                    print(f"\r  {query}: {len(rows)}/{clients * requests}", end="", flush=True)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print()
    return {"query": query, "wall_s": time.perf_counter() - started, "rows": rows}


def summarise(run: dict, bodies, classes: int) -> dict:
    rows = run["rows"]
    answered = [r for r in rows if r["status"] == 200]
    matrix = sum(confusion(r["mask"], bodies[r["scene"]][1], classes) for r in answered)
    trips = sorted(r["round_trip_s"] for r in rows)
    summary = {
        "query": run["query"],
        "requests": len(rows),
        "statuses": dict(Counter(str(r["status"]) for r in rows)),
        "wall_s": round(run["wall_s"], 2),
        "throughput_rps": round(len(answered) / run["wall_s"], 3),
        "p50_s": round(statistics.median(trips), 3),
        "p95_s": round(trips[min(len(trips) - 1, int(0.95 * len(trips)))], 3),
        "miou": round(100 * mean_iou(matrix), 2) if answered else None,
    }
    chosen = [r for r in answered if "setting" in r]
    if chosen:
        held = sum(r["peak_bytes"] <= r["predicted_peak_bytes"] for r in chosen)
        errors = [r["latency_ms"] / r["predicted_latency_ms"] for r in chosen]
        summary |= {
            "settings": dict(Counter(r["setting"] for r in chosen)),
            "reasons": dict(Counter(r["reason"] for r in chosen)),
            "peak_within_prediction": f"{held}/{len(chosen)}",
            "latency_measured_over_predicted": {
                "median": round(statistics.median(errors), 3),
                "min": round(min(errors), 3),
                "max": round(max(errors), 3),
            },
            "timeline": [
                [round(r["finished_s"], 2), r["setting"], r["reason"]]
                for r in sorted(chosen, key=lambda r: r["finished_s"])
            ],
        }
    return summary


def best_setting(card: dict) -> str:
    rows = card["evaluation"]["tables"]["x".join(map(str, SIZE))]["rows"]
    best = max(
        (r for r in rows if r["scheme"] in ("all", "pc", "threshold")), key=lambda r: r["miou"]
    )
    return request_of(best).query().removeprefix("scheme=")


def markdown(report: dict) -> str:
    lines = [
        f"# scheme=auto under overload — {report['machine']}, {report['date']}",
        "",
        f"{report['setup']}",
        "",
        f"Alone: `{report['best']}` took {report['alone']['best_latency_ms']:.0f} ms; `auto` with "
        f"`deadline_ms` {report['alone']['deadline_ms']:.0f} (half) ran "
        f"`{report['alone']['setting']}` ({report['alone']['reason']}) and answered in "
        f"{report['alone']['round_trip_ms']:.0f} ms "
        f"({report['alone']['round_trip_ms'] / report['alone']['deadline_ms']:.2f}× the deadline).",
        "",
        "| run | answered | wall s | req/s | p50 s | p95 s | mIoU % | settings chosen |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for run in report["runs"]:
        settings = ", ".join(f"{k} {v}" for k, v in run.get("settings", {}).items()) or "–"
        lines.append(
            f"| `{run['query']}` | {run['statuses']} | {run['wall_s']} | {run['throughput_rps']} "
            f"| {run['p50_s']} | {run['p95_s']} | {run['miou']} | {settings} |"
        )
    auto_run = next(r for r in report["runs"] if r["query"].startswith("scheme=auto"))
    lines += [
        "",
        f"`auto`'s reasons: {auto_run['reasons']}; measured peak within the predicted: "
        f"{auto_run['peak_within_prediction']}; latency measured / predicted: "
        f"{auto_run['latency_measured_over_predicted']}.",
        "",
        "| target | measured |",
        "|---|---|",
    ]
    lines += [f"| {name} | {value} |" for name, value in report["targets"].items()]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = next(r for r in report["runs"] if r["query"].startswith("scheme=auto"))
    settings = sorted({s for _, s, _ in run["timeline"]})
    colours = {
        "best": "tab:green",
        "memory": "tab:orange",
        "max_memory": "tab:red",
        "deadline": "tab:purple",
    }
    figure, axes = plt.subplots(figsize=(8, 3.5))
    for reason, colour in colours.items():
        points = [(t, settings.index(s)) for t, s, r in run["timeline"] if r == reason]
        if points:
            axes.scatter(*zip(*points, strict=True), color=colour, label=reason)
    axes.set_yticks(range(len(settings)), settings)
    axes.set_xlabel("seconds into the load (answer)")
    axes.set_title(f"scheme=auto: the setting each request ran, {report['machine']}")
    axes.legend(title="reason")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=2)
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    card = load_card(args.weights)
    classes = len(card["classes"])
    best = best_setting(card)
    bodies = scenes(args.scenes)
    logs = Path(tempfile.mkdtemp())
    one_thread = {"QGN_WORKERS": "2", "QGN_TORCH_THREADS": "1"}

    print("alone: the best setting's reservation and latency")
    server = RunningServer(args.weights, logs / "alone.log", **one_thread)
    try:
        probe, _ = post(server.http, f"scheme=auto&deadline_ms={FAR_DEADLINE_MS}", bodies[0][0])
        reserved_mb = (
            float(probe.headers["x-qgn-auto-predicted-peak-mb"]) + 3 * SIZE[0] * SIZE[1] / MIB
        )
        alone, _ = post(server.http, f"scheme={best}", bodies[1][0])
        best_ms = float(alone.headers["x-qgn-latency-ms"])
        deadline = best_ms / 2
        response, trip = post(server.http, f"scheme=auto&deadline_ms={deadline:.0f}", bodies[1][0])
        alone_row = {
            "best_latency_ms": best_ms,
            "deadline_ms": deadline,
            "status": response.status_code,
            "setting": response.headers.get("x-qgn-auto-setting"),
            "reason": response.headers.get("x-qgn-auto-reason"),
            "round_trip_ms": round(trip * 1000, 1),
        }
    finally:
        server.stop()
    device_mb = round(1.5 * reserved_mb, 1)
    capped = {**one_thread, "QGN_DEVICE_MEMORY_MB": str(device_mb)}
    runs = []
    for query in (f"scheme={best}", f"scheme=auto&deadline_ms={FAR_DEADLINE_MS}", "scheme=pc"):
        print(f"load: {query}")
        server = RunningServer(args.weights, logs / "load.log", **capped)
        try:
            runs.append(
                summarise(load(server, query, bodies, args.clients, args.requests), bodies, classes)
            )
        finally:
            server.stop()
    fixed, auto_run, pc = runs
    report = {
        "machine": machine_info()["slug"],
        "date": date.today().isoformat(),
        "setup": (
            f"{SIZE[0]}×{SIZE[1]} held-out synthetic scenes ({args.scenes}, PNG in, format=png "
            f"out), {args.clients} clients × {args.requests} requests back to back, a real "
            f"`qgn serve` with 2 workers of 1 torch thread and `QGN_DEVICE_MEMORY_MB={device_mb}` "
            f"(1.5× one `{best}` request's reservation, {reserved_mb:.1f} MiB), weights "
            f"`{args.weights.name}`. Each run starts a fresh server."
        ),
        "best": best,
        "device_memory_mb": device_mb,
        "alone": alone_row,
        "runs": runs,
    }
    report["targets"] = {
        "every request answered 200": all(set(r["statuses"]) == {"200"} for r in runs),
        "some ran a cheaper setting, with the reason": auto_run.get("reasons"),
        "mIoU(auto) ≥ mIoU(pc) − 0.5": f"{auto_run['miou']} vs {pc['miou']}",
        "measured peak ≤ predicted": auto_run.get("peak_within_prediction"),
        "wall time auto / best fixed ≤ 0.8": round(auto_run["wall_s"] / fixed["wall_s"], 3),
        "deadline of half the best alone: answered within 1.5×": round(
            alone_row["round_trip_ms"] / deadline, 2
        ),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"auto-{report['machine']}-{report['date']}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    plot(report, stem.with_suffix(".png"))
    print(markdown(report))


if __name__ == "__main__":
    main()
