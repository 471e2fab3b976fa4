"""The container really built with podman and run: readiness, predictions on both tiers, SIGTERM."""

from __future__ import annotations

import subprocess

import pytest

from tests.helpers import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_image_builds_runs_and_drains():
    r = subprocess.run(
        ["bash", str(ROOT / "deploy" / "container" / "image-test.sh")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout
    assert "torch threads inside = 1" in out and "healthcheck ok" in out
    assert "tier 2 serving inside" in out
    assert "SIGTERM → exit code 0" in out
