"""Every benchmark script runs end to end on a tiny setting (timings are not checked)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow

TINY = {
    "switch_cost": ["--archs", "small_cnn", "--repeats", "3"],
    "speedup": ["--archs", "cpreresnet20", "--batches", "1", "--threads", "1", "--repeats", "2"],
    "server_load": ["--concurrency", "2", "--requests", "60", "--gammas", "1.0"],
    "peers_compare": ["--concurrency", "2", "--requests", "60"],
    "adaptation": ["--models", "digits", "--burners", "0", "--seconds", "4"],
    "memory": ["--arch", "small_cnn"],
    "controller_overhead": ["--seconds", "1"],
}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("bench")


@pytest.mark.parametrize("name", list(TINY))
def test_script_runs_and_saves_results(name, results):
    env = {**os.environ, "LCS_BENCH_RESULTS": str(results)}
    r = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *TINY[name]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    saved = {"peers_compare": "peers"}.get(name, name)
    data = json.loads((results / f"{saved}.json").read_text())
    assert data["machine"]["cores"] >= 1
    leftover = subprocess.run(
        ["pgrep", "-f", "benchmarks.peers|multiprocessing.spawn"], capture_output=True, text=True
    ).stdout.split()
    assert not leftover, f"{name} left processes behind: {leftover}"


def test_report_renders_what_was_saved(results, tmp_path):
    env = {**os.environ, "LCS_BENCH_RESULTS": str(results), "LCS_BENCH_REPORT_DIR": str(tmp_path)}
    r = subprocess.run(
        [sys.executable, "-m", "benchmarks.report"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    text = (tmp_path / "BENCHMARKS.md").read_text()
    for heading in (
        "Switch cost",
        "Speed-up",
        "Server throughput",
        "Adaptation",
        "Memory",
        "Controller overhead",
    ):
        assert f"## {heading}" in text, heading
    assert (results / "plots" / "switch_cost.png").read_bytes()[:4] == b"\x89PNG"
