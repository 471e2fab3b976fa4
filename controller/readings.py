"""Readings: a frozen snapshot of the machine and of the server's own feedback."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Readings:
    """Every source is optional: None means missing (not zero)."""

    time: float  # monotonic seconds
    cpu_utilisation: float | None = None  # 0–1, smoothed
    load_average_1m: float | None = None
    cpu_pressure: float | None = None  # PSI cpu "some avg10", 0–1
    memory_available_bytes: int | None = None
    memory_total_bytes: int | None = None
    memory_pressure: float | None = None  # PSI memory "some avg10", 0–1
    battery_percent: float | None = None
    battery_charging: bool | None = None  # None: no battery, i.e. mains power
    cgroup_cpu_limit_cores: float | None = None
    cgroup_memory_limit_bytes: int | None = None
    cgroup_memory_current_bytes: int | None = None
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    latency_p99_s: float | None = None
    queue_depth: int | None = None

    @property
    def memory_available_fraction(self) -> float | None:
        """Free memory against the pod's limit when there is one, else against the host."""
        if self.cgroup_memory_limit_bytes and self.cgroup_memory_current_bytes is not None:
            free = self.cgroup_memory_limit_bytes - self.cgroup_memory_current_bytes
            host = self._host_fraction()
            pod = max(0.0, free / self.cgroup_memory_limit_bytes)
            return pod if host is None else min(pod, host)
        return self._host_fraction()

    def _host_fraction(self) -> float | None:
        if self.memory_available_bytes is None or not self.memory_total_bytes:
            return None
        return self.memory_available_bytes / self.memory_total_bytes

    @property
    def on_battery(self) -> bool:
        return self.battery_percent is not None and self.battery_charging is False

    def latency_quantile(self, q: float) -> float | None:
        if q >= 0.99:
            return self.latency_p99_s
        return self.latency_p95_s if q >= 0.9 else self.latency_p50_s
