"""Sensors against fixture trees of /proc and /sys/fs/cgroup (v1, v2 and hybrid layouts)."""

from __future__ import annotations

import logging
from collections import namedtuple
from pathlib import Path

import pytest

from controller import cgroup
from controller.sensors import SystemReader, psi_some_avg10

PSI = (
    "some avg10={:.2f} avg60=1.00 avg300=0.50 total=12345\n"
    "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
)
Mem = namedtuple("Mem", "available total")
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
