"""Every benchmark script runs end to end on a tiny setting (timings are not checked)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import psutil
import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.slow

TINY = {
    "switch_cost": ["--archs", "small_cnn", "--repeats", "3"],
    "speedup": ["--archs", "cpreresnet20", "--batches", "1", "--threads", "1", "--repeats", "2"],
    "server_load": ["--concurrency", "2", "--requests", "60", "--gammas", "1.0", "--rounds", "1"],
    "adaptation": ["--models", "digits", "--burners", "0", "--seconds", "2"],
    "memory": ["--arch", "small_cnn"],
    "controller_overhead": ["--seconds", "1"],
    "tier2": ["--models", "default", "--repeats", "3"],
    "int8": ["--models", "default", "--widths", "1.0", "0.25", "--repeats", "3"],
    "protocols": ["--concurrency", "2", "--requests", "60", "--parse-repeats", "2"],
    "models": [
        *("--archs", "small_cnn", "--counts", "1", "2", "--replacements", "1"),
        *("--clients", "2", "--no-tier2"),
    ],
    # One family, one seed, one short epoch: the run, its cache and its JSON, not the figures.
    "accuracy": [
        *("--families", "unstructured", "--seeds", "0", "--epochs", "1", "--max-train", "128"),
        *("--methods", "LCS+P+IN", "TopK 0.9"),  # LCS and a per-level yardstick: one round
        *("--runs-dir", "{results}/checkpoints"),
    ],
    "accuracy.table2": ["--archs", "cpreresnet20", "--repeats", "1"],
}


def stray_workers(results) -> list[int]:
    """Peer servers and spawned workers alive now that carry this run's results directory in
    their environment: started by a benchmark of this test, not by anything else running."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "benchmarks.peers" not in cmd and "multiprocessing.spawn" not in cmd:
            continue
        with contextlib.suppress(psutil.Error):
            if p.environ().get("LCS_BENCH_RESULTS") == str(results):
                found.append(p.pid)
    return found


def run_module(module: str, args: list[str], env: dict[str, str], timeout: float = 300):
    """`python -m module args` from the project root, with `env` over this environment."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def report_env(results, report_dir) -> dict[str, str]:
    return {"LCS_BENCH_RESULTS": str(results), "LCS_BENCH_REPORT_DIR": str(report_dir)}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("bench")


@pytest.mark.parametrize("name", list(TINY))
def test_script_runs_and_saves_results(name, results):
    before = set(stray_workers(results))
    args = [a.format(results=results) for a in TINY[name]]
    r = run_module(f"benchmarks.{name}", args, {"LCS_BENCH_RESULTS": str(results)}, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    saved = {"accuracy.table2": "table2"}.get(name, name)
    data = json.loads((results / f"{saved}.json").read_text())
    assert data["machine"]["cores"] >= 1
    leftover = set(stray_workers(results)) - before
    assert not leftover, f"{name} left processes behind: {leftover}"


def test_peers_harness_measures_lcs_serve_and_a_peer(results, tmp_path):
    """`make bench-peers` on a tiny setting: lcs-serve on its four transports and the plain
    FastAPI peer (no install: the other peers live in venvs CI never makes). Every row is real:
    each request sent was answered 200, and the answer is the digit's label."""
    from tests.helpers import digits

    before = set(stray_workers(results))
    args = ["--peers", "plain-fastapi", "--no-install", "--rounds", "1", "--concurrency", "2",
            "--requests", "30", "--warmup", "5"]  # fmt: skip
    r = run_module("benchmarks.peers_compare", args, {"LCS_BENCH_RESULTS": str(results)})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    data = json.loads((results / "peers.json").read_text())
    _, labels = digits(200)
    label = next(v for v in labels if v != 0)  # the harness sends the first non-zero digit
    got = {(row["server"], row["protocol"]) for row in data["rows"]}
    assert got == {("lcs-serve", p) for p in ("PNG", "OIP JSON", "OIP binary", "gRPC")} | {
        ("plain-fastapi", "PNG")
    }
    for row in data["rows"]:
        assert row["requests"] == row["ok"] == 30 and row["errors"] == 0, row
        assert row["answer"] == row["expected"] == label, row
        assert row["rps"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"], row
        assert row["cpu_s"] > 0, row  # the server's process tree did the work
        if row["server"] == "lcs-serve":  # timed on tier 2; γ is the controller's (recorded)
            assert row["tier"] == "onnx" and 0 < row["gamma"] <= 1, row
    assert not data["failures"] and not data["leftover_pids"]
    assert not set(stray_workers(results)) - before
    lcs = next(s for s in data["summary"] if s["server"] == "lcs-serve" and s["protocol"] == "PNG")
    assert lcs["best_peer"] == "plain-fastapi"
    fastapi = next(s for s in data["summary"] if s["server"] == "plain-fastapi")
    assert lcs["rps_ratio"] == pytest.approx(lcs["rps"] / fastapi["rps"])
    r = run_module("benchmarks.report", [], report_env(results, tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "## Against the servers users would pick instead" in text
    assert (results / "plots" / "peers.png").read_bytes()[:4] == b"\x89PNG"


def test_report_renders_what_was_saved(results, tmp_path):
    r = run_module("benchmarks.report", [], report_env(results, tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    text = (tmp_path / "BENCHMARKS.md").read_text()
    for heading in (
        "Switch cost",
        "Speed-up",
        "Server throughput",
        "Adaptation",
        "Memory",
        "Controller overhead",
        "Two tiers",
        "int8 on top of width",
    ):
        assert f"## {heading}" in text, heading
    assert (results / "plots" / "switch_cost.png").read_bytes()[:4] == b"\x89PNG"


def test_accuracy_report_shows_what_the_checkpoints_score(results, tmp_path):
    """ACCURACY.md renders, and its numbers are those of the trained checkpoints."""
    from models import checkpoint
    from models.data import load_digits
    from models.evaluate import accuracy_at_levels

    r = run_module("benchmarks.accuracy.report", [], report_env(results, tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    text = (tmp_path / "ACCURACY.md").read_text()
    assert "## Unstructured sparsity" in text and "## Profile of the paper's networks" in text
    assert (results / "plots" / "accuracy_unstructured.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((results / "accuracy.json").read_text())["families"]["unstructured"]
    lcs = next(m for m in saved if m["label"] == "LCS+P+IN")
    net, meta, _ = checkpoint.load(
        results / "checkpoints" / f"{lcs['name']}-e{lcs['epochs']}-s0.safetensors"
    )
    data = load_digits()
    gamma = lcs["rows"][-1]["gamma"]
    again = accuracy_at_levels(net, data.test, [meta.spec.calc.alpha(gamma)], meta.mean, meta.std)
    assert again[0]["accuracy"] == lcs["rows"][-1]["mean"]
    assert f"{100 * again[0]['accuracy']:.1f} ± 0.0" in text
