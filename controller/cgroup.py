"""cgroup v1 and v2 limits of this process: what a container or pod may really use."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# cgroup v1 reports "no limit" as a huge page-aligned number (2^63 rounded down to a page).
_V1_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class Cgroup:
    """This process's cgroup directories; each lineage is leaf first, then its ancestors.

    Ancestors matter because a limit may sit on a parent (a pod, a systemd slice)."""

    v2: tuple[Path, ...] = ()
    cpu: tuple[Path, ...] = ()  # v1 cpu controller
    memory: tuple[Path, ...] = ()  # v1 memory controller


@dataclass(frozen=True)
class CpuQuota:
    cores: float  # quota / period
    where: Path  # the cgroup that holds it
    version: int  # 1 or 2: how to read its CPU usage


@dataclass(frozen=True)
class MemoryUse:
    limit_bytes: int | None  # None: unlimited
    working_set_bytes: int | None  # usage less inactive file cache, as the kubelet counts it


def locate(proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup") -> Cgroup:
    """Find this process's cgroup directories from /proc/self/cgroup.

    Handles pure v2, pure v1 and the hybrid layout (v1 at the root, v2 under unified/). When
    the listed path is not visible (a container without its own cgroup namespace sees its own
    cgroup mounted at the root), the walk up still ends at the mount root."""
    v2_path, v1_paths = parse_proc_cgroup(Path(proc_root, "self", "cgroup").read_text())
    root = Path(cgroup_root)
    v2_base = next(
        (b for b in (root, root / "unified") if (b / "cgroup.controllers").is_file()), None
    )
    return Cgroup(
        v2=_lineage(v2_base, v2_path) if v2_base is not None and v2_path is not None else (),
        cpu=_v1_lineage(root, v1_paths, "cpu"),
        memory=_v1_lineage(root, v1_paths, "memory"),
    )


def parse_proc_cgroup(text: str) -> tuple[str | None, dict[str, tuple[str, str]]]:
    """The v2 path ("0::/path") and, per v1 controller, (its mount directory name, path)."""
    v2: str | None = None
    v1: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            v2 = path
            continue
        for c in controllers.split(","):
            v1[c] = (controllers, path)  # "cpu,cpuacct" is usually mounted under that name
    return v2, v1


def _lineage(base: Path, rel: str) -> tuple[Path, ...]:
    parts = PurePosixPath(rel).parts[1:]  # drop the leading "/"
    dirs = (base.joinpath(*parts[:n]) for n in range(len(parts), -1, -1))
    return tuple(d for d in dirs if d.is_dir())


def _v1_lineage(root: Path, v1: dict[str, tuple[str, str]], controller: str) -> tuple[Path, ...]:
    if controller not in v1:
        return ()
    mount, path = v1[controller]
    base = next((b for b in (root / mount, root / controller) if b.is_dir()), None)
    return () if base is None else _lineage(base, path)


def cpu_quota(cg: Cgroup) -> CpuQuota | None:
    """The tightest CPU quota on this cgroup or an ancestor; None when there is none.

    v2 decides when it has the cpu controller (any cpu.max); otherwise v1 (hybrid layout)."""
    quotas: list[CpuQuota] = []
    if any((d / "cpu.max").is_file() for d in cg.v2):
        quotas = [CpuQuota(c, d, 2) for d in cg.v2 if (c := _v2_cpu_max(d)) is not None]
    else:
        quotas = [CpuQuota(c, d, 1) for d in cg.cpu if (c := _v1_cfs_quota(d)) is not None]
    return min(quotas, key=lambda q: q.cores, default=None)


def _v2_cpu_max(d: Path) -> float | None:
    f = d / "cpu.max"
    if not f.is_file():
        return None
    quota, _, period = f.read_text().strip().partition(" ")
    return None if quota == "max" else int(quota) / int(period or "100000")


def _v1_cfs_quota(d: Path) -> float | None:
    if not (d / "cpu.cfs_quota_us").is_file():
        return None
    quota_us = int((d / "cpu.cfs_quota_us").read_text())  # -1: no limit
    return None if quota_us <= 0 else quota_us / int((d / "cpu.cfs_period_us").read_text())


def cpu_usage_seconds(q: CpuQuota) -> float:
    """Cumulative CPU time of the cgroup holding the quota."""
    if q.version == 2:
        return stat_values(q.where / "cpu.stat")["usage_usec"] / 1e6
    return int((q.where / "cpuacct.usage").read_text()) / 1e9  # co-mounted cpu,cpuacct


def memory_use(cg: Cgroup) -> MemoryUse:
    """The nearest memory limit on this cgroup or an ancestor, and that cgroup's working set.

    Without a limit, the working set of this process's own cgroup."""
    if any((d / "memory.max").is_file() for d in cg.v2):
        return _memory_use(cg.v2, "memory.max", "memory.current", "inactive_file")
    return _memory_use(
        cg.memory, "memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file"
    )


def _memory_use(lineage: tuple[Path, ...], limit: str, usage: str, inactive: str) -> MemoryUse:
    for d in lineage:
        value = _read_limit(d / limit)
        if value is not None:
            return MemoryUse(value, _working_set(d, usage, inactive))
    leaf = next((d for d in lineage if (d / usage).is_file()), None)
    return MemoryUse(None, None if leaf is None else _working_set(leaf, usage, inactive))


def _read_limit(f: Path) -> int | None:
    if not f.is_file():
        return None
    text = f.read_text().strip()
    if text == "max":
        return None
    value = int(text)
    return None if value >= _V1_UNLIMITED else value


def _working_set(d: Path, usage: str, inactive: str) -> int:
    # Page cache counts as usage but the kernel drops it before it kills anyone: without this,
    # a pod that read its checkpoint would look full and stay compressed for nothing.
    used = int((d / usage).read_text())
    stat = d / "memory.stat"
    cache = stat_values(stat).get(inactive, 0) if stat.is_file() else 0
    return max(0, used - cache)


def stat_values(f: Path) -> dict[str, int]:
    """A flat "key value" file (cpu.stat, memory.stat) as a dict."""
    pairs = (line.split() for line in f.read_text().splitlines())
    return {p[0]: int(p[1]) for p in pairs if len(p) == 2}


def cpu_quota_cores(
    proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup", cpus: int | None = None
) -> int:
    """Threads to use: the cgroup CPU quota rounded up, at most the CPUs this process may run
    on (`cpus`, default its affinity), at least 1. Call before the first forward pass, so torch
    never oversubscribes a pod."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cpus = max(1, cpus or 1)
    try:
        quota = cpu_quota(locate(proc_root, cgroup_root))
    except (OSError, ValueError, KeyError):
        quota = None  # no readable cgroup: the affinity alone decides
    if quota is None:
        return cpus
    return max(1, min(cpus, math.ceil(quota.cores - 1e-9)))
