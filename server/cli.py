"""The `qgn` command: `serve` and `segment` here, beside the server; `train`, `eval` and
`demo` come from `model.cli`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from model import cli as model_cli
from model.scheme_request import REQUESTABLE, SchemeError, SchemeRequest
from model.schemes import build_scheme
from model.weights import DEFAULT_WEIGHTS, WeightsError
from server.errors import ApiError

# Seconds uvicorn waits, after the drain, for the answers still being written.
ANSWERS_GRACE_S = 2


def _serve(args: argparse.Namespace) -> int:
    """Validates the settings, sets torch's threads per worker, then runs uvicorn with one
    process (one model per device; `QGN_WORKERS` are threads inside it)."""
    import logging

    import torch
    import uvicorn

    from server.settings import SettingsError, get_settings
    from server.stopping import DrainingServer

    try:
        settings = get_settings()
    except SettingsError as error:
        print(f"qgn serve: {error}", file=sys.stderr)
        return 2
    if not settings.weights.is_file():
        print(f"qgn serve: QGN_WEIGHTS={settings.weights}: no such file", file=sys.stderr)
        return 2
    from server.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    threads = settings.threads_per_worker()
    torch.set_num_threads(threads)
    logging.getLogger("qgn.server").info(
        "%d inference worker(s), %d torch thread(s) each", settings.workers, threads
    )
    config = uvicorn.Config(
        create_app(settings),
        host=args.host,
        port=args.port,
        access_log=False,  # server.middleware writes one structured line per request
        timeout_graceful_shutdown=ANSWERS_GRACE_S,
        log_config=None,
    )
    server = DrainingServer(config, settings.drain_timeout_s)
    server.run()
    return 0 if server.started else 3


def _segment(args: argparse.Namespace) -> int:
    """The server's pipeline on one local file, without HTTP."""
    import json

    import numpy as np

    from model.weights import load_weights
    from server.images import encode_mask_png, load_image

    wanted = SchemeRequest(args.scheme, args.threshold, args.budget_mb)
    model, card = load_weights(args.weights)
    image = load_image(Path(args.image).read_bytes(), max_pixels=10**9)
    pred = model.predict(image, build_scheme(wanted))
    Path(args.out).write_bytes(encode_mask_png(pred.mask.numpy().astype(np.uint8), card["palette"]))
    stats = {
        **pred.scheme.as_dict(),
        "width": image.shape[1],
        "height": image.shape[0],
        "latency_ms": round(pred.latency_s * 1000, 2),
        "peak_memory_bytes": pred.peak_bytes,
        "active_sites": pred.active_sites,
        "leaves": len(pred.leaves),
        "mask": args.out,
    }
    print(json.dumps(stats))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qgn", description="QGN Serve: train, evaluate and serve a quadtree segmenter."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    model_cli.add_commands(commands)

    serve = commands.add_parser("serve", help="run the HTTP server (settings from QGN_* env)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=_serve)

    segment = commands.add_parser("segment", help="segment one image file, no HTTP")
    segment.add_argument("image")
    segment.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    # auto is chosen by a server from what its other requests leave: not for one local file.
    segment.add_argument("--scheme", default="pc", choices=[s for s in REQUESTABLE if s != "auto"])
    segment.add_argument("--threshold", type=float, default=None)
    segment.add_argument("--budget-mb", type=float, default=None)
    segment.add_argument("-o", "--out", default="mask.png")
    segment.set_defaults(run=_segment)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ApiError, SchemeError) as error:
        print(f"qgn {args.command}: {error.message}", file=sys.stderr)
    except (WeightsError, FileNotFoundError, ValueError, KeyError) as error:
        print(f"qgn {args.command}: {error}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
