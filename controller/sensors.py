"""Sensors: one small reader per source; a source that fails is skipped, logged once, counted."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil

from controller import cgroup
from controller.cgroup import cpu_quota_cores
from controller.readings import Readings

__all__ = [
    "CpuUtilisation",
    "Ema",
    "Feedback",
    "SensorErrors",
    "SystemReader",
    "cpu_quota_cores",
    "psi_some_avg10",
]
log = logging.getLogger("lcs.controller")
T = TypeVar("T")

# The server's feedback: recent request latency p50, p95, p99 (seconds) and queue depth.
Feedback = Callable[[], tuple[float | None, float | None, float | None, int | None]]

# Errors that mean "this machine has no such source" (no PSI, no battery driver): stop asking.
_ABSENT = (FileNotFoundError, NotADirectoryError, NotImplementedError, AttributeError)


class SensorErrors(dict[str, int]):
    """Failures per sensor name. Each sensor is logged once, counted every time it fails, and
    reported to `on_error` (the server increments a Prometheus counter there)."""

    def __init__(self, on_error: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.on_error = on_error

    def record(self, sensor: str, error: BaseException) -> None:
        if sensor not in self:
            log.warning("sensor %s unavailable: %s: %s", sensor, type(error).__name__, error)
        self[sensor] = self.get(sensor, 0) + 1
        if self.on_error is not None:
            self.on_error(sensor)


class Ema:
    """Exponential moving average with a time constant, so the smoothing does not depend on
    how often it is sampled (the loop at 0.25 s and `--watch` at 1 s agree)."""

    def __init__(self, tau_s: float) -> None:
        self.tau_s = tau_s
        self.value: float | None = None
        self._at: float | None = None

    def update(self, sample: float, now: float) -> float:
        if self.value is None or self._at is None:
            self.value = sample
        else:
            weight = 1.0 - math.exp(-max(0.0, now - self._at) / self.tau_s)
            self.value += weight * (sample - self.value)
        self._at = now
        return self.value


class CpuUtilisation:
    """Host CPU utilisation 0–1, smoothed. psutil's cpu_percent(interval=None) compares with
    its previous call, so the first value compares with nothing: it is taken here and dropped."""

    def __init__(self, ps: Any, tau_s: float) -> None:
        self.ps, self.ema = ps, Ema(tau_s)
        ps.cpu_percent(interval=None)

    def read(self, now: float) -> float:
        return self.ema.update(self.ps.cpu_percent(interval=None) / 100.0, now)


class CgroupCpuUsage:
    """CPU cores used by the cgroup that holds the quota, from its cumulative CPU time."""

    def __init__(self, tau_s: float) -> None:
        self.ema = Ema(tau_s)
        self._last: tuple[cgroup.CpuQuota, float, float] | None = None

    def read(self, quota: cgroup.CpuQuota, now: float) -> float | None:
        used = cgroup.cpu_usage_seconds(quota)
        last, self._last = self._last, (quota, used, now)
        if last is None or last[0] != quota or now <= last[2]:
            return self.ema.value  # a rate needs two samples of the same cgroup
        return self.ema.update(max(0.0, used - last[1]) / (now - last[2]), now)


def psi_some_avg10(path: Path) -> float:
    """The "some avg10" share from a PSI file (/proc/pressure/cpu), as a fraction 0–1."""
    for line in path.read_text().splitlines():
        if line.startswith("some"):
            fields = dict(f.split("=") for f in line.split()[1:])
            return float(fields["avg10"]) / 100.0
    raise ValueError(f"no 'some' line in {path}")


def read_memory(ps: Any) -> tuple[int, int]:
    """Host memory (available, total) in bytes."""
    mem = ps.virtual_memory()
    return int(mem.available), int(mem.total)


def read_battery(ps: Any) -> tuple[float, bool] | None:
    """(percent, charging); None when there is no battery, which means mains power."""
    battery = ps.sensors_battery()
    if battery is None:
        return None
    return float(battery.percent), bool(battery.power_plugged)


class SystemReader:
    """Builds a Readings snapshot. Everything it touches is passed in, so tests point it at
    fixture trees, fake psutil modules and a fake clock.

    `read()` costs a few hundred microseconds (procfs and cgroup files, no disk): cheap enough
    to run on the event loop every 250 ms."""

    def __init__(
        self,
        *,
        proc_root: str = "/proc",
        cgroup_root: str = "/sys/fs/cgroup",
        ps: Any = psutil,
        feedback: Feedback | None = None,
        on_error: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        smoothing_s: float = 1.0,
    ) -> None:
        self.proc, self.cgroup_root = Path(proc_root), cgroup_root
        self.ps, self.feedback, self.clock = ps, feedback, clock
        self.errors = SensorErrors(on_error)
        self.absent: set[str] = set()  # sources this machine does not have: not asked again
        self._cgroup: cgroup.Cgroup | None = None
        self._cpu = self._sample("cpu", lambda: CpuUtilisation(ps, smoothing_s))
        self._cgroup_cpu = CgroupCpuUsage(smoothing_s)

    def read(self) -> Readings:
        now = self.clock()
        values: dict[str, Any] = {"time": now}
        cpu = self._cpu
        if cpu is not None:
            values["cpu_utilisation"] = self._sample("cpu", lambda: cpu.read(now))
        values["load_average_1m"] = self._sample("load", lambda: float(self.ps.getloadavg()[0]))
        values["cpu_pressure"] = self._sample("psi_cpu", lambda: self._psi("cpu"))
        values["memory_pressure"] = self._sample("psi_memory", lambda: self._psi("memory"))
        mem = self._sample("memory", lambda: read_memory(self.ps))
        if mem is not None:
            values["memory_available_bytes"], values["memory_total_bytes"] = mem
        battery = self._sample("battery", lambda: read_battery(self.ps))
        if battery is not None:
            values["battery_percent"], values["battery_charging"] = battery
        values.update(self._read_cgroup(now))
        values.update(self._read_feedback())
        return Readings(**values)

    def _psi(self, resource: str) -> float:
        return psi_some_avg10(self.proc / "pressure" / resource)

    def _read_cgroup(self, now: float) -> dict[str, Any]:
        cg = self._sample("cgroup", self._locate)
        if cg is None:
            return {}
        values: dict[str, Any] = {}
        quota = self._sample("cgroup_cpu", lambda: cgroup.cpu_quota(cg))
        if quota is not None:
            values["cgroup_cpu_limit_cores"] = quota.cores
            values["cgroup_cpu_usage_cores"] = self._sample(
                "cgroup_cpu_usage", lambda: self._cgroup_cpu.read(quota, now)
            )
        mem = self._sample("cgroup_memory", lambda: cgroup.memory_use(cg))
        if mem is not None:
            values["cgroup_memory_limit_bytes"] = mem.limit_bytes
            values["cgroup_memory_current_bytes"] = mem.working_set_bytes
        return values

    def _read_feedback(self) -> dict[str, Any]:
        fb = None if self.feedback is None else self._sample("feedback", self.feedback)
        if fb is None:
            return {}
        p50, p95, p99, depth = fb
        return {
            "latency_p50_s": p50,
            "latency_p95_s": p95,
            "latency_p99_s": p99,
            "queue_depth": depth,
        }

    def _locate(self) -> cgroup.Cgroup:
        if self._cgroup is None:  # a process does not change cgroup: find it once
            self._cgroup = cgroup.locate(str(self.proc), self.cgroup_root)
        return self._cgroup

    def _sample(self, name: str, fn: Callable[[], T]) -> T | None:
        if name in self.absent:
            return None
        try:
            return fn()
        except Exception as e:  # any sensor may fail; the others must still be read
            if isinstance(e, _ABSENT):
                self.absent.add(name)
            self.errors.record(name, e)
            return None
