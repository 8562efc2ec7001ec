"""The costs of the last requests, for the page's strip chart (`GET /v1/recent`).

A bounded ring in memory: it answers "what did the last requests cost" without a Prometheus
and Grafana running, and forgets the rest. Filled from the `/v1/segment` route once a
prediction is made; read from any thread, so it holds a lock.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from pydantic import BaseModel, Field

from model.qgn import Prediction

RECENT_SIZE = 200


class RecentRequest(BaseModel):
    scheme: str
    peak_memory_bytes: int
    latency_ms: float
    time: float = Field(description="when the answer was ready, Unix seconds")


class RecentList(BaseModel):
    size: int = Field(description="how many requests the server keeps")
    requests: list[RecentRequest] = Field(description="oldest first")


class RecentRequests:
    def __init__(self, size: int = RECENT_SIZE):
        self.size = size
        self._entries: deque[RecentRequest] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, prediction: Prediction) -> None:
        entry = RecentRequest(
            scheme=prediction.scheme.name,
            peak_memory_bytes=prediction.peak_bytes,
            latency_ms=round(prediction.latency_s * 1000, 3),
            time=round(time.time(), 3),
        )
        with self._lock:
            self._entries.append(entry)

    def latest(self, limit: int) -> RecentList:
        """The last `limit` requests, oldest first."""
        with self._lock:
            entries = list(self._entries)
        return RecentList(size=self.size, requests=entries[-limit:] if limit > 0 else [])
