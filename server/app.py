"""The QGN Serve application: `create_app()` builds it, the lifespan loads the model once.

Start-up checks the weights against their model card synchronously (a bad file stops the
process with a clear message), then calibrates the memory cost on the device and runs a
warm-up in the background; `/readyz` says 503 until that is done, `/healthz` answers at once.
"""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi_offline import FastAPIOffline
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException

from model.cost import calibrate
from model.weights import load_weights
from server.errors import (
    ApiError,
    api_error_handler,
    http_error_handler,
    unexpected_error_handler,
    validation_error_handler,
)
from server.inference import Engine, pick_device
from server.metrics import Metrics
from server.middleware import RequestMetricsMiddleware
from server.recent import RecentRequests
from server.routes import health, model, page, segment, v2
from server.settings import Settings, get_settings

log = logging.getLogger("qgn.server")


def _prepare(engine: Engine) -> None:
    try:
        engine.model.cost = calibrate(engine.model, engine.device)
        engine.warm_up()
        log.info("ready on %s: %s", engine.device, engine.card.get("weights_file"))
    except Exception:  # the server stays up and unready; the log says why
        log.exception("warm-up failed; /readyz stays 503")


def create_app(
    settings: Settings | None = None, registry: CollectorRegistry | None = None
) -> FastAPI:
    settings = settings or get_settings()
    metrics = Metrics(registry or CollectorRegistry())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        device = pick_device(settings.device)
        model_, card = load_weights(settings.weights, device)
        if card.get("config", {}).get("num_classes", 0) > 255:
            raise RuntimeError("masks are 8-bit PNGs: at most 255 classes can be served")
        engine = Engine(model_, card, device, settings, metrics)
        app.state.engine = engine
        metrics.model_info.labels(
            engine.name, engine.version, device.type, card["weights_sha256"]
        ).set(1)
        warm = threading.Thread(target=_prepare, args=(engine,), name="qgn-warm-up", daemon=True)
        warm.start()
        yield
        warm.join()
        engine.shutdown()

    # /docs with Swagger UI's assets served from here (no CDN); ReDoc's bundle fetches its
    # logo from a CDN, so there is no /redoc.
    app = FastAPIOffline(
        redoc_url=None,
        title="QGN Serve",
        version="0.1.0",
        summary="Semantic segmentation as a quadtree; memory per request is a request parameter.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.recent = RecentRequests()
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)
    for router in (segment.router, model.router, health.router, v2.router, page.router):
        app.include_router(router)
    app.mount("/static", page.static_files(), name="static")
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    return app
