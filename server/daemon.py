"""The daemon: start-up wiring of models/ and controller/, and the state every route reads."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch
from starlette.types import Scope

from controller.loop import Controller, Plant
from controller.policy import Decision
from controller.readings import Readings
from server.admission import DecodeBudget
from server.engine import inference_executor
from server.exporter import Exporter
from server.metrics import Metrics
from server.middleware import request_deadline
from server.registry import ModelRegistry
from server.served import ServedModel, Shared
from server.settings import Settings

log = logging.getLogger("lcs.server")

READING_GAUGES = (
    ("cpu_utilisation_ratio", "cpu_utilisation"),
    ("cpu_pressure_ratio", "cpu_pressure"),
    ("load_average_1m", "load_average_1m"),
    ("memory_available_bytes", "memory_available_bytes"),
    ("memory_pressure_ratio", "memory_pressure"),
    ("battery_percent", "battery_percent"),
    ("cpu_limit_cores", "cgroup_cpu_limit_cores"),
    ("cpu_other_cores", "other_cpu_cores"),
    ("cpu_own_cores", "own_cpu_cores"),
    ("cpu_free_cores", "cpu_free_cores"),
)


@dataclass(eq=False)
class Daemon:
    settings: Settings
    metrics: Metrics
    shared: Shared
    registry: ModelRegistry
    controller: Controller | None = None
    ready: bool = False
    draining: bool = False
    not_ready_reason: str = "starting"
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    @property
    def decode_pool(self) -> ThreadPoolExecutor:
        """Where large request bodies are parsed (OIP JSON, gRPC): off the event loop."""
        return self.shared.decode_pool

    def deadline(self, scope: Scope | None = None) -> float:
        """The time.monotonic() instant a request must be answered by: the timeout after its
        first byte arrived (the connection layer stamps it), else after now."""
        if scope is None:
            return time.monotonic() + self.settings.request_timeout_s
        return request_deadline(scope, self.settings.request_timeout_s)

    def in_flight(self) -> int:
        return sum(m.service.in_flight for m in self.registry.models.values())

    async def wait_idle(self, timeout_s: float) -> None:
        """Drain: wait until every accepted request has been answered (bounded)."""
        deadline = time.monotonic() + timeout_s
        while self.in_flight() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    # Controller wiring: readings → policy → level, per model.

    def _plant(self, model: ServedModel) -> Plant:
        return Plant(
            name=model.name,
            profile=lambda: model.service.profile,  # int8 points join it while serving
            current_alpha=lambda: model.level.current.alpha,
            operator=lambda: model.level.policy,
            feedback=model.service.feedback,
            on_level=lambda alpha, reason: self._on_level(model, alpha, reason),
            current_precision=model.service.precision,
            on_point=lambda alpha, precision, reason: self._on_level(
                model, alpha, reason, precision
            ),
        )

    def _on_level(
        self, model: ServedModel, alpha: float, reason: str, precision: str | None = None
    ) -> None:
        """Called by the controller on the event loop; the switch itself runs off the loop."""
        if model.level.policy.mode == "fixed":
            return
        switch = model.level.switch(alpha, reason, precision)
        task = asyncio.get_running_loop().create_task(switch)
        self._tasks.add(task)  # keep a reference until done
        task.add_done_callback(self._tasks.discard)

    def _added(self, model: ServedModel) -> None:
        ctl, service = self.controller, model.service
        if ctl is not None:
            ctl.add(self._plant(model))
            profiled = service.predict  # until the controller's first step has readings

            def predict(alpha: float) -> float | None:
                seen = ctl.predicted_latency(model.name, alpha)
                return profiled(alpha) if seen is None else seen

            service.predict = predict

    def _removed(self, name: str) -> None:
        if self.controller is not None:
            self.controller.remove(name)

    def _observe(self, readings: Readings, decisions: dict[str, Decision]) -> None:
        gauges = self.metrics.readings
        for gauge, attr in READING_GAUGES:
            value = getattr(readings, attr, None)
            if value is not None:
                gauges[gauge].set(value)
        for name, d in decisions.items():
            if name in self.registry.models:  # never a series for a model already gone
                self.metrics.decisions.labels(name, d.reason).inc()


async def start(settings: Settings, metrics: Metrics) -> Daemon:
    """threads → shared pools → controller → every model (load, warm, profile) → ready."""
    threads = inference_threads(settings)
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    shared = Shared(
        settings,
        metrics,
        threads,
        inference_executor(threads),
        ThreadPoolExecutor(2, thread_name_prefix="lcs-decode"),
        ThreadPoolExecutor(1, thread_name_prefix="lcs-decode-large"),
        DecodeBudget(settings.decode_budget_bytes()),
        Exporter(settings.tier2_exporter_idle_s) if settings.tier2_enabled else None,
    )
    registry = ModelRegistry(
        shared,
        settings.model_sources(),
        repository=settings.model_repository,
        default=settings.default_model,
        budget_bytes=memory_budget_bytes(settings),
    )
    daemon = Daemon(settings, metrics, shared, registry)
    registry.on_added, registry.on_removed = daemon._added, daemon._removed
    metrics.torch_threads.set(threads)
    if settings.controller_enabled:
        daemon.controller = _controller(daemon)
    try:
        await daemon.registry.start()
    except BaseException:
        await stop(daemon)
        raise
    if daemon.controller is not None:
        daemon.controller.start()
    daemon.ready, daemon.not_ready_reason = True, ""
    metrics.ready.set(1)
    log.info("ready", extra={"models": daemon.registry.names(), "threads": threads})
    return daemon


def _controller(daemon: Daemon) -> Controller:
    from controller.sensors import SystemReader

    m = daemon.metrics

    def crashed() -> None:
        m.controller_restarts.inc()
        log.warning("controller iteration crashed; restarted")

    reader = SystemReader(on_error=lambda sensor: m.sensor_errors.labels(sensor).inc())
    return Controller(
        read=reader.read,
        policy=daemon.settings.controller_policy,
        interval_s=daemon.settings.controller_interval_s,
        on_crash=crashed,
        on_readings=daemon._observe,
    )


async def stop(daemon: Daemon) -> None:
    daemon.ready, daemon.not_ready_reason = False, "shutting down"
    daemon.metrics.ready.set(0)
    if daemon.controller is not None:
        await daemon.controller.stop()
    await daemon.registry.close()
    if daemon.shared.exporter is not None:
        daemon.shared.exporter.close()
    daemon.shared.inference.shutdown(wait=False, cancel_futures=True)
    daemon.shared.decode_pool.shutdown(wait=False, cancel_futures=True)
    daemon.shared.large_decode_pool.shutdown(wait=False, cancel_futures=True)


def inference_threads(settings: Settings) -> int:
    """torch intra-op threads: the setting, else the CPU quota (cgroup cpu.max, affinity)."""
    if settings.torch_threads:
        return settings.torch_threads
    from controller.sensors import cpu_quota_cores

    return cpu_quota_cores()


def memory_budget_bytes(settings: Settings) -> int | None:
    """The setting, else 80 % of the cgroup memory limit (the rest for requests and decoding)."""
    if settings.memory_budget_mb is not None:
        return int(settings.memory_budget_mb * 2**20)
    from controller import cgroup

    try:
        limit = cgroup.memory_limit_bytes(cgroup.locate())
    except (OSError, ValueError):
        return None
    return None if limit is None else int(0.8 * limit)
