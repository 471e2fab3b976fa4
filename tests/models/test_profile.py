"""`lcs profile`: MACs and weight memory against a hand computation; the Table 2 layout."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from models import SubspaceSpec, create_model
from models.compression import LevelCompressor, width
from models.profile import count_macs, weight_bytes
from tests.helpers import ROOT

PLAN = ((32, 1, 28), (64, 2, 14), (64, 1, 14), (128, 2, 7), (128, 1, 7))  # (C, stride, out H)


def small_cnn_macs(gamma: float) -> int:
    """Σ k_out·k_in·3·3·H·W over the convolutions, plus the classifier."""
    total, k_in = 0, 1
    for c, _, h in PLAN:
        k_out = width(c, gamma)
        total += k_out * k_in * 9 * h * h
        k_in = k_out
    return total + k_in * 10


@pytest.mark.parametrize("gamma", [1.0, 0.75, 0.5, 0.25])
def test_macs_and_weights_shrink_as_computed_by_hand(gamma):
    net = create_model("small_cnn", SubspaceSpec("structured")).eval()
    level = LevelCompressor(net, cache=True)(net.spec.calc.alpha(gamma))
    assert count_macs(net, level, (1, 28, 28)) == small_cnn_macs(gamma)
    params, k_in = 0, 1
    for c, _, _ in PLAN:
        k = width(c, gamma)
        params += k * k_in * 9 + 2 * k  # conv + norm scale and shift
        k_in = k
    params += k_in * 10 + 10
    assert weight_bytes(net, level) == 4 * params


def test_quantized_weights_count_bits():
    net = create_model("small_cnn", SubspaceSpec("quantization")).eval()
    levels = LevelCompressor(net, cache=True)
    b8, b4 = (weight_bytes(net, levels(net.spec.calc.alpha(b))) for b in (8, 4))
    assert (
        b8 > b4
        and b8 - b4
        == sum(
            m.weight.numel()
            for m in net.subspace_layers()
            if m.role == "hidden" and m.weight.dim() > 1
        )
        // 2
    )


TORCH_JSON = ("--json", "--repeats", "2", "--tier", "torch")


def test_profile_cli_json():
    r = subprocess.run(
        [sys.executable, "-m", "server.cli", "profile", "cpreresnet20", *TORCH_JSON],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [round(x["gamma"], 3) for x in rows] == [1.0, 0.75, 0.625, 0.5, 0.375, 0.25]
    macs = [x["mmacs"] for x in rows]
    assert macs == sorted(macs, reverse=True) and 30 < macs[0] < 45  # paper: 33.75 M at width 1
    assert 0.8 < rows[0]["weights_mb"] < 0.95  # paper: 0.87 MB
    assert {x["tier"] for x in rows} == {"torch"}


def test_levels_are_timed_interleaved_so_a_noisy_moment_cannot_invert_the_table(monkeypatch):
    """A fake clock: level i takes 4 − i units, except during a burst of 7 calls (a neighbour's)
    that makes each 50× slower. Timed level after level, 7 repeats, the burst would cover all
    of one level's samples and invert the table; interleaved, it touches two rounds of seven
    and every median and ratio is the true one."""
    import models.profile as prof

    clock, count = [0.0], [0]
    monkeypatch.setattr(prof.time, "perf_counter", lambda: clock[0])

    def runner(net, level, x):
        units = 4 - len(built)
        built.append(level.gamma)

        def run():
            burst = 20 <= count[0] < 27  # after 8 warm-up calls: rounds 3 and 4
            count[0] += 1
            clock[0] += units * (50.0 if burst else 1.0)

        return run, "fake"

    built: list[float] = []
    rows = prof.profile("small_cnn", [1.0, 0.75, 0.5, 0.25], repeats=7, runner=runner)
    assert built == [1.0, 0.75, 0.5, 0.25] and [r["tier"] for r in rows] == ["fake"] * 4
    assert [r["speedup"] for r in rows] == pytest.approx([1.0, 4 / 3, 2.0, 4.0])
    assert [r["latency_ms"] for r in rows] == pytest.approx([4e3, 3e3, 2e3, 1e3])


def test_interleaved_rounds_time_every_call_once_in_rotation():
    from models.profile import interleaved_seconds

    order = []
    calls = [lambda i=i: order.append(i) for i in range(3)]
    times = interleaved_seconds(calls, 4)
    assert [len(t) for t in times] == [4, 4, 4]
    assert order[6:] == [0, 1, 2, 1, 2, 0, 2, 0, 1, 0, 1, 2]  # after two warm-up calls each
