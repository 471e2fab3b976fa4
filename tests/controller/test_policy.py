"""Table tests of the policies on hand-written readings with a fake clock."""

from __future__ import annotations

import pytest

from controller.policy import (
    LevelPoint,
    OperatorPolicy,
    PlantView,
    PolicyState,
    Profile,
    get_policy,
    latency_one,
)
from controller.readings import ModelFeedback, Readings

# Seven levels: forward 1 ms at α = 0 … 7 ms at α = 1.
PROFILE = Profile(
    [LevelPoint(i / 6, 0.25 + 0.125 * i, (1 + i) / 1e3, 0.9 + i / 100) for i in range(7)]
)
TOP, BOTTOM = 1.0, 0.0
OP = OperatorPolicy(latency_target_s=0.011)  # margins: down ≤ 11 ms, up ≤ 7.7 ms


def decide(readings=None, op=OP, alpha=TOP, since=100.0, p95=None, profile=PROFILE):
    r = readings or Readings(time=0.0)
    fb = ModelFeedback(latency_p95_s=p95)
    return latency_one(r, PlantView(op, profile, fb, PolicyState(alpha, 0.0)), since)


def one(policy, r, op, alpha, now):
    view = PlantView(op, PROFILE, ModelFeedback(), PolicyState(alpha, 0))
    return policy(r, {"m": view}, now)["m"]


def test_idle_machine_keeps_full_accuracy():
    assert decide().alpha == TOP and decide().reason == "hold"


def test_latency_violation_compresses_to_the_most_accurate_level_that_fits():
    # p95 of 20 ms at α = 1 (7 ms forward): predicted(α) = 20 ms · fwd(α) / 7 ms ≤ 11 ms
    # → fwd(α) ≤ 3.85 ms → α = 2/6 (3 ms).
    d = decide(None, p95=0.020)
    assert d.alpha == pytest.approx(2 / 6) and d.reason == "latency"


def test_cpu_pressure_alone_predicts_slowdown():
    # PSI 80 %: slowdown 5× → fwd(α) ≤ 2.2 ms → α = 1/6.
    d = decide(Readings(time=0, cpu_pressure=0.8))
    assert d.alpha == pytest.approx(1 / 6) and d.reason == "cpu"


def test_nothing_fits_goes_to_the_most_compressed():
    assert decide(None, p95=1.0).alpha == BOTTOM


def test_recovery_needs_the_hysteresis_margin():
    # At α = 0 with p95 = 1.2 ms: predicted at α = 1 is 8.4 ms, under 11 ms but above 7.7 ms
    # (70 % margin) → only levels with predicted ≤ 7.7 ms: fwd ≤ 6.4 ms → α = 5/6.
    d = decide(None, p95=0.0012, alpha=BOTTOM)
    assert d.alpha == pytest.approx(5 / 6) and d.reason == "recovered"


def test_dwell_blocks_fast_moves():
    assert decide(p95=0.0005, alpha=BOTTOM, since=1.0).reason == "hold"  # < 3 s dwell up
    assert decide(p95=0.0005, alpha=BOTTOM, since=3.5).alpha == TOP
    assert decide(p95=0.5, since=0.2).reason == "hold"  # < 0.5 s dwell down
    assert decide(p95=0.5, since=0.6).alpha == BOTTOM


def test_operator_fixed_wins_and_bounds_apply():
    fixed = OperatorPolicy(mode="fixed", alpha=0.5)
    assert decide(None, p95=1.0, op=fixed).alpha == 0.5
    bounded = OperatorPolicy(min_alpha=2 / 6, max_alpha=4 / 6, latency_target_s=0.011)
    assert decide(op=bounded, alpha=4 / 6).alpha == pytest.approx(4 / 6)  # idle: the upper bound
    assert decide(None, p95=1.0, op=bounded, alpha=4 / 6).alpha == pytest.approx(
        2 / 6
    )  # overloaded: the lower bound
    d = decide(op=bounded, alpha=TOP)  # outside the bounds: back inside at once
    assert d.alpha == pytest.approx(4 / 6) and d.reason == "bounds"


@pytest.mark.parametrize(
    ("percent", "charging", "expected", "reason"),
    [
        (50, False, TOP, "hold"),
        (15, False, 3 / 6, "battery_low"),
        (8, False, BOTTOM, "battery_low"),
        (8, True, TOP, "hold"),
        (None, None, TOP, "hold"),
    ],
    ids=["half", "low", "critical", "charging", "mains"],
)
def test_battery(percent, charging, expected, reason):
    d = decide(Readings(time=0, battery_percent=percent, battery_charging=charging))
    assert d.alpha == pytest.approx(expected) and d.reason == reason


def test_memory_pressure_steps_down():
    d = decide(Readings(time=0, memory_available_bytes=5, memory_total_bytes=100))
    assert d.alpha == pytest.approx(5 / 6) and d.reason == "memory_pressure"
    d = decide(Readings(time=0, memory_pressure=0.5), alpha=3 / 6)
    assert d.alpha == pytest.approx(2 / 6)
    pod = Readings(
        time=0,
        memory_available_bytes=90,
        memory_total_bytes=100,
        cgroup_memory_limit_bytes=100,
        cgroup_memory_current_bytes=95,
    )
    assert pod.memory_available_fraction == pytest.approx(0.05)  # the pod's limit, not the host
    assert decide(pod).reason == "memory_pressure"


def test_missing_sensors_hold():
    empty = Readings(time=0)
    # idle but currently compressed: recovery is allowed once the dwell has passed
    assert decide(empty, alpha=3 / 6).alpha == TOP
    assert decide(empty, alpha=TOP).alpha == TOP


def test_registry_and_other_policies():
    with pytest.raises(ValueError, match="latency_headroom"):
        get_policy("nope")
    static = get_policy("static")
    assert one(static, Readings(time=0, cpu_pressure=0.9), OP, 0.5, 9).alpha == 1
    linear = get_policy("cpu_linear")
    busy = one(linear, Readings(time=0, cpu_utilisation=0.9), OP, 1.0, 9)
    idle = one(linear, Readings(time=0, cpu_utilisation=0.0), OP, 0.0, 9)
    assert busy.alpha == 0.0 and idle.alpha == 1.0


def test_a_level_measured_faster_now_is_predicted_at_its_measured_speed():
    """A cached tier-2 level runs faster than profiled: under CPU pressure alone the policy
    keeps a wider level than the tier-1 profile would allow."""
    r = Readings(time=0, cpu_pressure=0.5)  # slowdown 2: fwd(α) · 2 ≤ 11 ms
    assert decide(r).alpha == pytest.approx(4 / 6)  # 5 ms profiled: the widest that fits
    faster = {1.0: 0.004, 5 / 6: 0.0035}  # α = 1 and 5/6 held by a faster path
    profile = Profile(PROFILE.points, measured=faster.get)
    assert profile.expected_latency(1.0) == 0.004 and profile.expected_latency(4 / 6) == 0.005
    assert profile.expected_latency(11 / 12) == pytest.approx((0.004 + 0.0035) / 2)
    d = decide(r, profile=profile)
    assert d.alpha == TOP and d.reason == "hold"  # 4 ms · 2 = 8 ms ≤ 11 ms
