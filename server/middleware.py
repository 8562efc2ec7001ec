"""Counts and times every inference response, errors included, and writes the access log.

It wraps the whole application, so limit checks, parameter errors and crashes are all counted
in `qgn_requests_total{api,scheme,code}`: `/v1/segment` as api="v1", the Open Inference
Protocol's `/v2/models/.../infer` as api="v2". The scheme label is what the request's route
put in `request.state.scheme` once it knew a valid one (`/v1`: the query's `scheme`, or the
default; V2: its body's parameter), else "none": a request refused before that point. It
also marks the request's arrival in `request.state.arrived`, which a deadline counts from.
"""

from __future__ import annotations

import json
import logging
import re
import time

from server.metrics import Metrics

access_log = logging.getLogger("qgn.access")
SEGMENT_PATH = "/v1/segment"
V2_INFER_PATH = re.compile(r"/v2/models/[^/]+(?:/versions/[^/]+)?/infer")


def api_of(path: str) -> str | None:
    """ "v1" or "v2" for an inference path, None for every other path (not counted)."""
    if path == SEGMENT_PATH:
        return "v1"
    if V2_INFER_PATH.fullmatch(path):
        return "v2"
    return None


class RequestMetricsMiddleware:
    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        api = api_of(scope["path"]) if scope["type"] == "http" else None
        if api is None:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        # The request's arrival, for both APIs: a scheme=auto deadline counts from it.
        scope.setdefault("state", {})["arrived"] = time.monotonic()
        status = {"code": 500}

        async def send_and_record(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.metrics.inflight.inc()
        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.inflight.dec()
            seconds = time.perf_counter() - start
            state = scope.get("state") or {}
            scheme = state.get("scheme", "none")
            self.metrics.requests.labels(api, scheme, str(status["code"])).inc()
            self.metrics.request_duration.labels(api, scheme).observe(seconds)
            access_log.info(
                json.dumps(
                    {
                        "method": scope.get("method"),
                        "path": scope["path"],
                        "api": api,
                        "status": status["code"],
                        "scheme": scheme,
                        "latency_ms": round(seconds * 1000, 2),
                        "peak_memory_bytes": state.get("peak_memory_bytes"),
                        "client": (scope.get("client") or [None])[0],
                    }
                )
            )
