"""(width, int8) points: the share objective may choose them, per-request floors exclude them."""

from __future__ import annotations

import pytest

from controller.allocate import Option, allocate, allocate_points
from controller.hints import hinted_point
from controller.policy import (
    LevelPoint,
    OperatorPolicy,
    PlantView,
    PolicyState,
    Profile,
    latency_headroom,
)
from controller.readings import ModelFeedback, Readings

# Seven fp32 levels: forward 1 … 7 ms, accuracy 90 … 96 %; int8 at the top: 2 ms, 95.8 %.
FP32 = [LevelPoint(i / 6, 0.25 + 0.125 * i, (1 + i) / 1e3, 0.9 + i / 100) for i in range(7)]
INT8 = LevelPoint(1.0, 1.0, 0.002, 0.958, "int8")
PROFILE = Profile([*FP32, INT8])
SHARE = OperatorPolicy(latency_target_s=0.05)
FB = ModelFeedback(request_rate=100.0)


def busy(other: float) -> Readings:
    return Readings(time=0, cpu_count=2, cpu_available_cores=2.0, other_cpu_cores=other)


def decide(r: Readings, alpha: float = 1.0, precision: str = "fp32", profile=PROFILE):
    view = PlantView(SHARE, profile, FB, PolicyState(alpha, 0.0, precision))
    return latency_headroom(r, {"m": view}, 100.0)["m"]


def test_the_profile_keeps_variants_apart_from_the_fp32_levels():
    assert [p.precision for p in PROFILE.points] == ["fp32"] * 7
    assert PROFILE.variants == (INT8,)
    assert PROFILE.variant(1.0, "int8") is INT8 and PROFILE.variant(0.5, "int8") is None
    assert PROFILE.point_latency(1.0, "int8") == 0.002
    assert PROFILE.point_latency(1.0) == pytest.approx(0.007)
    # a variant joining later replaces one of the same point
    again = PROFILE.with_points([LevelPoint(1.0, 1.0, 0.003, 0.95, "int8")])
    assert [v.latency_s for v in again.variants] == [0.003]
    assert again.without(1.0, "int8").variants == () and len(again.points) == 7


def test_share_takes_the_int8_point_when_the_free_cpu_forces_a_cut():
    # budget (2 − 1.5) · 0.8 = 0.4 core; demand = 100 · fwd: fp32 fits up to 4 ms (α = 3/6,
    # 93 %), int8 at the top costs 0.2 core at 95.8 %: the knapsack prefers it.
    d = decide(busy(other=1.5))
    assert (d.alpha, d.precision, d.reason) == (1.0, "int8", "cpu_share")


def test_share_keeps_fp32_when_it_fits():
    d = decide(busy(other=0.5))  # 0.7 core ≤ 1.2
    assert (d.alpha, d.precision) == (1.0, "fp32")
    # and goes back from int8 to fp32 at the same width once it fits again (after dwell)
    d = decide(busy(other=0.5), precision="int8")
    assert (d.alpha, d.precision, d.reason) == (1.0, "fp32", "recovered")


def test_a_variant_without_recorded_accuracy_is_never_chosen():
    blind = Profile([*FP32, LevelPoint(1.0, 1.0, 0.002, None, "int8")])
    d = decide(busy(other=1.5), profile=blind)
    assert d.precision == "fp32" and d.alpha == pytest.approx(0.5)


def test_an_int8_variant_never_counts_as_more_accurate_than_its_width():
    lucky = Profile([*FP32, LevelPoint(1.0, 1.0, 0.002, 0.99, "int8")])  # above fp32's 96 %
    d = decide(busy(other=0.5), profile=lucky)
    assert d.precision == "fp32"  # equal value: the fp32 point wins the tie


