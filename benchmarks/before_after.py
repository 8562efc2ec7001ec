"""`pc` latency and peak of this checkout against another (the code before a change), on the
same weights, alternated in fresh processes so that a busy machine slows both alike.

    git worktree add /tmp/before <commit>
    python -m benchmarks.before_after --before /tmp/before
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from model.weights import DEFAULT_WEIGHTS

REPO = Path(__file__).resolve().parent.parent
CHILD = r"""
import json, sys, torch
torch.set_num_threads(1)
from model.data.synthetic import make_scene
from model.schemes import make_scheme
from model.weights import load_weights
weights, height, width, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model, _ = load_weights(weights)
scenes = [make_scene(seed, height, width)[0] for seed in (900001, 900002, 900003)]
model.predict(scenes[0], make_scheme("pc"))
latencies, peak = [], 0
for i in range(runs):
    prediction = model.predict(scenes[i % 3], make_scheme("pc"))
    latencies.append(prediction.latency_s)
    peak = max(peak, prediction.peak_bytes)
print(json.dumps({"median_s": sorted(latencies)[len(latencies) // 2], "peak_mib": peak / 2**20}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.before_after", description=__doc__)
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the old code")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--sizes", nargs="+", default=["512x1024", "1024x2048"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=6)
    args = parser.parse_args(argv)
    for size in args.sizes:
        height, width = size.split("x")
        found: dict[str, list[dict]] = {"before": [], "after": []}
        for _ in range(args.rounds):
            for name, root in (("before", args.before.resolve()), ("after", REPO)):
                command = [sys.executable, "-c", CHILD, str(args.weights.resolve()), height, width]
                done = subprocess.run(
                    [*command, str(args.runs)],
                    cwd=root,
                    env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                    capture_output=True,
                    text=True,
                    check=True,
                )
                found[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
        before = statistics.median(r["median_s"] for r in found["before"])
        after = statistics.median(r["median_s"] for r in found["after"])
        print(
            f"{size}: before {before:.3f} s ({found['before'][0]['peak_mib']:.1f} MiB), "
            f"after {after:.3f} s ({found['after'][0]['peak_mib']:.1f} MiB), "
            f"ratio {after / before:.2f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
