"""The level cache counts in the memory budget: a registry's resident bytes follow the cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest

from models import LevelCompressor, SubspaceSpec, create_model
from models.compression import LEVEL_CACHE
from server.errors import LoadError
from server.registry import ModelRegistry
from server.settings import Settings


@dataclass(eq=False)
class FakeModel:
    """What the budget reads of a ServedModel: its measured bytes and its network."""

    net: object
    resident_bytes: int
    path: Path


@pytest.fixture
def level_cache():
    bound = LEVEL_CACHE.bound_bytes
    yield LEVEL_CACHE
    LEVEL_CACHE.set_bound(bound)


def test_cached_levels_count_in_the_budget(level_cache, tmp_path):
    file = tmp_path / "m.safetensors"
    file.write_bytes(b"\x00" * 1000)
    shared = SimpleNamespace(settings=Settings(level_cache_mb=4.0))
    registry = ModelRegistry(shared, {}, repository=None, default=None, budget_bytes=None)
    assert level_cache.bound_bytes == 4 * 2**20  # the setting bounds the process's cache
    net = create_model("small_cnn", SubspaceSpec("quantization")).eval()
    model = FakeModel(net, 5_000_000, file)
    registry.models["m"] = model  # as a load leaves it: nothing cached yet
    registry._cached_at_load[model] = 0
    assert registry.resident_bytes() == 5_000_000
    levels = LevelCompressor(net, cache=True)
    grid = net.spec.calc.grid(0)
    for alpha in grid[:3]:
        levels(alpha)
    held = level_cache.held_for(net)
    assert 0 < held <= 4 * 2**20 and held == level_cache.nbytes
    assert registry.resident_bytes() == 5_000_000 + held
    # A budget the cache pushes over refuses the next load with 507.
    registry.budget_bytes = 5_000_000 + held + 31 * 2**20 + 4 * 1000
    with pytest.raises(LoadError) as e:
        registry._check_budget(file, None)
    assert e.value.status == 507
    level_cache.set_bound(0)  # evicting frees the budget again
    assert registry.resident_bytes() == 5_000_000
    registry._check_budget(file, None)


def test_levels_cached_during_a_load_are_not_counted_twice(level_cache, tmp_path):
    file = tmp_path / "m.safetensors"
    file.write_bytes(b"\x00" * 1000)
    shared = SimpleNamespace(settings=Settings())
    registry = ModelRegistry(shared, {}, repository=None, default=None, budget_bytes=None)
    net = create_model("small_cnn", SubspaceSpec("quantization")).eval()
    levels = LevelCompressor(net, cache=True)
    for alpha in net.spec.calc.grid(0):
        levels(alpha)  # the load's profile fills the cache: in the measured growth
    at_load = level_cache.held_for(net)
    model = FakeModel(net, 5_000_000 + at_load, file)
    registry.models["m"] = model
    registry._cached_at_load[model] = at_load
    assert registry.held_bytes(model) == 5_000_000 + at_load
    level_cache.set_bound(at_load // 2)
    assert registry.held_bytes(model) == 5_000_000 + level_cache.held_for(net) < 5_000_000 + at_load
