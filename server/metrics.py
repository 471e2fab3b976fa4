"""Prometheus metrics of one daemon, in a registry of its own (several apps can share a process)."""

from __future__ import annotations

from typing import Any

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

# The _created series double every counter and histogram for no use here.
prometheus_client.disable_created_metrics()

# Sub-millisecond to seconds: a small CNN forward is ~0.3 ms, a ResNet18 one ~50 ms.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SWITCH_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        # protocol: "http" or "grpc"; endpoint: a route's template or a registered gRPC method;
        # status: the HTTP status or the gRPC code's name. Every label is bounded.
        self.requests = Counter(
            "lcs_requests",
            "Requests by protocol, endpoint, model and status",
            ["protocol", "endpoint", "model", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "lcs_request_duration_seconds",
            "Request latency, receipt to response",
            ["protocol", "endpoint", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "lcs_queue_wait_seconds",
            "Time a request waited for a batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "lcs_inference_duration_seconds",
            "Forward pass of one batch, by tier (torch, onnx)",
            ["model", "tier"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "lcs_batch_size",
            "Images per forward pass",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.queue_depth = Gauge(
            "lcs_queue_depth", "Requests waiting for a forward pass", ["model"], registry=r
        )
        self.ready = Gauge(
            "lcs_ready", "1 when the model is loaded, warmed and not draining", registry=r
        )
        self.gamma = Gauge("lcs_gamma", "Current compression level γ", ["model"], registry=r)
        self.alpha = Gauge("lcs_alpha", "Current position α in the subspace", ["model"], registry=r)
        self.int8 = Gauge(
            "lcs_int8",
            "1 while the level is served in int8 (tier 2's variant)",
            ["model"],
            registry=r,
        )
        self.level_changes = Counter(
            "lcs_level_changes", "Level changes by reason", ["model", "reason"], registry=r
        )
        self.recompress = Histogram(
            "lcs_recompress_duration_seconds",
            "Time to compress the subspace to a new level",
            ["model"],
            buckets=SWITCH_BUCKETS,
            registry=r,
        )
        # Tier 2 (ONNX Runtime sessions of settled levels)
        self.tier2_prepare = Histogram(
            "lcs_tier2_prepare_duration_seconds",
            "Export, session and check of one level for tier 2",
            ["model"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60),
            registry=r,
        )
        self.tier2_cache_hits = Counter(
            "lcs_tier2_cache_hits",
            "Level changes served at once from a cached session",
            ["model"],
            registry=r,
        )
        self.tier2_cache_misses = Counter(
            "lcs_tier2_cache_misses",
            "Settled levels that needed a new session",
            ["model"],
            registry=r,
        )
        self.tier2_failures = Counter(
            "lcs_tier2_failures",
            "Tier-2 preparations or runs that failed (tier 1 kept serving), by reason",
            ["model", "reason"],
            registry=r,
        )
        self.tier2_cache_bytes = Gauge(
            "lcs_tier2_cache_bytes",
            "ONNX bytes held by cached tier-2 sessions",
            ["model"],
            registry=r,
        )
        self.rejected = Counter(
            "lcs_rejected_requests",
            "Requests refused before inference, by reason (errors.REASONS), over either protocol",
            ["reason"],
            registry=r,
        )
        self.in_place = Counter(
            "lcs_requests_in_place",
            "HTTP requests answered on their connection with no ASGI task (server.inplace): "
            "a lone client's, whose pass ran inline",
            registry=r,
        )
        self.torch_threads = Gauge("lcs_torch_threads", "torch intra-op threads", registry=r)
        self.model = Gauge(
            "lcs_model_info",
            "1 per served model version, with its architecture and checksum",
            ["model", "version", "arch", "family", "kind", "checksum", "dataset"],
            registry=r,
        )
        self.model_loads = Counter(
            "lcs_model_loads",
            "Model loads, replacements and unloads by outcome",
            ["action", "outcome"],
            registry=r,
        )
        self.model_resident = Gauge(
            "lcs_model_resident_bytes",
            "Measured resident memory of each loaded model (load growth + tier-2 sessions)",
            ["model"],
            registry=r,
        )
        # Controller
        self.readings = {
            name: Gauge(f"lcs_reading_{name}", doc, registry=r)
            for name, doc in (
                ("cpu_utilisation_ratio", "Smoothed CPU utilisation, 0–1"),
                ("cpu_pressure_ratio", "PSI cpu some avg10, 0–1"),
                ("load_average_1m", "1-minute load average"),
                ("memory_available_bytes", "Available memory (cgroup limit when set)"),
                ("memory_pressure_ratio", "PSI memory some avg10, 0–1"),
                ("battery_percent", "Battery charge (absent on mains-only machines)"),
                ("cpu_limit_cores", "cgroup CPU quota in cores"),
                ("cpu_other_cores", "Cores other work takes on the daemon's CPUs, smoothed"),
                ("cpu_own_cores", "Cores the daemon's process tree uses, smoothed"),
                ("cpu_free_cores", "Cores the daemon could use now (the share objective's budget)"),
            )
        }
        self.sensor_errors = Counter(
            "lcs_controller_sensor_errors",
            "Readings that failed, by sensor",
            ["sensor"],
            registry=r,
        )
        self.controller_restarts = Counter(
            "lcs_controller_restarts",
            "Controller iterations that crashed and were restarted",
            registry=r,
        )
        self.decisions = Counter(
            "lcs_controller_decisions",
            "Policy decisions by model and reason",
            ["model", "reason"],
            registry=r,
        )

    def for_model(self, name: str) -> ModelMetrics:
        return ModelMetrics(self, name)

    def forget_model(self, name: str) -> None:
        """Drop every series of an unloaded model: cardinality follows what is loaded."""
        for metric in self.per_model():
            for labels in list(metric._metrics):  # prometheus_client keeps children here
                if labels and labels[0] == name:
                    metric.remove(*labels)

    def per_model(self) -> list[Any]:
        return [
            self.queue_wait, self.inference, self.batch_size, self.queue_depth, self.gamma,
            self.alpha, self.int8, self.level_changes, self.recompress, self.tier2_prepare,
            self.tier2_cache_hits, self.tier2_cache_misses, self.tier2_failures,
            self.tier2_cache_bytes, self.model, self.model_resident, self.decisions,
        ]  # fmt: skip


class _Bound:
    """A labelled metric with the model's name already given: `.labels(*rest)`."""

    def __init__(self, metric: Any, model: str) -> None:
        self.metric, self.model = metric, model

    def labels(self, *rest: str) -> Any:
        return self.metric.labels(self.model, *rest)


class ModelMetrics:
    """One model's view of the metrics: the same names, the `model` label filled in."""

    def __init__(self, m: Metrics, name: str) -> None:
        self.name, self.registry = name, m.registry
        self.queue_wait = m.queue_wait.labels(name)
        self.inference = _Bound(m.inference, name)
        self.batch_size = m.batch_size.labels(name)
        self.queue_depth = m.queue_depth.labels(name)
        self.gamma, self.alpha = m.gamma.labels(name), m.alpha.labels(name)
        self.int8 = m.int8.labels(name)
        self.level_changes = _Bound(m.level_changes, name)
        self.recompress = m.recompress.labels(name)
        self.tier2_prepare = m.tier2_prepare.labels(name)
        self.tier2_cache_hits = m.tier2_cache_hits.labels(name)
        self.tier2_cache_misses = m.tier2_cache_misses.labels(name)
        self.tier2_failures = _Bound(m.tier2_failures, name)
        self.tier2_cache_bytes = m.tier2_cache_bytes.labels(name)
        self.resident = m.model_resident.labels(name)
        self.info = _Bound(m.model, name)
