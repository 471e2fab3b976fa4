"""Who takes the CPUs: the daemon's own process tree against all other work, from /proc/stat."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from controller.yielding import Yielding


def affinity() -> set[int]:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


class CpuShare:
    """Cores used by other work and by this process tree on the CPUs it may run on, each
    smoothed with time constant `tau_s`; other work's rises with the shorter `attack_s`.

    Why two constants: when a hog saturates the CPUs, what it leaves free falls toward the
    daemon's own use, and the share objective sees a misfit only once the smoothed figure
    is within its headroom of that, ~3.8 time constants after the hog starts (measured at
    τ 0.5 s: the first compression 2.2-2.9 s after `stress-ng --cpu 2`, against the ~2 s
    the share objective promises). A short attack moves toward compression within about a
    second; the slow release keeps a moment's lull from reading as a recovery.

    Busy time is read per CPU from /proc/stat (only the CPUs in `cpus()`; steal counts as
    taken). Time of niced processes (the "nice" column) counts only when the daemon is niced
    itself or the kernel schedules by session (`count_niced=None`, the default, asks both):
    otherwise that work runs at a lower priority and yields to the daemon, so it takes
    nothing from it. With autogroup on (kernel.sched_autogroup_enabled), a niceness weighs
    only within its own session: a niced job started from another shell takes a fair share
    from the daemon like any other (measured here: two nice-19 trainings started from one
    shell left `stress-ng --cpu 2`, started from another, one core); what does yield there
    (niced work of the daemon's own session, work of a niced session) is read per process
    and left out (controller.yielding). The daemon's own
    time is that of process `pid` and its live children (the tier-2 export worker), each from
    its own /proc entry through psutil; a niced child's time (the export worker runs at nice
    10) is counted only where niced time is: otherwise it was never in the busy time it would
    be taken from, and other work would read that much lower. Children are re-listed every
    `children_every_s` (listing walks all of /proc; reading known pids is cheap)."""

    def __init__(
        self,
        *,
        proc_root: str = "/proc",
        ps: Any,
        pid: int,
        cpus: Callable[[], set[int]] = affinity,
        clock: Callable[[], float],
        tau_s: float = 0.5,
        attack_s: float = 0.2,
        min_dt_s: float = 0.1,
        children_every_s: float = 2.0,
        clk_tck: int | None = None,
        count_niced: bool | None = None,
    ) -> None:
        self.stat = Path(proc_root, "stat")
        self.ps, self.pid, self.cpus, self.clock = ps, pid, cpus, clock
        self.tau_s, self.attack_s = tau_s, attack_s
        self.min_dt_s, self.children_every_s = min_dt_s, children_every_s
        self.clk_tck = clk_tck or os.sysconf("SC_CLK_TCK")
        self.count_niced = count_niced
        self.other: float | None = None
        self.own: float | None = None
        self._proc: Any = None
        self._children: list[Any] = []
        self._listed_at = -math.inf
        self._yielding: Yielding | None = None  # set where the kernel groups by session
        # time, busy, own by pid, yielding by pid
        self._last: tuple[float, float, dict[int, float], dict[int, float]] | None = None

    def sample(self) -> tuple[float | None, float | None]:
        """(other cores, own cores), smoothed; None until two samples are far enough apart."""
        now = self.clock()
        if self._last is not None and now - self._last[0] < self.min_dt_s:
            return self.other, self.own  # too close for tick resolution: keep the baseline
        if self._last is None:
            self._detect()
        busy, own = self._busy_s(), self._own_s(now)
        gave = {} if self._yielding is None else self._yielding.seconds(now)
        if self._last is not None:
            t0, busy0, own0, gave0 = self._last
            dt = now - t0
            own_d, gave_d = _delta(own, own0), _delta(gave, gave0)
            raw_other = max(0.0, busy - busy0 - own_d - gave_d) / dt
            raw_own = own_d / dt
            w = 1.0 - math.exp(-dt / self.tau_s)
            if self.other is None:
                self.other = raw_other
            else:
                rise = 1.0 - math.exp(-dt / self.attack_s)
                self.other += (rise if raw_other > self.other else w) * (raw_other - self.other)
            self.own = raw_own if self.own is None else self.own + w * (raw_own - self.own)
        self._last = (now, busy, own, gave)
        return self.other, self.own

    def _detect(self) -> None:
        """Once, at the first sample: whether niced time is busy time, and where the kernel
        groups by session, the reader of the work that yields all the same."""
        if self.count_niced is None:
            grouped = self._autogroup()
            try:
                niced = self.ps.Process(self.pid).nice() > 0
            except Exception:  # no niceness here: count everything
                niced = True
            self.count_niced = niced or grouped
            if grouped:  # but niced work of the daemon's own session, or a niced one, yields
                self._yielding = Yielding(
                    proc_root=str(self.stat.parent), pid=self.pid, clk_tck=self.clk_tck,
                    own=lambda: [c.pid for c in self._children],
                )  # fmt: skip

    def _busy_s(self) -> float:
        """CPU seconds spent not idle on our CPUs since boot."""
        mine = {f"cpu{i}" for i in self.cpus()}
        ticks = 0
        for line in self.stat.read_text().splitlines():
            name, _, rest = line.partition(" ")
            if name in mine:
                # user nice system idle iowait irq softirq steal
                f = [int(x) for x in rest.split()[:8]]
                ticks += sum(f) - f[3] - f[4] - (0 if self.count_niced else f[1])
        return ticks / self.clk_tck

    def _autogroup(self) -> bool:
        """Whether the kernel groups tasks by session, where niceness does not cross."""
        path = self.stat.parent / "sys" / "kernel" / "sched_autogroup_enabled"
        try:
            return path.read_text().strip() == "1"
        except OSError:  # not this kernel, or not readable: a flat scheduler
            return False

    def _own_s(self, now: float) -> dict[int, float]:
        """CPU seconds so far of this process and of each live child, by pid."""
        if self._proc is None:
            self._proc = self.ps.Process(self.pid)
        if now - self._listed_at >= self.children_every_s:
            self._children = [c for c in self._proc.children(recursive=True) if self._counted(c)]
            self._listed_at = now
        t = self._proc.cpu_times()
        out = {self.pid: t.user + t.system}
        alive = []
        for c in self._children:
            try:
                ct = c.cpu_times()
            except Exception:  # exited meanwhile (psutil.NoSuchProcess): not ours any more
                continue
            out[c.pid] = ct.user + ct.system
            alive.append(c)
        self._children = alive
        return out

    def _counted(self, child: Any) -> bool:
        """Whether a child's time is in the busy time at all (see the class docstring)."""
        if self.count_niced:
            return True
        try:
            return bool(child.nice() <= 0)
        except Exception:  # exited meanwhile, or no niceness here: as the parent
            return True


def _delta(now: dict[int, float], before: dict[int, float]) -> float:
    """CPU seconds used since `before` by the processes in both readings."""
    return sum(max(0.0, v - before[pid]) for pid, v in now.items() if pid in before)
