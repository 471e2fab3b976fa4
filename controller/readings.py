"""Readings: a frozen snapshot of the machine and of the server's own feedback."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Readings:
    """Every source is optional: None means missing (not zero)."""

    time: float  # monotonic seconds
    cpu_utilisation: float | None = None  # host, 0–1, smoothed
    load_average_1m: float | None = None
    cpu_pressure: float | None = None  # PSI cpu "some avg10", 0–1
    memory_available_bytes: int | None = None  # host
    memory_total_bytes: int | None = None
    memory_pressure: float | None = None  # PSI memory "some avg10", 0–1
    battery_percent: float | None = None
    battery_charging: bool | None = None  # None: no battery, i.e. mains power
    cgroup_cpu_limit_cores: float | None = None  # the tightest quota; None: unlimited
    cgroup_cpu_usage_cores: float | None = None  # use of the cgroup holding that quota, smoothed
    cgroup_memory_limit_bytes: int | None = None  # None: unlimited
    cgroup_memory_current_bytes: int | None = None  # working set: usage less inactive file cache
    latency_p50_s: float | None = None  # server feedback: recent request latencies
    latency_p95_s: float | None = None
    latency_p99_s: float | None = None
    queue_depth: int | None = None

    @property
    def memory_available_fraction(self) -> float | None:
        """Free memory against the cgroup limit when there is one, else against the host.

        With a limit, the host can still be the tighter of the two (a 4 GiB limit on a host
        with 1 GiB free), so the smaller share wins."""
        host = _share(self.memory_available_bytes, self.memory_total_bytes)
        limit, used = self.cgroup_memory_limit_bytes, self.cgroup_memory_current_bytes
        if not limit or used is None:
            return host
        pod = max(0.0, (limit - used) / limit)
        return pod if host is None else min(pod, host)

    @property
    def on_battery(self) -> bool:
        """A battery is present and not charging (no battery counts as mains)."""
        return self.battery_percent is not None and self.battery_charging is False

    @property
    def cpu_quota_use(self) -> float | None:
        """Share of the cgroup CPU quota in use, 0–1; None without a quota."""
        limit, used = self.cgroup_cpu_limit_cores, self.cgroup_cpu_usage_cores
        if not limit or used is None:
            return None
        return min(1.0, max(0.0, used / limit))

    def latency_quantile(self, q: float) -> float | None:
        """The reported quantile nearest above q (p50, p95 or p99)."""
        if q > 0.95:
            return self.latency_p99_s
        return self.latency_p95_s if q > 0.5 else self.latency_p50_s


def _share(part: int | None, whole: int | None) -> float | None:
    if part is None or not whole:
        return None
    return part / whole
