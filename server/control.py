"""The control flow, wired: readings → policy → level → recompress → swap, with metrics."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from server.runtime import OperatorPolicy, Runtime

log = logging.getLogger("lcs.server")


def latency_target_s(rt: Runtime) -> float:
    return rt.policy.latency_target_s or rt.settings.latency_target_ms / 1e3


async def apply_policy(rt: Runtime, policy: OperatorPolicy) -> None:
    """An operator's policy wins over the controller: fixed moves now, bounds clamp now."""
    rt.policy = policy
    if rt.controller is not None:
        rt.controller.operator_policy = _controller_policy(rt)
    if policy.mode == "fixed":
        assert policy.alpha is not None
        await rt.switch(policy.alpha, "operator_fixed")
        return
    alpha = rt.slot.current.alpha
    lo = policy.min_alpha if policy.min_alpha is not None else alpha
    hi = policy.max_alpha if policy.max_alpha is not None else alpha
    if not lo <= alpha <= hi:
        await rt.switch(min(max(alpha, lo), hi), "operator_bounds")


def start(rt: Runtime) -> Any:
    from controller.loop import Controller
    from controller.policy import LevelPoint, Profile, get_policy
    from controller.sensors import SystemReader

    reader = SystemReader(feedback=rt.feedback, on_error=lambda s: _sensor_error(rt, s))
    profile = Profile(
        [LevelPoint(p.alpha, p.gamma, p.latency_s, p.accuracy) for p in rt.profile],
        measured=None if rt.tier2 is None else rt.tier2.latency,  # tier 1 profiled, tier 2 now
    )
    ctl = Controller(
        read=reader.read,
        policy=get_policy(rt.settings.controller_policy),
        profile=profile,
        on_level=lambda alpha, reason: _on_level(rt, alpha, reason),
        interval_s=rt.settings.controller_interval_s,
        on_crash=lambda: _crashed(rt),
        on_readings=lambda r, d: _observe(rt, r, d),
    )
    ctl.operator_policy = _controller_policy(rt)
    ctl.start()
    return ctl


async def stop(rt: Runtime) -> None:
    await rt.controller.stop()


def _controller_policy(rt: Runtime) -> Any:
    from controller.policy import OperatorPolicy as ControllerPolicy

    p, s = rt.policy, rt.settings
    lo = p.min_alpha if p.min_alpha is not None else s.min_alpha
    hi = p.max_alpha if p.max_alpha is not None else s.max_alpha
    return ControllerPolicy(
        mode=p.mode,
        alpha=p.alpha,
        min_alpha=lo,
        max_alpha=hi,
        latency_target_s=latency_target_s(rt),
    )


_tasks: set[asyncio.Task[None]] = set()


def _on_level(rt: Runtime, alpha: float, reason: str) -> None:
    """Called by the controller on the event loop; the switch itself runs off the loop."""
    if rt.policy.mode == "fixed":
        return
    task = asyncio.get_running_loop().create_task(rt.switch(alpha, reason))
    _tasks.add(task)  # keep a reference until done
    task.add_done_callback(_tasks.discard)


def _observe(rt: Runtime, readings: Any, decision: Any) -> None:
    g = rt.metrics.readings
    for name, value in (
        ("cpu_utilisation_ratio", readings.cpu_utilisation),
        ("cpu_pressure_ratio", readings.cpu_pressure),
        ("load_average_1m", readings.load_average_1m),
        ("memory_available_bytes", readings.memory_available_bytes),
        ("memory_pressure_ratio", readings.memory_pressure),
        ("battery_percent", readings.battery_percent),
        ("cpu_limit_cores", readings.cgroup_cpu_limit_cores),
    ):
        if value is not None:
            g[name].set(value)
    if decision is not None:
        rt.metrics.decisions.labels(decision.reason).inc()


def _sensor_error(rt: Runtime, sensor: str) -> None:
    rt.metrics.sensor_errors.labels(sensor).inc()


def _crashed(rt: Runtime) -> None:
    rt.metrics.controller_restarts.inc()
    log.warning("controller iteration crashed; restarted")
