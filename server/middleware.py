"""Counts and times every `/v1/segment` response, errors included, and writes the access log.

It wraps the whole application, so limit checks, parameter errors and crashes are all counted
in `qgn_requests_total{scheme,code}`. The scheme label is the requested scheme when it is a
valid one (or the default when none was sent), else "none".
"""

from __future__ import annotations

import json
import logging
import time
from urllib.parse import parse_qs

from model.schemes import REQUESTABLE
from server.metrics import Metrics

access_log = logging.getLogger("qgn.access")
SEGMENT_PATH = "/v1/segment"


def scheme_label(query_string: bytes, default: str) -> str:
    values = parse_qs(query_string.decode("latin-1")).get("scheme")
    scheme = values[-1] if values else default
    return scheme if scheme in REQUESTABLE else "none"


class SegmentMetricsMiddleware:
    def __init__(self, app, metrics: Metrics, default_scheme: str):
        self.app = app
        self.metrics = metrics
        self.default_scheme = default_scheme

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != SEGMENT_PATH:
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
            scheme = scheme_label(scope.get("query_string", b""), self.default_scheme)
            self.metrics.requests.labels(scheme, str(status["code"])).inc()
            self.metrics.request_duration.labels(scheme).observe(seconds)
            state = scope.get("state") or {}
            access_log.info(
                json.dumps(
                    {
                        "method": scope.get("method"),
                        "path": scope["path"],
                        "status": status["code"],
                        "scheme": scheme,
                        "latency_ms": round(seconds * 1000, 2),
                        "peak_memory_bytes": state.get("peak_memory_bytes"),
                        "client": (scope.get("client") or [None])[0],
                    }
                )
            )
