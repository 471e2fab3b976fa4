"""cgroup v1 and v2 limits of this process: what a container or pod may really use."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

# cgroup v1 reports "no limit" as a huge page-aligned number.
_V1_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class CgroupPaths:
    """The files that hold this process's CPU and memory limits, in either layout."""

    cpu_max: Path | None = None  # v2: "quota period" or "max period"
    cfs_quota: Path | None = None  # v1
    cfs_period: Path | None = None
    memory_max: Path | None = None  # v2 memory.max / v1 memory.limit_in_bytes
    memory_current: Path | None = None  # v2 memory.current / v1 memory.usage_in_bytes


def locate(proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> CgroupPaths:
    """Read /proc/self/cgroup and find this process's limit files, v2 first, then v1.

    Handles the hybrid layout (v1 at the root, v2 under unified/ without cpu.max)."""
    lines = Path(proc_root, "self", "cgroup").read_text().splitlines()
    v1: dict[str, str] = {}
    v2 = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            v2 = path
        for c in controllers.split(","):
            v1[c] = path
    root = Path(cgroup_root)
    found: dict[str, Path] = {}
    if v2 is not None:
        for base in (root, root / "unified"):
            d = base / v2.lstrip("/")
            for key, name in (
                ("cpu_max", "cpu.max"),
                ("memory_max", "memory.max"),
                ("memory_current", "memory.current"),
            ):
                if key not in found and (d / name).is_file():
                    found[key] = d / name
    for key, ctrl, name in (
        ("cfs_quota", "cpu", "cpu.cfs_quota_us"),
        ("cfs_period", "cpu", "cpu.cfs_period_us"),
        ("memory_max", "memory", "memory.limit_in_bytes"),
        ("memory_current", "memory", "memory.usage_in_bytes"),
    ):
        if key in found or ctrl not in v1:
            continue
        for d in (
            root / ctrl / v1[ctrl].lstrip("/"),
            root / "cpu,cpuacct" / v1[ctrl].lstrip("/"),
            root / ctrl,
        ):
            if (d / name).is_file():
                found[key] = d / name
                break
    return CgroupPaths(**found)


def cpu_limit_cores(paths: CgroupPaths) -> float | None:
    if paths.cpu_max is not None:
        quota, _, period = paths.cpu_max.read_text().strip().partition(" ")
        if quota == "max":
            return None
        return int(quota) / int(period or "100000")
    if paths.cfs_quota is not None and paths.cfs_period is not None:
        quota_us = int(paths.cfs_quota.read_text())  # -1: no limit
        return None if quota_us <= 0 else quota_us / int(paths.cfs_period.read_text())
    return None


def memory_limit_bytes(paths: CgroupPaths) -> int | None:
    if paths.memory_max is None:
        return None
    text = paths.memory_max.read_text().strip()
    if text == "max":
        return None
    value = int(text)
    return None if value >= _V1_UNLIMITED else value


def memory_current_bytes(paths: CgroupPaths) -> int | None:
    return None if paths.memory_current is None else int(paths.memory_current.read_text())


def cpu_quota_cores(proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> int:
    """Threads to use: the cgroup CPU quota rounded up, at most the CPUs this process may run
    on, at least 1. Set before the first forward pass, so torch never oversubscribes a pod."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = cpus or 1
    try:
        limit = cpu_limit_cores(locate(proc_root, cgroup_root))
    except (OSError, ValueError):
        limit = None
    if limit is None:
        return cpus
    return max(1, min(cpus, math.ceil(limit - 1e-9)))
