"""Busy time that yields the CPU to the daemon when the kernel schedules by session (autogroup)."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Task:
    """What the scheduler weighs a process by: its autogroup (session) and both nice values."""

    group: str
    group_nice: int
    nice: int
    cpu_ticks: int


class Yielding:
    """The CPU seconds so far, by pid, of processes that yield to the daemon under autogroup
    (kernel.sched_autogroup_enabled): niced processes of the daemon's own autogroup (a niced
    job started from its shell) and every process of an autogroup niced more than the
    daemon's (`echo 19 > /proc/PID/autogroup`). Under autogroup a niceness weighs only inside
    its session, so /proc/stat's nice column cannot tell these from a niced job of another
    session, which does take a fair share; this reads each process's /proc entry instead.

    All of /proc is walked every `walk_every_s` (a few hundred small reads); between walks only
    the yielding processes' own /proc/PID/stat are read. The daemon's own tree (`own()`) is
    never in the set: its time is counted as its own."""

    def __init__(
        self,
        *,
        proc_root: str,
        pid: int,
        own: Callable[[], Iterable[int]],
        clk_tck: int,
        walk_every_s: float = 10.0,
    ) -> None:
        self.root, self.pid, self.own, self.clk_tck = Path(proc_root), pid, own, clk_tck
        self.walk_every_s = walk_every_s
        self._pids: list[int] = []
        self._walked_at = -math.inf

    def seconds(self, now: float) -> dict[int, float]:
        """CPU seconds so far of each yielding process, by pid."""
        if now - self._walked_at >= self.walk_every_s:
            self._pids = self._walk()
            self._walked_at = now
        out = {}
        for pid in self._pids:  # between walks only their CPU time changes: stat alone
            fields = self._stat(pid)
            if fields is not None:  # gone meanwhile: its time left with it
                out[pid] = _ticks(fields) / self.clk_tck
        return out

    def _walk(self) -> list[int]:
        me = self._task(self.pid)
        if me is None:
            return []
        own = set(self.own()) | {self.pid}
        pids = []
        for entry in os.scandir(self.root):
            if not entry.name.isdigit() or int(entry.name) in own:
                continue
            task = self._task(int(entry.name))
            if task is not None and yields(task, me):
                pids.append(int(entry.name))
        return pids

    def _task(self, pid: int) -> Task | None:
        fields = self._stat(pid)
        try:
            group = (self.root / str(pid) / "autogroup").read_text().split()
        except OSError:  # exited, or not ours to read
            return None
        if fields is None or len(group) < 3:  # gone, or a kernel thread: in no session
            return None
        return Task(group[0], int(group[2]), int(fields[16]), _ticks(fields))

    def _stat(self, pid: int) -> list[str] | None:
        """/proc/PID/stat's fields after "(comm)" (state is field 3 of proc(5)), or None."""
        try:
            return (self.root / str(pid) / "stat").read_text().rpartition(")")[2].split()
        except OSError:  # exited, or not ours to read
            return None


def _ticks(fields: list[str]) -> int:
    """utime + stime (fields 14 and 15 of proc(5)) in clock ticks."""
    return int(fields[11]) + int(fields[12])


def yields(task: Task, daemon: Task) -> bool:
    """Whether the scheduler gives `task` less weight than the daemon: niced more than it in
    the same autogroup, or in an autogroup niced more than the daemon's."""
    if task.group == daemon.group:
        return task.nice > daemon.nice
    return task.group_nice > daemon.group_nice
