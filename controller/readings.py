"""Readings: a frozen snapshot of the machine, and each model's own recent traffic."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Readings:
    """The machine, shared by every model. Every source is optional: None means missing (not
    zero)."""

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
    cpu_count: int | None = None  # CPUs this process may run on (affinity)
    cpu_available_cores: float | None = None  # the most the daemon may use: min(affinity, quota)
    other_cpu_cores: float | None = None  # taken now by other work on those CPUs, smoothed
    own_cpu_cores: float | None = None  # taken now by the daemon's own process tree, smoothed

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

    @property
    def cpu_free_cores(self) -> float | None:
        """The CPU the daemon could use now: what other work leaves of its CPUs, at most its
        quota. None when the machine does not say (then CPU is no constraint)."""
        if self.other_cpu_cores is None or self.cpu_count is None:
            return self.cpu_available_cores
        free = max(0.0, self.cpu_count - self.other_cpu_cores)
        cap = self.cpu_available_cores
        return free if cap is None else min(free, cap)


@dataclass(frozen=True)
class ModelFeedback:
    """One model's own recent traffic, as the server measured it. The rate counts every
    recent request; latencies, overhead and forward time should come from requests served
    at the current level only (None until there are some): a window that still holds the
    previous level's requests makes the policy misjudge the level it has just chosen."""

    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    latency_p99_s: float | None = None
    overhead_s: float | None = None  # median non-forward part of a request (HTTP, decode, queue)
    forward_s: float | None = None  # median forward seconds a request waited for, current level
    request_rate: float = 0.0  # requests/s over the last few seconds
    queue_depth: int = 0
    concurrency: float | None = None  # mean requests in flight (Little's law: Σ latency / window)

    def latency_quantile(self, q: float) -> float | None:
        if q >= 0.99:
            return self.latency_p99_s
        return self.latency_p95_s if q >= 0.9 else self.latency_p50_s
