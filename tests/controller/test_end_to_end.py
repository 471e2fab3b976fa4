"""A real server in auto mode under a real CPU burner: it compresses, serves faster, recovers."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time

import httpx
import pytest

from tests.helpers import digits, drive, encode, live_server, make_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.exclusive]
BURNERS = 4  # on 2 cores: the server's thread gets about 2/5 of a core


TOKEN = "e2e-operator"


def under_load(url: str, png: bytes) -> tuple[float, list[tuple[float, float, float, str]]]:
    """Requests for 13 s beside CPU burners: (when the burners started, the samples)."""
    burner = subprocess.Popen(["stress-ng", "--cpu", str(BURNERS), "--timeout", "14s", "--quiet"])
    start = time.monotonic()
    try:
        return start, drive(url, png, 13)
    finally:
        burner.wait(30)


def put_level(url: str, body: dict[str, object]) -> None:
    r = httpx.put(url + "/level", json=body, headers={"authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def resnet(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "resnet18.safetensors", "resnet18")


def test_adapts_to_cpu_contention_and_recovers(resnet):
    assert shutil.which("stress-ng"), "stress-ng missing: run `make system-deps`"
    png = encode(digits(1)[0][0], "PNG", "RGB")
    # The latency objective: this test drives the server with a closed loop (one request after
    # another), whose rate rises as the level falls; the share objective (test_share_live.py,
    # a paced client) reads that rate as demand the wide level could not fit.
    env = {"LCS_CHECKPOINT": str(resnet), "LCS_TORCH_THREADS": "1", "LCS_LOG_LEVEL": "warning",
           "LCS_CONTROLLER_OBJECTIVE": "latency", "LCS_OPERATOR_TOKEN": TOKEN}  # fmt: skip
    # One server for the three phases: its own idle latency sets the target, then it runs
    # adaptive under load and recovers, then it is pinned at full width under the same load.
    with live_server(env, timeout=120) as srv:
        put_level(srv.url, {"mode": "fixed", "alpha": 1.0, "reason": "measure idle"})
        idle = drive(srv.url, png, 3)
        # The target: 1.6× the full-width latency on the idle machine, measured now.
        target_ms = 1.6e3 * statistics.median(s[1] for s in idle)
        put_level(srv.url, {"mode": "auto", "latency_target_ms": target_ms, "reason": "adapt"})
        start, loaded = under_load(srv.url, png)
        after = drive(srv.url, png, 6)  # recovery needs the 3 s dwell and a margin
        put_level(srv.url, {"mode": "fixed", "alpha": 1.0, "reason": "pinned"})
        pinned_start, pinned_loaded = under_load(srv.url, png)

    # Behaviour, not a latency figure (benchmarks/adaptation measures how much faster it
    # serves and how well the target is met; a p95 comparison here failed a quiet fresh clone
    # at 134 against 127 ms): under load it compresses and stays compressed for most
    # requests while the pinned server stays at full width, and it widens again once the
    # load is gone.
    moved = [s for s in loaded if s[2] < 1.0]
    assert moved and moved[0][0] - start < 10.0, "did not compress under load"
    settled = [s for s in loaded if s[0] - start > 5.0]
    pinned = [s for s in pinned_loaded if s[0] - pinned_start > 5.0]
    assert all(s[2] == 1.0 for s in pinned) and min(s[2] for s in settled) < 1.0
    assert statistics.median(s[2] for s in settled) < 1.0, "most loaded requests ran wide"
    lowest = min(s[2] for s in loaded)
    assert max(s[2] for s in after[-20:]) > lowest, "did not recover after the load"
