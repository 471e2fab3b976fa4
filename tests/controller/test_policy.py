"""Table tests of the policies on hand-written readings and traffic with a fake clock."""

from __future__ import annotations

import pytest

from controller.policy import (
    LevelPoint,
    OperatorPolicy,
    PlantView,
    PolicyState,
    Profile,
    Tuning,
    calibrate,
    get_policy,
    latency_headroom,
)
from controller.readings import ModelFeedback, Readings

# Seven levels: forward 1 ms at α = 0 … 7 ms at α = 1; accuracy 90 % … 96 %.
PROFILE = Profile(
    [LevelPoint(i / 6, 0.25 + 0.125 * i, (1 + i) / 1e3, 0.9 + i / 100) for i in range(7)]
)
TOP, BOTTOM = 1.0, 0.0
LAT = OperatorPolicy(latency_target_s=0.011, objective="latency")  # up moves ≤ 7.7 ms
SHARE = OperatorPolicy(latency_target_s=0.011)  # the default objective
IDLE = Readings(time=0.0)


def fwd(i: int) -> float:
    return (1 + i) / 1e3


def view(alpha=TOP, changed_at=0.0, op=LAT, fb=None, profile=PROFILE) -> PlantView:
    return PlantView(op, profile, fb or ModelFeedback(), PolicyState(alpha, changed_at))


def decide(r=IDLE, now=100.0, **kw):
    return latency_headroom(r, {"m": view(**kw)}, now)["m"]


def level(i: int) -> float:
    return PROFILE.alphas[i]


# --- the latency objective and the overhead-aware latency model ----------------------------


def test_idle_machine_keeps_full_accuracy():
    for op in (LAT, SHARE):
        d = decide(op=op)
        assert (d.alpha, d.reason) == (TOP, "hold")


def test_only_the_forward_part_is_scaled():
    # overhead 2 ms, forward measured 14 ms at α = 1 where 7 ms was profiled: slowdown 2.
    # predicted(i) = 2 + 2 · (1 + i) ms ≤ 11 ms → i ≤ 3.5 → level 3.
    fb = ModelFeedback(overhead_s=0.002, forward_s=0.014)
    d = decide(fb=fb)
    assert d.alpha == pytest.approx(level(3)) and d.reason == "latency"


def test_the_observed_quantile_gives_the_overhead_beyond_the_forward_pass():
    # p95 14 ms at α = 1 (7 ms forward, no contention figure): overhead 7 ms,
    # predicted(i) = 7 + (1 + i) ≤ 11 → i = 3.
    d = decide(fb=ModelFeedback(latency_p95_s=0.014))
    assert d.alpha == pytest.approx(level(3)) and d.reason == "latency"
    assert decide(fb=ModelFeedback(latency_p95_s=0.010)).reason == "hold"  # 10 ms fits at the top


@pytest.mark.parametrize("op", [LAT, SHARE], ids=["latency", "share"])
def test_a_few_per_cent_over_the_target_holds(op):
    # p95 11.5 ms at α = 1: overhead 4.5 ms, predicted(i) = 5.5 + i ms; level 5 (10.5 ms)
    # meets the 11 ms target but cuts 8.7 % < latency_min_cut 10 % → hold, and say why.
    fb = ModelFeedback(latency_p95_s=0.0115, request_rate=10.0)
    d = decide(op=op, fb=fb)
    assert (d.alpha, d.reason) == (TOP, "latency_no_gain")
    loose = latency_headroom(IDLE, {"m": view(op=op, fb=fb)}, 100.0, Tuning(latency_min_cut=0))["m"]
    assert (loose.alpha, loose.reason) == (pytest.approx(level(5)), "latency")
    # 13 ms: overhead 6 ms, predicted(i) = 7 + i; level 4 (11 ms) meets it, a 15 % cut → move
    d = decide(op=op, fb=ModelFeedback(latency_p95_s=0.013, request_rate=10.0))
    assert d.alpha == pytest.approx(level(4)) and d.reason == "latency"


