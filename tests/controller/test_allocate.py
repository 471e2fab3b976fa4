"""One budget across models: the knapsack against brute force, and the joint policy."""

from __future__ import annotations

import itertools
import random

import pytest

from controller.allocate import Option, allocate
from controller.policy import (
    LevelPoint,
    OperatorPolicy,
    PlantView,
    PolicyState,
    Profile,
    latency_headroom,
)
from controller.readings import ModelFeedback, Readings


def brute(options, budget):
    """Every combination of levels: the best Σ value that fits, or None."""
    names = list(options)
    best = None
    for combo in itertools.product(*(options[n] for n in names)):
        if sum(o.demand for o in combo) <= budget + 1e-12:
            v = sum(o.value for o in combo)
            best = v if best is None else max(best, v)
    return best


@pytest.mark.parametrize("seed", range(60))
def test_the_knapsack_matches_brute_force(seed):
    rng = random.Random(seed)
    options = {
        f"m{i}": [
            Option(a / 4, rng.uniform(0, 1.0) * rng.choice([0, 1, 1, 1]), rng.uniform(0, 5))
            for a in range(rng.randint(1, 5))
        ]
        for i in range(rng.randint(1, 4))
    }
    budget = rng.uniform(0, 2.5)
    chosen = allocate(options, budget)
    assert set(chosen) == set(options)
    picked = [next(o for o in options[n] if o.alpha == a) for n, a in chosen.items()]
    best = brute(options, budget)
    if best is None:  # nothing fits: the cheapest of each
        cheapest = {n: min(o.demand for o in options[n]) for n in options}
        assert all(p.demand == cheapest[n] for n, p in zip(chosen, picked, strict=True))
    else:
        assert sum(p.demand for p in picked) <= budget + 1e-12
        assert sum(p.value for p in picked) == pytest.approx(best)


def test_ties_go_to_the_more_accurate_levels():
    free = [Option(a, 0.0, 0.0) for a in (0.0, 0.5, 1.0)]  # a model without traffic
    assert allocate({"idle": free}, 0.0) == {"idle": 1.0}
    assert allocate({"idle": free, "x": [Option(0.0, 5.0, 1.0)]}, 1.0) == {"idle": 1.0, "x": 0.0}


PROFILE = Profile(
    [LevelPoint(i / 4, i / 4, (1 + i) / 1e3, 0.90 + 0.02 * i) for i in range(5)]
)  # forward 1 … 5 ms, accuracy 90 … 98 %


def plants(specs, alpha=1.0):
    return {
        name: PlantView(
            OperatorPolicy(latency_target_s=1.0, priority=prio, objective=objective),
            profile,
            ModelFeedback(request_rate=rate),
            PolicyState(alpha, 0.0),
        )
        for name, (rate, prio, objective, profile) in specs.items()
    }


def readings(free):
    return Readings(time=0, cpu_count=2, cpu_available_cores=2.0, other_cpu_cores=2.0 - free)


@pytest.mark.parametrize("seed", range(25))
def test_the_joint_policy_maximises_traffic_weighted_accuracy(seed):
    """Decisions against brute force over all level combinations of the models."""
    rng = random.Random(seed)
    no_acc = Profile([LevelPoint(p.alpha, p.gamma, p.latency_s) for p in PROFILE.points])
    specs = {
        f"m{i}": (
            rng.choice([0.0, 50.0, 100.0, 200.0]),
            rng.choice([0.5, 1.0, 2.0]),
            "share",
            rng.choice([PROFILE, PROFILE, no_acc]),
        )
        for i in range(rng.randint(1, 3))
    }
    free = rng.uniform(0.1, 2.0)
    ps = plants(specs)
    decisions = latency_headroom(readings(free), ps, 100.0)
    budget = free * 0.8  # the default headroom; all start at the top: no up-margin

    def acc(p, a):
        pts = p.profile.points
        return a if pts[0].accuracy is None else next(x.accuracy for x in pts if x.alpha == a)

    options = {
        n: [
            Option(a, p.feedback.request_rate * p.profile.expected_latency(a),
                   p.operator.priority * p.feedback.request_rate * acc(p, a))
            for a in p.profile.alphas
        ]
        for n, p in ps.items()
    }  # fmt: skip
    best = brute(options, budget)
    value = sum(
        next(o.value for o in options[n] if o.alpha == d.alpha) for n, d in decisions.items()
    )
    if best is None:
        assert all(d.alpha == 0.0 for n, d in decisions.items() if ps[n].feedback.request_rate)
    else:
        assert value == pytest.approx(best)
    for n, d in decisions.items():  # no traffic: the most accurate level, and it costs nothing
        if ps[n].feedback.request_rate == 0:
            assert d.alpha == 1.0


def test_priority_decides_who_keeps_the_top():
    # 0.8 core free → budget 0.64: both at the top would take 1.0 core
    specs = {"a": (100.0, 1.0, "share", PROFILE), "b": (100.0, 3.0, "share", PROFILE)}
    d = latency_headroom(readings(0.8), plants(specs), 100.0)
    assert d["b"].alpha == 1.0 and d["a"].alpha < 1.0 and d["a"].reason == "cpu_share"
    specs = {"a": (100.0, 3.0, "share", PROFILE), "b": (100.0, 1.0, "share", PROFILE)}
    d = latency_headroom(readings(0.8), plants(specs), 100.0)
    assert d["a"].alpha == 1.0 and d["b"].alpha < 1.0


def test_fixed_and_latency_models_take_their_cpu_off_the_budget():
    # budget 0.64: the latency-objective model at the top takes 0.5; 0.14 is left for the
    # share model at 100 rps: 1 ms → level 0 (0.1 core)
    specs = {"lat": (100.0, 1.0, "latency", PROFILE), "s": (100.0, 1.0, "share", PROFILE)}
    d = latency_headroom(readings(0.8), plants(specs), 100.0)
    assert d["lat"].alpha == 1.0 and d["s"].alpha == 0.0
    ps = plants({"f": (100.0, 1.0, "share", PROFILE), "s": (100.0, 1.0, "share", PROFILE)})
    ps["f"] = PlantView(
        OperatorPolicy(mode="fixed", alpha=1.0), PROFILE, ps["f"].feedback, ps["f"].state
    )
    d = latency_headroom(readings(0.8), ps, 100.0)
    assert d["f"].reason == "operator_fixed" and d["s"].alpha == 0.0
