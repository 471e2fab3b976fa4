"""Sensors: one small reader per source; a source that fails is skipped, logged once, counted."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil

from controller import cgroup
from controller.cgroup import cpu_quota_cores
from controller.cpushare import CpuShare, affinity
from controller.readings import Readings

__all__ = ["SystemReader", "cpu_quota_cores", "psi_some_avg10"]
log = logging.getLogger("lcs.controller")


def psi_some_avg10(path: Path) -> float:
    """The "some avg10" share from a PSI file (/proc/pressure/cpu), as a fraction 0–1."""
    for line in path.read_text().splitlines():
        if line.startswith("some"):
            fields = dict(f.split("=") for f in line.split()[1:])
            return float(fields["avg10"]) / 100
    raise ValueError(f"no 'some' line in {path}")


class SystemReader:
    """Builds a Readings snapshot. Everything it touches is passed in, so tests point it at
    fixture files and fake psutil modules."""

    def __init__(
        self,
        *,
        proc_root: str = "/proc",
        cgroup_root: str = "/sys/fs/cgroup",
        ps: ModuleType | Any = psutil,
        on_error: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        smoothing: float = 0.3,
        pid: int | None = None,
        cpus: Callable[[], set[int]] = affinity,
        cpu_tau_s: float = 0.5,
    ) -> None:
        self.proc = Path(proc_root)
        self.ps, self.on_error, self.clock = ps, on_error, clock
        self.smoothing = smoothing
        self.errors: dict[str, int] = {}
        self.missing: set[str] = set()  # sources this machine does not have: not retried
        self._cpu: float | None = None
        self._paths: cgroup.CgroupPaths | None = None
        self._cgroup_root = cgroup_root
        self.cpus = cpus
        self.share = CpuShare(
            proc_root=proc_root,
            ps=ps,
            pid=os.getpid() if pid is None else pid,
            cpus=cpus,
            clock=clock,
            tau_s=cpu_tau_s,
        )
        self._sample("cpu_share", self.share.sample)  # the baseline the next read compares to
        # psutil's first cpu_percent() compares against nothing: prime it and discard it.
        self._sample("cpu", lambda: self.ps.cpu_percent(interval=None))

    def read(self) -> Readings:
        values: dict[str, Any] = {}
        cpu = self._sample("cpu", lambda: self.ps.cpu_percent(interval=None) / 100)
        if cpu is not None:
            self._cpu = cpu if self._cpu is None else self._cpu + self.smoothing * (cpu - self._cpu)
        values["cpu_utilisation"] = self._cpu
        values["load_average_1m"] = self._sample("load", lambda: self.ps.getloadavg()[0])
        values["cpu_pressure"] = self._sample(
            "psi_cpu", lambda: psi_some_avg10(self.proc / "pressure" / "cpu")
        )
        values["memory_pressure"] = self._sample(
            "psi_memory", lambda: psi_some_avg10(self.proc / "pressure" / "memory")
        )
        mem = self._sample("memory", self.ps.virtual_memory)
        if mem is not None:
            values["memory_available_bytes"] = int(mem.available)
            values["memory_total_bytes"] = int(mem.total)
        battery = self._sample("battery", self.ps.sensors_battery)
        if battery is not None:  # None: no battery, i.e. mains power
            values["battery_percent"] = float(battery.percent)
            values["battery_charging"] = bool(battery.power_plugged)
        paths = self._sample("cgroup", self._locate)
        if paths is not None:
            values["cgroup_cpu_limit_cores"] = self._sample(
                "cgroup_cpu", lambda: cgroup.cpu_limit_cores(paths)
            )
            values["cgroup_memory_limit_bytes"] = self._sample(
                "cgroup_memory", lambda: cgroup.memory_limit_bytes(paths)
            )
            values["cgroup_memory_current_bytes"] = self._sample(
                "cgroup_memory", lambda: cgroup.memory_current_bytes(paths)
            )
        n = self._sample("affinity", lambda: len(self.cpus()))
        values["cpu_count"] = n
        quota = values.get("cgroup_cpu_limit_cores")
        if n is not None:
            values["cpu_available_cores"] = float(n) if quota is None else min(float(n), quota)
        share = self._sample("cpu_share", self.share.sample)
        if share is not None:
            values["other_cpu_cores"], values["own_cpu_cores"] = share
        return Readings(time=self.clock(), **values)

    def _locate(self) -> cgroup.CgroupPaths:
        if self._paths is None:
            self._paths = cgroup.locate(str(self.proc), self._cgroup_root)
        return self._paths

    def _sample(self, name: str, fn: Callable[[], Any]) -> Any:
        if name in self.missing:
            return None
        try:
            return fn()
        except Exception as e:
            if name not in self.errors:
                log.warning("sensor %s unavailable: %s", name, e)  # once per sensor
            if isinstance(e, FileNotFoundError | NotImplementedError | AttributeError):
                self.missing.add(name)  # absent here (no PSI, no cgroup file): stop asking
            self.errors[name] = self.errors.get(name, 0) + 1
            if self.on_error is not None:
                self.on_error(name)
            return None