def test_a_mostly_overhead_model_is_not_compressed_for_nothing():
    # overhead 30 ms: 37 ms at the top, 31 ms at the bottom; the target is out of reach and
    # compression would cut only 16 % → stay at the top, and say why.
    d = decide(fb=ModelFeedback(overhead_s=0.030, forward_s=0.007))
    assert (d.alpha, d.reason) == (TOP, "target_unreachable")


def test_an_unreachable_target_still_compresses_when_the_forward_pass_dominates():
    # slowdown 15: 1 + 105 ms at the top, 1 + 15 ms at the bottom (still > 11 ms): compress.
    d = decide(fb=ModelFeedback(overhead_s=0.001, forward_s=0.105))
    assert (d.alpha, d.reason) == (BOTTOM, "target_unreachable")
    # and once there it stays, although the target is still missed
    stay = decide(alpha=BOTTOM, fb=ModelFeedback(overhead_s=0.001, forward_s=0.015))
    assert (stay.alpha, stay.reason) == (BOTTOM, "target_unreachable")


def test_cpu_pressure_alone_predicts_slowdown():
    # PSI 80 %: slowdown 5 → 5 · (1 + i) ms ≤ 11 ms → i = 1.
    d = decide(Readings(time=0, cpu_pressure=0.8))
    assert d.alpha == pytest.approx(level(1)) and d.reason == "latency"


def test_recovery_needs_the_hysteresis_margin():
    # At α = 0: overhead 1 ms, forward 1 ms as profiled: predicted(i) = 2 + i ms; a level
    # above the current one must be ≤ 7.7 ms → i = 5 (7 ms), not 6 (8 ms ≤ 11 ms).
    d = decide(alpha=BOTTOM, fb=ModelFeedback(overhead_s=0.001, forward_s=0.001))
    assert d.alpha == pytest.approx(level(5)) and d.reason == "recovered"


def test_dwell_blocks_fast_moves():
    t = Tuning()
    calm = ModelFeedback(overhead_s=0.0, forward_s=0.001)
    assert decide(alpha=BOTTOM, fb=calm, now=t.dwell_up_s - 0.1).reason == "hold"
    assert decide(alpha=BOTTOM, fb=calm, now=t.dwell_up_s).alpha == TOP
    hot = ModelFeedback(overhead_s=0.001, forward_s=0.5, request_rate=1.0)
    assert decide(fb=hot, now=t.dwell_down_s - 0.1).reason == "hold"
    assert decide(fb=hot, now=t.dwell_down_s).alpha == BOTTOM


@pytest.mark.parametrize("op", [LAT, SHARE], ids=["latency", "share"])
def test_operator_fixed_wins_and_bounds_apply(op):
    fixed = OperatorPolicy(mode="fixed", alpha=0.5, objective=op.objective)
    hot = ModelFeedback(overhead_s=0.001, forward_s=0.5, request_rate=1.0)
    assert decide(op=fixed, fb=hot) == type(decide(op=fixed))(0.5, "operator_fixed")
    bounded = OperatorPolicy(
        min_alpha=level(2), max_alpha=level(4), latency_target_s=0.011, objective=op.objective
    )
    assert decide(op=bounded, alpha=level(4)).alpha == pytest.approx(level(4))  # idle: upper
    d = decide(op=bounded, alpha=level(4), fb=hot)
    assert d.alpha == pytest.approx(level(2))  # overloaded: the lower bound
    d = decide(op=bounded, alpha=TOP, now=0.0)  # outside the bounds: back inside at once
    assert d.alpha == pytest.approx(level(4)) and d.reason == "bounds"


@pytest.mark.parametrize("op", [LAT, SHARE], ids=["latency", "share"])
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
def test_battery(op, percent, charging, expected, reason):
    d = decide(Readings(time=0, battery_percent=percent, battery_charging=charging), op=op)
    assert d.alpha == pytest.approx(expected) and d.reason == reason


@pytest.mark.parametrize("op", [LAT, SHARE], ids=["latency", "share"])
def test_memory_pressure_steps_down(op):
    d = decide(Readings(time=0, memory_available_bytes=5, memory_total_bytes=100), op=op)
    assert d.alpha == pytest.approx(5 / 6) and d.reason == "memory_pressure"
    d = decide(Readings(time=0, memory_pressure=0.5), alpha=3 / 6, op=op)
    assert d.alpha == pytest.approx(2 / 6)
    pod = Readings(
        time=0,
        memory_available_bytes=90,
        memory_total_bytes=100,
        cgroup_memory_limit_bytes=100,
        cgroup_memory_current_bytes=95,
    )
    assert pod.memory_available_fraction == pytest.approx(0.05)  # the pod's limit, not the host
    assert decide(pod, op=op).reason == "memory_pressure"


