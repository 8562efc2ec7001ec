"""The Prometheus metrics of QGN Serve, defined once, registered in a registry passed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

MIB = 2**20
# 1 MiB to 64 GiB in powers of two: peak memory per request spans that range across schemes,
# image sizes and devices.
PEAK_MEMORY_BUCKETS = tuple(float(MIB * 2**k) for k in range(17))
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
FRACTION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 0.9, 1.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.requests = Counter(
            "qgn_requests",
            "Segment responses by scheme and status code.",
            ["scheme", "code"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "qgn_request_duration_seconds",
            "End-to-end time of a segment request.",
            ["scheme"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference_duration = Histogram(
            "qgn_inference_duration_seconds",
            "Model time of a segment request.",
            ["scheme"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.peak_memory = Histogram(
            "qgn_inference_peak_memory_bytes",
            "Peak bytes allocated by one inference.",
            ["scheme"],
            buckets=PEAK_MEMORY_BUCKETS,
            registry=registry,
        )
        self.active_fraction = Histogram(
            "qgn_active_site_fraction",
            "Active sites over in-image sites, per quadtree level.",
            ["level"],
            buckets=FRACTION_BUCKETS,
            registry=registry,
        )
        self.inflight = Gauge(
            "qgn_inflight_requests", "Segment requests being handled.", registry=registry
        )
        self.queue_depth = Gauge(
            "qgn_queue_depth", "Segment requests waiting for the device.", registry=registry
        )
        self.budget_capped = Counter(
            "qgn_budget_capped",
            "Requests run under the server memory budget instead.",
            ["scheme"],
            registry=registry,
        )
        self.degraded = Counter(
            "qgn_degraded",
            "Requests retried under a tighter budget after running out of memory.",
            ["scheme"],
            registry=registry,
        )
        for scheme in ("all", "pc", "threshold", "budget"):  # zeros, not "no data", at start
            self.budget_capped.labels(scheme)
            self.degraded.labels(scheme)
        self.model_info = Gauge(
            "qgn_model_info",
            "The served model (value 1).",
            ["name", "version", "device", "weights_sha256"],
            registry=registry,
        )
