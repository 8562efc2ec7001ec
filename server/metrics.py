"""The Prometheus metrics of QGN Serve, defined once, registered in a registry passed in.

The per-request metrics carry `api`: "v1" for `/v1/segment`, "v2" for the Open Inference
Protocol's infer; queue and in-flight gauges count the requests of both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from model.scheme_request import MIB, REQUESTABLE

if TYPE_CHECKING:
    from model.qgn import Prediction

# 1 MiB to 64 GiB in powers of two: peak memory per request spans that range across schemes,
# image sizes and devices.
PEAK_MEMORY_BUCKETS = tuple(float(MIB * 2**k) for k in range(17))
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
FRACTION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 0.9, 1.0)
# Measured over predicted peak: below 1 the reservation held with room to spare, above 1 the
# request took more than admission reserved for it.
PREDICTION_RATIO_BUCKETS = (0.1, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.25, 1.5, 2)
APIS = ("v1", "v2")


class Metrics:
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry

        def gauge(name: str, documentation: str) -> Gauge:
            return Gauge(name, documentation, registry=registry)

        self.requests = Counter(
            "qgn_requests",
            "Inference responses by API, scheme and status code.",
            ["api", "scheme", "code"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "qgn_request_duration_seconds",
            "End-to-end time of an inference request.",
            ["api", "scheme"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.inference_duration = Histogram(
            "qgn_inference_duration_seconds",
            "Model time of an inference request.",
            ["api", "scheme"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.peak_memory = Histogram(
            "qgn_inference_peak_memory_bytes",
            "Peak bytes allocated by one inference.",
            ["api", "scheme"],
            buckets=PEAK_MEMORY_BUCKETS,
            registry=registry,
        )
        self.active_fraction = Histogram(
            "qgn_active_site_fraction",
            "Active sites over in-image sites, per quadtree level.",
            ["api", "level"],
            buckets=FRACTION_BUCKETS,
            registry=registry,
        )
        self.inflight = gauge("qgn_inflight_requests", "Inference requests being handled.")
        self.queue_depth = gauge("qgn_queue_depth", "Inference requests waiting for the device.")
        self.budget_capped = Counter(
            "qgn_budget_capped",
            "Requests run under the server memory budget instead.",
            ["api", "scheme"],
            registry=registry,
        )
        self.degraded = Counter(
            "qgn_degraded",
            "Requests retried under a tighter budget after running out of memory.",
            ["api", "scheme"],
            registry=registry,
        )
        self.auto_choices = Counter(
            "qgn_auto_choices",
            "scheme=auto: the setting chosen at admission, and what kept a more accurate one "
            "from running (best: nothing; memory, max_memory, deadline).",
            ["setting", "reason"],
            registry=registry,
        )
        for api in APIS:  # zeros, not "no data", at start
            for scheme in REQUESTABLE:
                self.budget_capped.labels(api, scheme)
                self.degraded.labels(api, scheme)
        self.workers = gauge("qgn_workers", "Inference workers on the device (QGN_WORKERS).")
        self.busy_workers = gauge("qgn_busy_workers", "Inference workers running a request now.")
        self.device_memory_budget = gauge(
            "qgn_device_memory_budget_bytes",
            "What the requests running at once may hold together (QGN_DEVICE_MEMORY_MB).",
        )
        self.admitted_bytes = gauge(
            "qgn_admitted_bytes", "The sum of the predicted peaks of the requests running now."
        )
        self.device_peak_memory = gauge(
            "qgn_device_peak_memory_bytes",
            "Device-wide peak since start: the CUDA allocator's (the CPU has no such figure).",
        )
        self.prediction_ratio = Histogram(
            "qgn_peak_prediction_ratio",
            "Measured over predicted peak memory of one inference.",
            ["scheme"],
            buckets=PREDICTION_RATIO_BUCKETS,
            registry=registry,
        )
        self.model_info = Gauge(
            "qgn_model_info",
            "The served model (value 1).",
            ["name", "version", "device", "weights_sha256"],
            registry=registry,
        )

    def observe(self, api: str, requested: str, prediction: Prediction) -> None:
        """One inference's cost, under the scheme that ran (`requested` names the scheme asked
        for: a degraded request ran a budget instead)."""
        ran = prediction.scheme
        self.inference_duration.labels(api, ran.name).observe(prediction.latency_s)
        self.peak_memory.labels(api, ran.name).observe(prediction.peak_bytes)
        for level, fraction in enumerate(prediction.active_fraction):
            self.active_fraction.labels(api, str(level)).observe(fraction)
        if ran.capped:
            self.budget_capped.labels(api, ran.name).inc()
        if ran.degraded:
            self.degraded.labels(api, requested).inc()
