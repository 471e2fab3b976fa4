"""Sampling α toward the compressed end: the mixture's distribution against its definition."""

from __future__ import annotations

import argparse
import math
import random

import pytest

from models.commands import add_train
from models.families import Draw, Schedule
from models.levels import SubspaceSpec
from models.train import TrainConfig, training_draws

N = 20_000


def mixture_cdf(x: float, lo: float, hi: float, p: float, span: float) -> float:
    """F(x) of (1 − p)·U(lo, hi) + p·U(lo, lo + span·(hi − lo)), written out independently."""
    t = min(max((x - lo) / (hi - lo), 0.0), 1.0)
    return (1 - p) * t + p * min(t / span, 1.0)


def assert_matches_cdf(draws: list[float], lo: float, hi: float, p: float, span: float) -> None:
    for q in (0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 0.75, 0.9):
        x = lo + q * (hi - lo)
        want = mixture_cdf(x, lo, hi, p, span)
        got = sum(d <= x for d in draws) / len(draws)
        # 4.5 binomial standard deviations: a fixed seed, so this either always passes or not
        tol = 4.5 * math.sqrt(want * (1 - want) / len(draws)) + 1e-9
        assert abs(got - want) <= tol, (x, got, want)


@pytest.mark.parametrize(("p", "span"), [(0.5, 0.25), (0.8, 0.1), (1.0, 0.5)])
def test_uniform_alpha_follows_the_mixture(p, span):
    at = Schedule(0.9, compressed_mix=p, compressed_span=span)
    rng = random.Random(1)
    draws = [at.uniform_alpha(0.025, 1.0, rng) for _ in range(N)]
    assert min(draws) >= 0.025 and max(draws) <= 1.0
    assert_matches_cdf(draws, 0.025, 1.0, p, span)
    # and not the plain uniform: at the end of the span the mixture has p·(1 − span) more mass
    end = 0.025 + span * 0.975
    assert sum(d <= end for d in draws) / N > span + 0.5 * p * (1 - span)


def test_no_mix_is_the_plain_uniform_draw_for_draw():
    """The default consumes the same random numbers as rng.uniform: training is unchanged."""
    a, b = random.Random(7), random.Random(7)
    at = Schedule(0.5)
    assert [at.uniform_alpha(0.0, 1.0, a) for _ in range(50)] == [
        b.uniform(0.0, 1.0) for _ in range(50)
    ]


def test_structured_sandwich_keeps_both_ends_and_mixes_the_middle():
    spec = SubspaceSpec("structured")
    cfg = TrainConfig(compressed_mix=0.5, compressed_span=0.25)
    rng = random.Random(3)
    middle = []
    for _ in range(N // 2):
        draws = training_draws(spec, cfg, rng, 0.5)
        assert draws[:2] == [Draw(1.0), Draw(0.0)] and len(draws) == 4
        middle += [d.alpha for d in draws[2:]]
    assert_matches_cdf(middle, 0.0, 1.0, 0.5, 0.25)
    plain = training_draws(spec, TrainConfig(), random.Random(3), 0.5)
    ref = random.Random(3)
    assert [d.alpha for d in plain] == [1.0, 0.0, ref.uniform(0, 1), ref.uniform(0, 1)]


def test_unstructured_point_mixes_only_after_the_dense_warmup():
    spec = SubspaceSpec("unstructured")
    cfg = TrainConfig(family="unstructured", prune_warmup=0.5, compressed_mix=0.5)
    rng = random.Random(5)
    assert training_draws(spec, cfg, rng, 0.49) == [Draw(1.0)]  # dense warm-up
    alphas = [training_draws(spec, cfg, rng, 0.5)[0].alpha for _ in range(N)]
    assert_matches_cdf(alphas, 0.025, 1.0, 0.5, 0.25)


def test_cli_flags_reach_the_config_and_bad_values_are_refused():
    p = argparse.ArgumentParser()
    add_train(p)
    args = p.parse_args(["--compressed-mix", "0.5", "--compressed-span", "0.2"])
    assert (args.compressed_mix, args.compressed_span) == (0.5, 0.2)
    at = TrainConfig(compressed_mix=0.5, compressed_span=0.2).schedule(0.3)
    assert (at.progress, at.compressed_mix, at.compressed_span) == (0.3, 0.5, 0.2)
    for bad in ({"compressed_mix": 1.5}, {"compressed_mix": -0.1}, {"compressed_span": 0.0}):
        with pytest.raises(ValueError, match="compressed"):
            TrainConfig(**bad)


def test_unstructured_lcs_p_defaults_to_the_a_b_winner_and_nothing_else_changes():
    def resolved(**kw):
        c = TrainConfig(**kw)
        return (c.prune_warmup, c.compressed_mix, c.compressed_span)

    assert resolved(family="unstructured") == (0.5, 0.5, 0.25)  # issue 19's recipe (e)
    assert resolved(family="unstructured", kind="line") == (0.8, 0.0, 0.25)  # the reference
    topk = {"family": "unstructured", "norm": "batch", "train_gammas": (0.9,)}
    assert resolved(**topk) == (0.8, 0.0, 0.25)  # the TopK baselines keep their ramp
    for family in ("structured", "quantization"):
        assert resolved(family=family) == (0.8, 0.0, 0.25)
        assert resolved(family=family, kind="line") == (0.8, 0.0, 0.25)
    assert resolved(family="unstructured", prune_warmup=0.8, compressed_mix=0.0) == (
        0.8,
        0.0,
        0.25,
    )  # explicit values win


def test_unstructured_lcs_p_default_is_dense_for_half_then_mixed():
    spec = SubspaceSpec("unstructured")
    cfg, rng = TrainConfig(family="unstructured"), random.Random(11)
    assert all(training_draws(spec, cfg, rng, d) == [Draw(1.0)] for d in (0.0, 0.3, 0.499))
    alphas = [training_draws(spec, cfg, rng, 0.5)[0].alpha for _ in range(N)]
    assert_matches_cdf(alphas, 0.025, 1.0, 0.5, 0.25)


def test_make_accuracy_retrains_only_the_methods_whose_defaults_changed():
    from benchmarks.accuracy.plan import GRIDS, methods, recipe

    newer = {(m.family, m.label) for f in GRIDS for m in methods(f) if recipe(m) == 3}
    assert newer == {("unstructured", "LCS+P+IN")}
