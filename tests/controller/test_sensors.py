"""Sensors against fixture trees of /proc and /sys/fs/cgroup (v1, v2 and hybrid layouts)."""

from __future__ import annotations

import logging
import math
from collections import namedtuple
from pathlib import Path

import pytest

from controller import cgroup
from controller.readings import Readings
from controller.sensors import SystemReader, psi_some_avg10

PSI = (
    "some avg10={:.2f} avg60=1.00 avg300=0.50 total=12345\n"
    "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
)
Mem = namedtuple("Mem", "available total")
Times = namedtuple("Times", "user system children_user children_system")
Battery = namedtuple("Battery", "percent secsleft power_plugged")


def write(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


@pytest.fixture
def v2(tmp_path):
    proc, cg = tmp_path / "proc", tmp_path / "cgroup"
    write(proc, "self/cgroup", "0::/kubepods/pod1/ctr\n")
    write(cg, "kubepods/pod1/ctr/cpu.max", "150000 100000\n")
    write(cg, "kubepods/pod1/ctr/memory.max", "536870912\n")
    write(cg, "kubepods/pod1/ctr/memory.current", "268435456\n")
    write(proc, "pressure/cpu", PSI.format(42.5))
    write(proc, "pressure/memory", PSI.format(3.0))
    return proc, cg


@pytest.fixture
def v1(tmp_path):
    proc, cg = tmp_path / "proc", tmp_path / "cgroup"
    write(
        proc,
        "self/cgroup",
        "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/system.slice/x.service\n",
    )
    write(cg, "cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "50000\n")
    write(cg, "cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    write(cg, "memory/docker/abc/memory.limit_in_bytes", "9223372036854771712\n")  # unlimited
    write(cg, "memory/docker/abc/memory.usage_in_bytes", "1000\n")
    write(cg, "unified/system.slice/x.service/memory.current", "5\n")  # hybrid: no cpu.max
    return proc, cg


class FakePsutil:
    def __init__(self, cpu=(99.0, 50.0, 100.0), battery=None, fail=()):
        self._cpu, self._battery, self._fail = list(cpu), battery, set(fail)

    def cpu_percent(self, interval=None):
        return self._cpu.pop(0) if len(self._cpu) > 1 else self._cpu[0]

    def getloadavg(self):
        if "load" in self._fail:
            raise OSError("no loadavg")
        return (1.5, 1.0, 0.5)

    def virtual_memory(self):
        return Mem(available=6 * 2**30, total=8 * 2**30)

    def sensors_battery(self):
        return self._battery

    def Process(self, pid):  # psutil spells it so
        return FakeProcess(pid, [0.0])


class FakeProcess:
    """A process whose CPU seconds so far are `times[i]` at its i-th reading."""

    def __init__(self, pid, times, children=()):
        self.pid, self.times, self.kids = pid, list(times), list(children)

    def cpu_times(self):
        if not self.times:
            raise ProcessLookupError(self.pid)  # psutil.NoSuchProcess: it exited
        t = self.times.pop(0) if len(self.times) > 1 else self.times[0]
        return Times(t * 0.75, t * 0.25, 99.0, 99.0)  # reaped children's time is not read

    def children(self, recursive=False):
        return self.kids


def stat(busy: dict[int, int], idle: int = 1000) -> str:
    """A /proc/stat with CPUs 0–2: `busy` ticks split over user/system/irq/steal."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]
    for cpu in range(3):
        b = busy.get(cpu, 0)
        lines.append(
            f"cpu{cpu} {b // 2} 0 {b // 4} {idle} 7 {b // 8} 0 {b - b // 2 - b // 4 - b // 8} 0 0"
        )
    return "\n".join([*lines, "intr 1 2 3", "ctxt 5"]) + "\n"


def test_cgroup_v2(v2):
    proc, cg = v2
    paths = cgroup.locate(str(proc), str(cg))
    assert cgroup.cpu_limit_cores(paths) == 1.5
    assert cgroup.memory_limit_bytes(paths) == 512 * 2**20
    assert cgroup.memory_current_bytes(paths) == 256 * 2**20
    assert cgroup.cpu_quota_cores(str(proc), str(cg)) == min(
        2, len(__import__("os").sched_getaffinity(0))
    )


def test_cgroup_v2_unlimited(tmp_path):
    proc, cg = tmp_path / "proc", tmp_path / "cgroup"
    write(proc, "self/cgroup", "0::/\n")
    write(cg, "cpu.max", "max 100000\n")
    write(cg, "memory.max", "max\n")
    paths = cgroup.locate(str(proc), str(cg))
    assert cgroup.cpu_limit_cores(paths) is None and cgroup.memory_limit_bytes(paths) is None


def test_cgroup_v1_hybrid(v1):
    proc, cg = v1
    paths = cgroup.locate(str(proc), str(cg))
    assert cgroup.cpu_limit_cores(paths) == 0.5
    assert cgroup.memory_limit_bytes(paths) is None  # v1's "unlimited" sentinel
    assert cgroup.memory_current_bytes(paths) == 5  # v2 (unified) wins where it has the file
    assert cgroup.cpu_quota_cores(str(proc), str(cg)) == 1


def test_psi(v2):
    proc, _ = v2
    assert psi_some_avg10(proc / "pressure" / "cpu") == pytest.approx(0.425)


def test_reader_on_fixtures_discards_first_cpu_sample(v2):
    proc, cg = v2
    reader = SystemReader(
        proc_root=str(proc),
        cgroup_root=str(cg),
        ps=FakePsutil(),
        clock=lambda: 7.0,
    )
    r = reader.read()
    assert r.cpu_utilisation == pytest.approx(0.5)  # 99 % priming sample discarded
    r = reader.read()
    assert r.cpu_utilisation == pytest.approx(0.5 + 0.3 * (1.0 - 0.5))  # EMA
    assert r.cpu_pressure == pytest.approx(0.425) and r.memory_pressure == pytest.approx(0.03)
    assert r.cgroup_cpu_limit_cores == 1.5 and r.memory_available_fraction == pytest.approx(0.5)
    assert r.time == 7.0
    assert r.battery_percent is None and not r.on_battery  # no battery: mains


def test_battery_reading(v2):
    proc, cg = v2
    r = SystemReader(
        proc_root=str(proc), cgroup_root=str(cg), ps=FakePsutil(battery=Battery(15.0, 600, False))
    ).read()
    assert r.battery_percent == 15.0 and r.on_battery


def test_failing_and_missing_sensors_are_skipped_logged_once_and_counted(tmp_path, caplog):
    proc = tmp_path / "proc"
    write(proc, "self/cgroup", "0::/\n")  # no pressure files, no cgroup files
    errors: list[str] = []
    reader = SystemReader(
        proc_root=str(proc),
        cgroup_root=str(tmp_path / "none"),
        ps=FakePsutil(fail={"load"}),
        on_error=errors.append,
    )
    with caplog.at_level(logging.WARNING, logger="lcs.controller"):
        for _ in range(3):
            r = reader.read()
    assert r.load_average_1m is None and r.cpu_pressure is None
    assert r.memory_available_bytes == 6 * 2**30  # the rest keeps working
    assert errors.count("load") == 3  # raising sources are counted every time
    assert errors.count("psi_cpu") == 1  # a missing file is counted once and not retried
    logged = [rec.getMessage() for rec in caplog.records]
    assert sum("load" in m for m in logged) == 1 and sum("psi_cpu" in m for m in logged) == 1


def test_real_machine_smoke():
    r = SystemReader().read()
    assert r.memory_total_bytes and r.memory_total_bytes > 0
    assert cgroup.cpu_quota_cores() >= 1


def test_lcs_controller_prints_one_line_per_reading(capsys):
    import argparse

    from controller.watch import add_arguments, main

    p = argparse.ArgumentParser()
    add_arguments(p)
    assert main(p.parse_args(["--count", "2", "--interval", "0.01"])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("→ α 1.000" in ln for ln in lines)  # idle: the top level
    with pytest.raises(SystemExit):
        p.parse_args(["--watch"])  # removed: it was never read


def test_cpu_share_separates_the_daemon_from_other_work(tmp_path):
    from controller.cpushare import CpuShare

    proc = tmp_path / "proc"
    write(proc, "stat", stat({0: 100, 1: 200, 2: 50}))
    clock = {"t": 0.0}
    child = FakeProcess(11, [0.5, 0.7, 0.7])
    me = FakeProcess(10, [1.0, 1.3, 1.8], children=[child])
    ps = FakePsutil()
    ps.Process = lambda pid: me
    share = CpuShare(
        proc_root=str(proc), ps=ps, pid=10, cpus=lambda: {0, 1}, clock=lambda: clock["t"],
        tau_s=0.5, attack_s=0.2, clk_tck=100,
    )  # fmt: skip
    assert share.sample() == (None, None)  # a baseline only
    # 1 s later: CPUs 0 and 1 busy 60 + 80 ticks (CPU 2 is not ours: ignored); the daemon
    # took 0.3 s and its child 0.2 s → own 0.5 core, other 1.4 − 0.5 = 0.9 core.
    write(proc, "stat", stat({0: 160, 1: 280, 2: 450}, idle=1100))
    clock["t"] = 1.0
    other, own = share.sample()
    assert (other, own) == pytest.approx((0.9, 0.5))
    clock["t"] = 1.05  # too close for tick resolution: no new sample, same values
    assert share.sample() == pytest.approx((0.9, 0.5))
    # 1 s more: busy +150 ticks, the daemon +0.5 s, the child gone → raw other 1.0, own 0.5;
    # other work rose: smoothed with the attack's weight 1 − e^(−1 / 0.2)
    child.times.clear()
    write(proc, "stat", stat({0: 260, 1: 330, 2: 450}, idle=1200))
    clock["t"] = 2.0
    rise = 1 - math.exp(-1 / 0.2)
    other, own = share.sample()
    assert other == pytest.approx(0.9 + rise * (1.0 - 0.9)) and own == pytest.approx(0.5)
    # 1 s more: busy +50 ticks, all the daemon's (+0.5 s) → raw other 0: it fell, so the
    # release's weight 1 − e^(−1 / 0.5)
    me.times[:] = [2.3]  # its last reading was 1.8
    write(proc, "stat", stat({0: 285, 1: 355, 2: 450}, idle=1300))
    clock["t"] = 3.0
    fall = 1 - math.exp(-1 / 0.5)
    before = 0.9 + rise * 0.1
    assert share.sample()[0] == pytest.approx(before + fall * (0.0 - before))


def test_reader_reports_the_cpu_the_daemon_may_use(v2):
    proc, cg = v2
    write(proc, "stat", stat({0: 100, 1: 100}))
    clock = {"t": 0.0}
    reader = SystemReader(
        proc_root=str(proc), cgroup_root=str(cg), ps=FakePsutil(), cpus=lambda: {0, 1},
        clock=lambda: clock["t"],
    )  # fmt: skip
    write(proc, "stat", stat({0: 150, 1: 200}))
    clock["t"] = 0.5  # 150 ticks in 0.5 s at 100 Hz: 3 cores, capped by nothing
    r = reader.read()
    assert r.cpu_count == 2 and r.cpu_available_cores == 1.5  # the cgroup quota wins
    assert r.own_cpu_cores == 0.0 and r.other_cpu_cores == pytest.approx(150 / 100 / 0.5)
    assert r.cpu_free_cores == 0.0  # 2 CPUs − 3 cores of others: nothing left
    free = Readings(time=0, cpu_count=4, cpu_available_cores=1.5, other_cpu_cores=1.0)
    assert free.cpu_free_cores == 1.5  # 3 free on the CPUs, but the quota is 1.5
    assert Readings(time=0).cpu_free_cores is None


def stat_line(user: int, nice: int) -> str:
    """/proc/stat's line for one CPU: `user` and `nice` jiffies, 1000 idle."""
    return f"cpu0 {user} {nice} 0 1000 0 0 0 0 0 0\n"


def fake_share(tmp_path, me, **kwargs):
    """A CpuShare over a fake /proc (one CPU, its counters at 0) and the fake process `me`
    (pid 10), on a clock the test moves: (share, the /proc directory, the clock)."""
    from controller.cpushare import CpuShare

    proc = tmp_path / "proc"
    write(proc, "stat", stat_line(0, 0))
    clock = {"t": 0.0}
    ps = FakePsutil()
    ps.Process = lambda pid: me
    share = CpuShare(
        proc_root=str(proc), ps=ps, pid=10, cpus=lambda: {0}, clock=lambda: clock["t"],
        clk_tck=100, **kwargs,
    )  # fmt: skip
    return share, proc, clock


@pytest.mark.parametrize(("my_nice", "expected"), [(0, 0.5), (10, 1.5)])
def test_niced_work_yields_to_the_daemon_unless_it_is_niced_too(tmp_path, my_nice, expected):
    me = FakeProcess(10, [0.0])
    me.nice = lambda: my_nice
    share, proc, clock = fake_share(tmp_path, me)
    share.sample()
    write(proc, "stat", stat_line(50, 100))  # in 1 s: 0.5 core at nice 0, 1 core niced
    clock["t"] = 1.0
    assert share.sample()[0] == pytest.approx(expected)


@pytest.mark.parametrize(("enabled", "expected"), [("1", 1.5), ("0", 0.5)])
def test_niced_work_counts_when_the_kernel_groups_tasks_by_session(tmp_path, enabled, expected):
    # With autogroup, niceness weighs only inside a session: a niced job of another session
    # takes its fair share from a daemon at nice 0.
    me = FakeProcess(10, [0.0])
    me.nice = lambda: 0
    share, proc, clock = fake_share(tmp_path, me)
    write(proc, "sys/kernel/sched_autogroup_enabled", f"{enabled}\n")
    share.sample()
    write(proc, "stat", stat_line(50, 100))  # in 1 s: 0.5 core at nice 0, 1 core niced
    clock["t"] = 1.0
    assert share.sample()[0] == pytest.approx(expected)


def test_the_daemons_children_count_as_its_own_cpu_on_this_kernel():
    """A real child burner (the tier-2 export worker's shape) is the daemon's own work."""
    import os
    import subprocess
    import sys
    import time

    import psutil

    from controller.cpushare import CpuShare

    burn = "import time\nt = time.time()\nwhile time.time() - t < 5: pass\n"
    child = subprocess.Popen([sys.executable, "-c", burn])
    try:
        c = psutil.Process(child.pid)
        stamps: list[float] = []

        def clock() -> float:
            stamps.append(time.monotonic())
            return stamps[-1]

        share = CpuShare(ps=psutil, pid=os.getpid(), clock=clock, tau_s=1e-9)  # no smoothing
        share.sample()  # lists the child
        before = sum(c.cpu_times()[:2])  # inside the sampled interval
        time.sleep(0.5)
        after = sum(c.cpu_times()[:2])
        other, own = share.sample()
        assert own is not None and other is not None
        assert after - before > 0.03, "the child got no CPU at all"
        own_s = own * (stamps[-1] - stamps[0])  # CPU seconds the sample gave the tree
        assert own_s >= after - before - 0.02  # one tick of /proc resolution either side
    finally:
        child.kill()
        child.wait()


@pytest.mark.parametrize(("my_nice", "expected"), [(0, (0.5, 0.3)), (10, (1.3, 0.5))])
def test_a_niced_child_is_counted_only_where_niced_time_is(tmp_path, my_nice, expected):
    # The tier-2 export worker runs at nice 10: its time lands in /proc/stat's nice column.
    # A daemon at nice 0 ignores that column, so the child's 0.2 s must not be taken off
    # the busy time either (other work would read 0.3 core, not 0.5); a niced daemon
    # counts both.
    child = FakeProcess(11, [0.0, 0.2])
    child.nice = lambda: my_nice + 10
    me = FakeProcess(10, [0.0, 0.3], children=[child])
    me.nice = lambda: my_nice
    share, proc, clock = fake_share(tmp_path, me, tau_s=1e-9)
    share.sample()
    # in 1 s: 0.8 core at nice 0 (the daemon's 0.3 and others' 0.5), 1.0 niced (the
    # child's 0.2 and others' 0.8)
    write(proc, "stat", stat_line(80, 100))
    clock["t"] = 1.0
    assert share.sample() == pytest.approx(expected)


def proc_task(proc: Path, pid: int, group: str, group_nice: int, nice: int, ticks: int) -> None:
    """/proc/PID/stat (utime `ticks`, the given nice) and /proc/PID/autogroup of one process."""
    write(
        proc,
        f"{pid}/stat",
        f"{pid} (job x) S 1 {pid} {pid} 0 -1 0 0 0 0 0 {ticks} 0 0 0 20 {nice} 1\n",
    )
    write(proc, f"{pid}/autogroup", f"/{group} nice {group_nice}\n")


def test_under_autogroup_work_that_yields_to_the_daemon_is_not_other_work(tmp_path):
    # The daemon (pid 10, autogroup-1 at nice 0) and its niced child 11 (its own work);
    # 20: nice 19 in the daemon's own session → yields; 21: nice 19 in another session →
    # a fair share, other work; 22: nice 0 in a session niced 19 as a whole → yields.
    child = FakeProcess(11, [0.0, 0.1])
    me = FakeProcess(10, [0.0, 0.1], children=[child])
    me.nice = lambda: 0
    share, proc, clock = fake_share(tmp_path, me, tau_s=1e-9, attack_s=1e-9)  # no smoothing
    write(proc, "sys/kernel/sched_autogroup_enabled", "1\n")
    tasks = {10: ("autogroup-1", 0, 0), 11: ("autogroup-1", 0, 10), 20: ("autogroup-1", 0, 19),
             21: ("autogroup-2", 0, 19), 22: ("autogroup-3", 19, 0)}  # fmt: skip
    for pid, (group, gnice, nice) in tasks.items():
        proc_task(proc, pid, group, gnice, nice, 0)
    share.sample()
    # in 1 s (100 Hz): the daemon 10 ticks at nice 0, its child 10 niced, 20: 20 niced,
    # 21: 30 niced, 22: 30 at nice 0 → /proc/stat user +40, nice +60: one core busy
    for pid, ticks in {10: 10, 11: 10, 20: 20, 21: 30, 22: 30}.items():
        proc_task(proc, pid, *tasks[pid], ticks)
    write(proc, "stat", stat_line(40, 60))
    clock["t"] = 1.0
    other, own = share.sample()
    # other = 1.0 busy − 0.2 own − 0.5 yielding (20 and 22) = 21's 0.3 core
    assert (other, own) == pytest.approx((0.3, 0.2))