def test_missing_sensors_recover_once_the_dwell_has_passed():
    assert decide(IDLE, alpha=3 / 6).alpha == TOP
    assert decide(IDLE, alpha=TOP).alpha == TOP


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


# --- the share objective: what other work leaves free --------------------------------------


def busy(other: float, own: float | None = None, cpus: int = 2) -> Readings:
    return Readings(
        time=0, cpu_count=cpus, cpu_available_cores=float(cpus), other_cpu_cores=other,
        own_cpu_cores=own,
    )  # fmt: skip


def test_share_keeps_the_top_when_other_work_leaves_room():
    fb = ModelFeedback(request_rate=100.0, forward_s=0.007, overhead_s=0.001)
    d = decide(busy(other=0.5), op=SHARE, fb=fb)
    assert (d.alpha, d.reason) == (TOP, "hold")  # 0.7 core ≤ 1.5 · 0.8


def test_share_compresses_to_the_most_accurate_level_that_fits_the_free_cpu():
    # free 0.3 core, budget 0.24 (20 % headroom); no own-CPU figure: demand(i) = 100 · fwd(i)
    # = 0.1 · (1 + i) cores → i = 1.
    fb = ModelFeedback(request_rate=100.0)
    d = decide(busy(other=1.7), op=SHARE, fb=fb)
    assert d.alpha == pytest.approx(level(1)) and d.reason == "cpu_share"
    # the latency objective ignores the share entirely
    assert decide(busy(other=1.7), op=LAT, fb=fb).alpha == TOP


def test_share_without_traffic_costs_nothing():
    d = decide(busy(other=2.0), op=SHARE, fb=ModelFeedback(request_rate=0.0))
    assert (d.alpha, d.reason) == (TOP, "hold")
    # nor has it any latency to protect: CPU pressure alone does not compress it
    stalled = Readings(time=0, cpu_pressure=0.8)
    assert decide(stalled, op=SHARE).alpha == TOP
    assert decide(stalled, op=SHARE, fb=ModelFeedback(request_rate=1.0)).alpha == level(1)


def test_share_is_still_subject_to_the_latency_target():
    # the CPU allows the top, the latency target only level 3 (as in the overhead test)
    fb = ModelFeedback(request_rate=10.0, overhead_s=0.002, forward_s=0.014)
    d = decide(busy(other=0.0), op=SHARE, fb=fb)
    assert d.alpha == pytest.approx(level(3)) and d.reason == "latency"


def test_share_moves_toward_accuracy_only_with_margin():
    # at level 1, budget 0.8 (free 1.0): level 6 costs 0.7 core, but up moves count 0.7 / 0.8
    # = 0.875 > 0.8; level 5 costs 0.6 / 0.8 = 0.75 ≤ 0.8 → level 5.
    fb = ModelFeedback(request_rate=100.0)
    d = decide(busy(other=1.0), op=SHARE, fb=fb, alpha=level(1))
    assert d.alpha == pytest.approx(level(5)) and d.reason == "recovered"


def expected_calibration(own, rates_fwd, walls):
    """Independent: overhead first (at most its wall time), the rest scales the forward."""
    rate = sum(r for r, _ in rates_fwd)
    f = sum(r * x for r, x in rates_fwd)
    if own < f:
        return own / f, 0.0
    o = min(own - f, sum(r * w for (r, _), w in zip(rates_fwd, walls, strict=True)))
    return 1 + (own - f - o) / f, o / rate


