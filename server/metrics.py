"""Prometheus metrics of one daemon, in a registry of its own (several apps can share a process)."""

from __future__ import annotations

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
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
        self.requests = Counter(
            "lcs_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            "lcs_request_duration_seconds",
            "Request latency, receipt to response",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "lcs_queue_wait_seconds",
            "Time a request waited for a batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "lcs_inference_duration_seconds",
            "Forward pass of one batch, by tier (torch, onnx)",
            ["tier"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "lcs_batch_size",
            "Images per forward pass",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.queue_depth = Gauge(
            "lcs_queue_depth", "Requests waiting for a forward pass", registry=r
        )
        self.ready = Gauge(
            "lcs_ready", "1 when the model is loaded, warmed and not draining", registry=r
        )
        self.gamma = Gauge("lcs_gamma", "Current compression level γ", registry=r)
        self.alpha = Gauge("lcs_alpha", "Current position α in the subspace", registry=r)
        self.level_changes = Counter(
            "lcs_level_changes", "Level changes by reason", ["reason"], registry=r
        )
        self.recompress = Histogram(
            "lcs_recompress_duration_seconds",
            "Time to compress the subspace to a new level",
            buckets=SWITCH_BUCKETS,
            registry=r,
        )
        # Tier 2 (ONNX Runtime sessions of settled levels)
        self.tier2_prepare = Histogram(
            "lcs_tier2_prepare_duration_seconds",
            "Export, session and check of one level for tier 2",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 60),
            registry=r,
        )
        self.tier2_cache_hits = Counter(
            "lcs_tier2_cache_hits", "Level changes served at once from a cached session", registry=r
        )
        self.tier2_cache_misses = Counter(
            "lcs_tier2_cache_misses", "Settled levels that needed a new session", registry=r
        )
        self.tier2_failures = Counter(
            "lcs_tier2_failures",
            "Tier-2 preparations or runs that failed (tier 1 kept serving), by reason",
            ["reason"],
            registry=r,
        )
        self.tier2_cache_bytes = Gauge(
            "lcs_tier2_cache_bytes", "ONNX bytes held by cached tier-2 sessions", registry=r
        )
        self.rejected = Counter(
            "lcs_rejected_requests", "Requests refused before inference", ["reason"], registry=r
        )
        self.torch_threads = Gauge("lcs_torch_threads", "torch intra-op threads", registry=r)
        self.model = Info("lcs_model", "The served model", registry=r)
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
            "lcs_controller_decisions", "Policy decisions by reason", ["reason"], registry=r
        )
