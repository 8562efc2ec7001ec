"""Counts and times every inference response, errors included, and writes the access log.

It wraps the whole application, so limit checks, parameter errors and crashes are all counted
in `qgn_requests_total{api,scheme,code}`: `/v1/segment` as api="v1", the Open Inference
Protocol's `/v2/models/.../infer` as api="v2". On `/v1` the scheme label is the requested
scheme when it is a valid one (or the default when none was sent), else "none"; a V2 request
names its scheme in its body, so its route reports it in `request.state.scheme` once read.
"""

from __future__ import annotations

import json
import logging
import re
import time
from urllib.parse import parse_qs

from model.schemes import REQUESTABLE
from server.metrics import Metrics

access_log = logging.getLogger("qgn.access")
SEGMENT_PATH = "/v1/segment"
V2_INFER_PATH = re.compile(r"/v2/models/[^/]+(?:/versions/[^/]+)?/infer")


def scheme_label(query_string: bytes, default: str) -> str:
    values = parse_qs(query_string.decode("latin-1")).get("scheme")
    scheme = values[-1] if values else default
    return scheme if scheme in REQUESTABLE else "none"


def api_of(path: str) -> str | None:
    """ "v1" or "v2" for an inference path, None for every other path (not counted)."""
    if path == SEGMENT_PATH:
        return "v1"
    if V2_INFER_PATH.fullmatch(path):
        return "v2"
    return None


class RequestMetricsMiddleware:
    def __init__(self, app, metrics: Metrics, default_scheme: str):
        self.app = app
        self.metrics = metrics
        self.default_scheme = default_scheme

    async def __call__(self, scope, receive, send):
        api = api_of(scope["path"]) if scope["type"] == "http" else None
        if api is None:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
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
            if api == "v1":
                scheme = scheme_label(scope.get("query_string", b""), self.default_scheme)
            else:
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