@pytest.mark.parametrize(
    ("own", "overhead_s"),
    [(0.9, 0.005), (0.9, 0.001), (0.35, 0.005)],
    ids=["overhead", "threads", "batching"],
)
def test_calibration_against_the_daemons_own_cpu(own, overhead_s):
    fb = ModelFeedback(request_rate=100.0, overhead_s=overhead_s)
    plants = {"m": view(op=SHARE, fb=fb)}
    k, o = calibrate(busy(other=0.0, own=own), plants, 100.0, Tuning())
    ek, eo = expected_calibration(own, [(100.0, fwd(6))], [overhead_s])
    assert (k, o) == pytest.approx((ek, eo))
    # the prediction at the served level is what the daemon really uses
    assert 100.0 * (o + k * fwd(6)) == pytest.approx(own)
    # right after a level change the smoothed CPU still shows the old level: not trusted
    assert calibrate(busy(0.0, own), plants, Tuning().settle_s - 0.1, Tuning()) == (1.0, 0.0)


def test_share_uses_the_calibrated_cost():
    # own 0.9 core at the top with 100 rps: 0.2 core of overhead (2 ms a request) →
    # demand(i) = 0.2 + 0.1 · (1 + i); free 0.8 → budget 0.64 → i ≤ 3.4 → level 3.
    fb = ModelFeedback(request_rate=100.0, overhead_s=0.005)
    d = decide(busy(other=1.2, own=0.9), op=SHARE, fb=fb)
    assert d.alpha == pytest.approx(level(3)) and d.reason == "cpu_share"


def test_registry_and_other_policies():
    with pytest.raises(ValueError, match="latency_headroom"):
        get_policy("nope")

    def one(policy, r, alpha):
        return policy(r, {"m": view(alpha=alpha)}, 9.0)["m"]

    static = get_policy("static")
    assert one(static, Readings(time=0, cpu_pressure=0.9), 0.5).alpha == 1
    linear = get_policy("cpu_linear")
    assert one(linear, Readings(time=0, cpu_utilisation=0.9), 1.0).alpha == 0.0
    assert one(linear, Readings(time=0, cpu_utilisation=0.0), 0.0).alpha == 1.0


@pytest.mark.parametrize(
    "bad",
    [
        {"mode": "manual"},
        {"objective": "speed"},
        {"priority": -1.0},
        {"priority": float("nan")},
        {"latency_target_s": 0.0},
        {"latency_quantile": 1.0},
        {"min_alpha": 0.8, "max_alpha": 0.2},
    ],
)
def test_an_operator_policy_refuses_nonsense(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        OperatorPolicy(**bad)


def test_decisions_carry_what_they_predict_for_get_level():
    # as in test_share_uses_the_calibrated_cost: level 3 costs 0.2 + 0.1 · 4 = 0.6 core;
    # no latency figures: forward 4 ms at level 3, no contention
    fb = ModelFeedback(request_rate=100.0, overhead_s=0.005)
    d = decide(busy(other=1.2, own=0.9), op=SHARE, fb=fb)
    assert d.demand_cores == pytest.approx(0.6)
    assert d.latency_s == pytest.approx(0.005 + fwd(3))
    assert d == type(d)(d.alpha, d.reason)  # not part of the decision's identity


def test_a_closed_loop_is_not_read_as_demand_the_wide_level_cannot_fit():
    # At level 1 (2 ms) one client sending back to back: 500 rps, one request in flight. At
    # the top (7 ms) it would send 1 / 0.007 = 143 rps: 1.0 core, 1.25 with the up margin ≤
    # the budget 1.6. Read as 500 rps it would be 3.5 cores and the level would stay at 1.
    closed = ModelFeedback(request_rate=500.0, concurrency=1.0)
    d = decide(busy(other=0.0), op=SHARE, fb=closed, alpha=level(1))
    assert d.alpha == TOP and d.reason == "recovered"
    assert d.demand_cores == pytest.approx(1.0 / 0.007 * fwd(6))


def test_paced_traffic_keeps_its_rate_at_every_level():
    # 200 rps paced, 0.4 in flight: the rate does not fall at a wider level. Level 6 costs
    # 1.4 / 0.8 = 1.75 > 1.6; level 5 1.2 / 0.8 = 1.5 ≤ 1.6 → level 5.
    paced = ModelFeedback(request_rate=200.0, concurrency=0.4)
    d = decide(busy(other=0.0), op=SHARE, fb=paced, alpha=level(1))
    assert d.alpha == pytest.approx(level(5)) and d.reason == "recovered"
