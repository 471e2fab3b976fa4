"""Per-request floors and ceilings against the profile, the bounds and fixed mode."""

from __future__ import annotations

import pytest

from controller.hints import HintError, hinted_level
from controller.policy import LevelPoint, OperatorPolicy, Profile

# α = 0 … 1 in quarters: forward 1 … 5 ms, accuracy 80 … 96 %
PROFILE = Profile([LevelPoint(i / 4, i / 4, (1 + i) / 1e3, 0.80 + 0.04 * i) for i in range(5)])
AUTO = OperatorPolicy()


def predict(a: float) -> float:
    return 0.002 + PROFILE.expected_latency(a)  # 2 ms overhead + forward


def test_no_hint_is_the_current_level():
    assert hinted_level(PROFILE, AUTO, 0.5) == 0.5


def test_min_accuracy_rises_to_the_cheapest_level_that_reaches_it():
    assert hinted_level(PROFILE, AUTO, 0.0, min_accuracy=0.85) == 0.5  # 88 %: 84 % is short
    assert hinted_level(PROFILE, AUTO, 0.0, min_accuracy=0.88) == 0.5
    assert hinted_level(PROFILE, AUTO, 0.75, min_accuracy=0.85) == 0.75  # already above it


def test_min_accuracy_out_of_reach_names_the_best_available():
    with pytest.raises(HintError, match=r"the best is 0\.9600 at α = 1\.000"):
        hinted_level(PROFILE, AUTO, 0.0, min_accuracy=0.99)
    bounded = OperatorPolicy(max_alpha=0.5)
    with pytest.raises(HintError, match=r"within the bounds.*0\.8800 at α = 0\.500"):
        hinted_level(PROFILE, bounded, 0.0, min_accuracy=0.9)
    bare = Profile([LevelPoint(p.alpha, p.gamma, p.latency_s) for p in PROFILE.points])
    with pytest.raises(HintError, match="no accuracy figures"):
        hinted_level(bare, AUTO, 0.0, min_accuracy=0.5)


def test_max_latency_lowers_the_level_never_raises_it():
    # predicted 3 … 7 ms: ≤ 5 ms → α = 0.5
    assert hinted_level(PROFILE, AUTO, 1.0, max_latency_s=0.005, predict=predict) == 0.5
    assert hinted_level(PROFILE, AUTO, 0.25, max_latency_s=0.1, predict=predict) == 0.25
    # nothing meets 1 ms: the fastest, best effort
    assert hinted_level(PROFILE, AUTO, 1.0, max_latency_s=0.001, predict=predict) == 0.0
    # no prediction yet: the hint cannot be judged, the current level serves
    assert hinted_level(PROFILE, AUTO, 1.0, max_latency_s=0.001, predict=lambda a: None) == 1.0


def test_both_hints_together():
    # floor 88 % → α ≥ 0.5; ceiling 6 ms → α ≤ 0.75: the most accurate that meets both
    got = hinted_level(PROFILE, AUTO, 1.0, min_accuracy=0.88, max_latency_s=0.006, predict=predict)
    assert got == 0.75
    with pytest.raises(HintError, match=r"accuracy ≥ 0\.9200.*6\.0 ms at α = 0\.750"):
        hinted_level(PROFILE, AUTO, 1.0, min_accuracy=0.92, max_latency_s=0.004, predict=predict)


def test_fixed_mode_is_the_bounds_alpha_alpha():
    fixed = OperatorPolicy(mode="fixed", alpha=0.5)
    assert hinted_level(PROFILE, fixed, 0.5, min_accuracy=0.88) == 0.5
    with pytest.raises(HintError, match=r"fixed at α = 0\.500"):
        hinted_level(PROFILE, fixed, 0.5, min_accuracy=0.9)
    with pytest.raises(HintError, match=r"fixed at α = 0\.500"):
        hinted_level(PROFILE, fixed, 0.5, max_latency_s=0.001, predict=predict)


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"min_accuracy": 1.5}, "min_accuracy"), ({"max_latency_s": 0.0}, "max_latency_ms")],
)
def test_nonsense_hints_are_refused(kw, match):
    with pytest.raises(HintError, match=match):
        hinted_level(PROFILE, AUTO, 0.5, **kw)