def test_allocate_returns_the_chosen_points():
    opts = {"m": [Option(1.0, 1.0, 0.96), Option(1.0, 0.3, 0.958, "int8"), Option(0.5, 0.4, 0.93)]}
    assert allocate_points(opts, 0.5)["m"].precision == "int8"
    assert allocate(opts, 0.5) == {"m": 1.0}
    assert allocate_points(opts, 2.0)["m"].precision == "fp32"


@pytest.mark.parametrize(
    ("floor", "expected"),
    [
        (None, (1.0, "int8")),  # no floor: the current point serves
        (0.955, (1.0, "int8")),  # int8's 95.8 % meets it
        (0.959, (1.0, "fp32")),  # int8 is below: the same width in fp32 (96 %)
    ],
)
def test_min_accuracy_floors_exclude_int8_points_below_them(floor, expected):
    op = OperatorPolicy()
    got = hinted_point(PROFILE, op, 1.0, "int8", min_accuracy=floor)
    assert got == expected


def test_a_floor_above_every_point_is_refused():
    from controller.hints import HintError

    with pytest.raises(HintError):
        hinted_point(PROFILE, OperatorPolicy(), 1.0, "int8", min_accuracy=0.97)


def test_the_loop_moves_a_plant_to_the_chosen_point_and_reads_back_its_precision():
    from controller.loop import Controller, Plant
    from controller.policy import Decision

    served = {"alpha": 1.0, "precision": "fp32"}
    moves: list[tuple[float, str, str]] = []

    def on_point(alpha: float, precision: str, reason: str) -> None:
        moves.append((alpha, precision, reason))
        served.update(alpha=alpha, precision=precision)

    def policy(r, plants, now):
        return {n: Decision(1.0, "cpu_share", "int8") for n in plants}

    ctl = Controller(read=lambda: Readings(time=0), policy=policy, clock=lambda: 5.0)
    ctl.add(
        Plant(
            "m",
            lambda: PROFILE,  # a callable: the server's points join it while serving
            lambda: served["alpha"],
            lambda: SHARE,
            lambda: FB,
            lambda a, why: pytest.fail("on_point is used when given"),
            current_precision=lambda: served["precision"],
            on_point=on_point,
        )
    )
    ctl.step()
    assert moves == [(1.0, "int8", "cpu_share")]
    assert ctl.states["m"].precision == "int8"  # read back: a change of point restarts dwell
    ctl.step()
    assert len(moves) == 1  # served already: not asked again


def test_a_latency_ceiling_the_int8_point_meets_keeps_it():
    def predict(alpha: float) -> float:  # 1 ms of overhead over each fp32 forward pass
        return 0.001 + PROFILE.expected_latency(alpha)

    op = OperatorPolicy()
    # int8 at the top: 1 + 2 ms; fp32 at the top 8 ms: a 4 ms ceiling keeps int8
    assert hinted_point(PROFILE, op, 1.0, "int8", max_latency_s=0.004, predict=predict) == (
        1.0,
        "int8",
    )
    # a 2.5 ms ceiling: only fp32 at α = 0 (1 + 1 ms) meets it
    got = hinted_point(PROFILE, op, 1.0, "int8", max_latency_s=0.0025, predict=predict)
    assert got == (0.0, "fp32")


def test_a_fixed_policy_keeps_the_operators_precision():
    prof = Profile([LevelPoint(0.0, 0.25, 1e-3, 0.9), LevelPoint(1.0, 1.0, 2e-3, 0.95)])
    for precision in ("int8", "fp32"):
        op = OperatorPolicy(mode="fixed", alpha=1.0, precision=precision)
        v = PlantView(op, prof, ModelFeedback(request_rate=10.0), PolicyState(1.0, 0.0))
        d = latency_headroom(Readings(time=0), {"m": v}, 10.0)["m"]
        assert (d.alpha, d.reason, d.precision) == (1.0, "operator_fixed", precision)
    with pytest.raises(ValueError, match="precision"):
        OperatorPolicy(mode="fixed", alpha=1.0, precision="int4")
