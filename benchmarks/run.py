"""Memory and latency of QGN's schemes, image sizes and dense baselines, in one run.

    python -m benchmarks.run --weights weights/qgn_small_synthetic.safetensors
    python -m benchmarks.run --quick --weights random --out /tmp/bench   # a smoke test

Every configuration (scheme or baseline × image size) runs in a fresh process
(`benchmarks.measure`), one after another, so peaks never mix and the cores are not shared
between two measurements. The scenes are held-out synthetic street scenes (`VAL_SEEDS`),
generated once here and handed to the children as files. Writes
`<out>/<machine>-<date>.json`, `.md` and two PNG plots, and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.weights import DEFAULT_WEIGHTS

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = Path(__file__).resolve().parent / "results"

SIZES = ((256, 512), (512, 1024), (1024, 2048))
PC_ONLY_SIZES = ((2048, 4096),)
THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)
# Budgets sit this far from the image's minimum (refine nothing) to the `all` peak.
BUDGET_FRACTIONS = (0.25, 0.5, 0.75)
BASELINES = ("dense", "dilated", "tv_deeplabv3_resnet50", "tv_lraspp_mobilenet_v3")
TORCHVISION_MISSING = (
    "torchvision is not installed; PyPI's torchvision 0.28.0 (the release for torch "
    "2.13) fails to import beside the torch 2.13.0 CPU build here ('operator torchvision::nms "
    "does not exist'); `python -m benchmarks.peers` measures torchvision's and SegFormer's "
    "models from their own venv instead"
)

# One size for everything plus a pc-only size (two points for pc's exponent): every extra
# configuration is a process that imports torch, and the test must stay under a minute.
QUICK = {
    "sizes": ((64, 128),),
    "pc_sizes": ((128, 256),),
    "thresholds": (0.5,),
    "budget_fractions": (0.5,),
    "runs": 2,
    "scenes": 1,
    "floor": False,
    "jobs": 2,
}


@dataclass
class Job:
    """One configuration: what the child measures, and how the report names it."""

    name: str  # all, pc, threshold-0.5, budget-50, oracle, none, dense, dilated, tv_...
    family: str  # qgn | baseline
    height: int
    width: int
    config: dict
    result: dict = field(default_factory=dict)

    @property
    def size(self) -> str:
        return f"{self.height}x{self.width}"


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("numpy", "spconv", "matplotlib", "torchvision"):
        try:
            versions[package] = __import__("importlib.metadata").metadata.version(package)
        except Exception:
            versions[package] = None
    memory = None
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = round(pages / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {
        "slug": f"cpu{os.cpu_count()}-{platform.machine()}",
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "memory_gib": memory,
        "torch_threads": torch.get_num_threads(),
        "versions": versions,
    }


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 512x1024, got {text!r}") from None
    if height < 1 or width < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return height, width


def write_scenes(folder: Path, seeds: list[int], sizes: list[tuple[int, int]]) -> dict:
    """Generates every scene once; the children read them (scene generation's own memory
    then never shows in a child's max RSS)."""
    from model.data import make_scene

    paths = {}
    for height, width in sizes:
        paths[(height, width)] = []
        for seed in seeds:
            image, label = make_scene(seed, height, width)
            path = folder / f"scene-{seed}-{height}x{width}.npz"
            np.savez(path, image=image, label=label)
            paths[(height, width)].append(str(path))
    return paths


def plan(args: argparse.Namespace, scenes: dict, seeds: list[int]) -> list[Job]:
    """Every configuration in run order: per size, `all` first (the budgets need its peak),
    then the other schemes, then the baselines; the pc-only sizes last."""
    common = {"weights": args.weights, "model": args.model, "runs": args.runs, "seeds": seeds}
    jobs = []
    for height, width in args.sizes:
        at = {**common, "height": height, "width": width, "scenes": scenes[(height, width)]}
        qgn = [("all", {"scheme": "all"}), ("pc", {"scheme": "pc"})]
        qgn += [(f"threshold-{t:g}", {"scheme": "threshold", "threshold": t}) for t in args.tau]
        qgn += [(f"budget-{round(f * 100)}", {"scheme": "budget", "fraction": f}) for f in args.fr]
        qgn += [("oracle", {"scheme": "oracle"})]
        if args.floor:
            qgn += [("none", {"scheme": "none"})]
        for name, extra in qgn:
            jobs.append(Job(name, "qgn", height, width, {"kind": "qgn", **at, **extra}))
        for name in args.baselines:
            config = {"kind": "baseline", "baseline": name, **at}
            jobs.append(Job(name, "baseline", height, width, config))
    for height, width in args.pc_sizes:
        at = {**common, "height": height, "width": width, "scenes": scenes[(height, width)]}
        jobs.append(Job("pc", "qgn", height, width, {"kind": "qgn", "scheme": "pc", **at}))
    return jobs


def run_child(
    config: dict,
    timeout_s: float,
    module: tuple[str, ...] = ("benchmarks.measure",),
    python: str = sys.executable,
) -> dict:
    """Runs `module` (`benchmarks.measure` by default) on one config in a fresh interpreter
    (`python`: the peers have their own); its last stdout line is the result. Failures come
    back as a result with status `failed` and the reason."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    command = [python, "-m", *module, json.dumps(config)]
    try:
        done = subprocess.run(
            command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {timeout_s:.0f} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = done.stderr.strip().splitlines()[-3:]
        return {"status": "failed", "reason": f"exit {done.returncode}: {' | '.join(tail)}"}
    return json.loads(lines[-1])


def budget_bytes(fraction: float, minimum: int, all_peak: int) -> int:
    return int(minimum + fraction * max(all_peak - minimum, 0))


def resolve(job: Job, calibration: dict, done: list[Job]) -> str | None:
    """Fills in what a job needs from earlier ones; returns why it cannot run, if so."""
    if job.family != "qgn":
        if job.name.startswith("tv_") and importlib.util.find_spec("torchvision") is None:
            return TORCHVISION_MISSING
        return None
    if calibration.get("status") != "ok":
        return f"the calibration failed: {calibration.get('reason')}"
    job.config["cost"] = calibration["cost"]
    if job.config["scheme"] != "budget":
        return None
    peaks = [
        j.result["peak_bytes"]
        for j in done
        if j.name == "all" and j.size == job.size and j.result.get("status") == "ok"
    ]
    if not peaks:
        return f"no `all` peak at {job.size} to place the budget below"
    minimum = calibration["min_budget_bytes"][job.size]
    job.config["budget_bytes"] = budget_bytes(job.config["fraction"], minimum, peaks[0])
    job.config["min_budget_bytes"] = minimum
    job.config["all_peak_bytes"] = peaks[0]
    return None


class Runner:
    """Runs jobs one by one (or a few at once with --jobs), with progress on stderr."""

    def __init__(self, args: argparse.Namespace, started: float, total: int, calibration: Job):
        self.args = args
        self.started = started
        self.total = total
        self.calibration = calibration
        self.done: list[Job] = []
        self.started_count = 0
        self.lock = threading.Lock()

    def run(self, job: Job) -> None:
        args = self.args
        job.config["threads"] = args.threads
        with self.lock:
            self.started_count += 1
            index = self.started_count
            elapsed = time.perf_counter() - self.started
            what = (
                "calibrate the cost model"
                if job.family == "calibrate"
                else (f"{job.family} {job.name} {job.size}")
            )
            say(f"[{index}/{self.total}] {what} ({elapsed:.0f} s)")
            why_not = None
            if job.family != "calibrate":
                why_not = resolve(job, self.calibration.result, self.done)
        left = args.time_limit - (time.perf_counter() - self.started)
        if why_not is None and left <= 0:
            why_not = f"the run's time limit ({args.time_limit:.0f} s) was reached"
        begun = time.perf_counter()
        job.result = (
            {"status": "skipped", "reason": why_not}
            if why_not
            else run_child(job.config, min(args.timeout, max(left, 1.0)))
        )
        job.result["wall_s"] = round(time.perf_counter() - begun, 2)
        with self.lock:
            self.done.append(job)
            result = job.result
            if result["status"] == "ok" and "peak_bytes" in result:
                say(
                    f"    {job.name} {job.size}: peak {mib(result['peak_bytes'])}"
                    f"  median {result['latency_s']['median'] * 1e3:.0f} ms"
                    f"  ({result['wall_s']:.0f} s)"
                )
            elif result["status"] != "ok":
                say(f"    {job.name} {job.size}: {result['status']}: {result.get('reason')}")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def mib(value: float | None) -> str:
    return "–" if value is None else f"{value / 2**20:.1f} MiB"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument(
        "--weights",
        default=str(DEFAULT_WEIGHTS),
        help="a .safetensors file with its .json card, or `random` (untrained --model)",
    )
    parser.add_argument("--model", default="qgn_small", help="architecture for --weights random")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the results")
    parser.add_argument("--sizes", type=parse_size, nargs="+", help="HxW sizes for everything")
    parser.add_argument("--pc-sizes", type=parse_size, nargs="*", help="extra HxW sizes, pc only")
    parser.add_argument("--runs", type=int, help="timed runs per configuration (after a warm-up)")
    parser.add_argument("--scenes", type=int, help="held-out scenes per size")
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES), choices=BASELINES)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per configuration")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=1800.0,
        help="seconds for the whole run; configurations that would start later are skipped",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per child (0: torch's default). Default 1: on a shared machine, "
        "torch's OpenMP threads contending with other work made inferences 10x slower",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        help="configurations measured at once (default 1; --quick: 2). Above 1 they share "
        "the cores, so latencies are not clean",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes and runs, for tests")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    preset = QUICK if args.quick else {}
    args.sizes = args.sizes or list(preset.get("sizes", SIZES))
    args.pc_sizes = list(
        preset.get("pc_sizes", PC_ONLY_SIZES) if args.pc_sizes is None else args.pc_sizes
    )
    args.tau = preset.get("thresholds", THRESHOLDS)
    args.fr = preset.get("budget_fractions", BUDGET_FRACTIONS)
    args.floor = preset.get("floor", True)
    args.jobs = args.jobs or preset.get("jobs", 1)
    args.runs = args.runs or preset.get("runs", 5)
    # Five scenes cost no more than three: the timed runs go round robin over them.
    args.scenes = args.scenes or preset.get("scenes", 5)
    if args.runs < 1 or args.scenes < 1:
        raise SystemExit("--runs and --scenes must be at least 1")
    if args.weights != "random" and not Path(args.weights).is_file():
        raise SystemExit(
            f"weights {args.weights} not found: pass a .safetensors file (with its .json card) "
            "or --weights random"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    from benchmarks.report import write_report

    args = parse_args(argv)
    started = time.perf_counter()
    now = dt.datetime.now(dt.UTC)
    machine = machine_info()
    if args.threads:
        machine["torch_threads"] = args.threads
    load_start = load_average()
    from model.data import VAL_SEEDS

    seeds = [int(s) for s in VAL_SEEDS[: args.scenes]]
    with tempfile.TemporaryDirectory(prefix="qgn-bench-") as folder:
        all_sizes = [*args.sizes, *args.pc_sizes]
        say(f"generating {len(seeds)} held-out scenes at {len(all_sizes)} sizes")
        scenes = write_scenes(Path(folder), seeds, all_sizes)
        jobs = plan(args, scenes, seeds)
        calibration = Job(
            "calibrate",
            "calibrate",
            0,
            0,
            {"kind": "calibrate", "weights": args.weights, "model": args.model, "sizes": all_sizes},
        )
        # Waves in dependency order: the QGN jobs need the calibration, budgets need `all`.
        waves = [
            [calibration, *(j for j in jobs if j.family == "baseline")],
            [j for j in jobs if j.family == "qgn" and j.config["scheme"] != "budget"],
            [j for j in jobs if j.family == "qgn" and j.config["scheme"] == "budget"],
        ]
        runner = Runner(args, started, len(jobs) + 1, calibration)
        for wave in waves:
            if args.jobs == 1:
                for job in wave:
                    runner.run(job)
            else:
                with ThreadPoolExecutor(args.jobs) as pool:
                    list(pool.map(runner.run, wave))
        calibration = calibration.result
    wall = time.perf_counter() - started
    report = {
        "machine": machine,
        "date": now.isoformat(timespec="seconds"),
        "command": "python -m benchmarks.run "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "weights": args.weights,
        "random_weights": args.weights == "random",
        "model": args.model,
        "settings": {
            "sizes": [f"{h}x{w}" for h, w in args.sizes],
            "pc_only_sizes": [f"{h}x{w}" for h, w in args.pc_sizes],
            "runs": args.runs,
            "scenes": args.scenes,
            "seeds": seeds,
            "thresholds": list(args.tau),
            "budget_fractions": list(args.fr),
            "quick": args.quick,
            "jobs": args.jobs,
        },
        "load_average": {"start": load_start, "end": load_average()},
        "calibration": calibration,
        "results": [
            {
                "name": job.name,
                "family": job.family,
                "height": job.height,
                "width": job.width,
                "pixels": job.height * job.width,
                "config": {k: v for k, v in job.config.items() if k not in ("scenes", "cost")},
                **job.result,
            }
            for job in jobs
        ],
        "wall_time_s": round(wall, 1),
    }
    paths = write_report(report, args.out, f"{machine['slug']}-{now.date().isoformat()}")
    print(paths["md"].read_text())
    say(f"wrote {', '.join(str(p) for p in paths.values())} in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
