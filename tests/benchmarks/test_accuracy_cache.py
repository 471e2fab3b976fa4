"""make accuracy's run cache: a run is found again only under the recipe it was trained with."""

from __future__ import annotations

import pytest

from benchmarks.accuracy import ab, plan, run

SETTINGS = {"epochs": 10, "max_train": None, "dataset": "digits"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "CACHE", tmp_path)
    return tmp_path


def _structured_point() -> plan.Method:
    return next(m for m in plan.methods("structured") if m.label == "LCS+P+IN")


def test_a_run_stored_under_todays_recipe_reads_back(cache):
    m = _structured_point()
    run._store(m, 0, SETTINGS, {"rows": [{"gamma": 1.0, "accuracy": 0.5}], "train_s": 1.0})
    assert run.cached(m, 0, SETTINGS)["rows"][0]["accuracy"] == 0.5
    assert run.cached(m, 0, SETTINGS | {"recipe": plan.RECIPE}) is None


def test_a_pinned_earlier_recipe_reads_that_recipes_run(cache):
    """Structured LCS+P trains recipe 4 (distillation) today; the A/B's row (a) is its recipe-2
    run of 10 epochs, stored before recipe 4 existed under a name without the recipe."""
    m = _structured_point()
    assert plan.recipe(m) == 4
    old = SETTINGS | {"recipe": plan.RECIPE}
    run._store(m, 1, old, {"rows": [{"gamma": 1.0, "accuracy": 0.25}], "train_s": 1.0})
    assert (cache / f"{m.name}-e10-s1.json").exists()
    assert run.cached(m, 1, SETTINGS) is None  # today's recipe: not that run
    assert ab.cached(ab.BY_KEY["s-a"], 1)["rows"][0]["accuracy"] == 0.25
