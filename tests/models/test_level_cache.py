"""The level cache: bounded in bytes, least recently used out, and a level rebuilt after
eviction is exactly a fresh f(ω, γ)."""

import random

import pytest
import torch

from models import LevelCompressor, SubspaceSpec, compress, create_model
from models.compression import LevelCache


def own_bytes(net, level) -> int:
    """Bytes of the tensors a level does not share with the network, counted from shapes:
    a point's fake-quantized hidden weights; a line's every interpolated tensor."""
    params = [p for p in net.parameters()]
    total = 0
    for p in level.params.values():
        for t in (p.weight, p.bias):
            if t is not None and not any(t is q for q in params):
                total += t.numel() * t.element_size()
    return total


def assert_same(a, b):
    assert a.params.keys() == b.params.keys()
    for k in a.params:
        pa, pb = a[k], b[k]
        assert torch.equal(pa.weight, pb.weight) and pa.act_bits == pb.act_bits
        assert (pa.bias is None and pb.bias is None) or torch.equal(pa.bias, pb.bias)


@pytest.mark.parametrize("kind", ["point", "line"])
def test_cache_stays_within_its_bound_and_counts_bytes_exactly(kind):
    net = create_model("small_cnn", SubspaceSpec("quantization", kind)).eval()
    grid = net.spec.calc.grid(0)
    size = {a: own_bytes(net, compress(net, a)) for a in grid}
    assert len(set(size.values())) == 1 and size[grid[0]] > 0
    cache = LevelCache(bound_bytes=int(2.5 * size[grid[0]]))  # room for two levels
    levels = LevelCompressor(net, cache=True, level_cache=cache)
    rng = random.Random(0)
    for _ in range(30):
        levels(rng.choice(grid))
        held = cache.alphas(levels)
        assert cache.nbytes == sum(size[a] for a in held) <= cache.bound_bytes
        assert len(held) <= 2
    assert len(held) == 2 and cache.evictions > 0


def test_least_recently_used_level_goes_first():
    net = create_model("small_cnn", SubspaceSpec("quantization")).eval()
    a, b, c, d = net.spec.calc.grid(0)[:4]
    one = own_bytes(net, compress(net, a))
    cache = LevelCache(bound_bytes=3 * one)
    levels = LevelCompressor(net, cache=True, level_cache=cache)
    first_a = levels(a)
    levels(b)
    levels(c)
    assert levels(a) is first_a  # a hit, and now the most recently used
    levels(d)  # evicts b, the least recently used
    assert cache.alphas(levels) == [c, a, d]
    assert cache.held_for(net) == 3 * one
    cache.set_bound(one)  # shrinking the bound evicts at once
    assert cache.alphas(levels) == [d] and cache.nbytes == one


@pytest.mark.parametrize("kind", ["point", "line"])
def test_level_served_after_eviction_equals_a_fresh_compression(kind):
    net = create_model("small_cnn", SubspaceSpec("quantization", kind)).eval()
    grid = net.spec.calc.grid(0)
    one = own_bytes(net, compress(net, grid[0]))
    cache = LevelCache(bound_bytes=one)  # one level: every other α evicts it
    levels = LevelCompressor(net, cache=True, level_cache=cache)
    first = levels(grid[0])
    levels(grid[1])
    assert cache.alphas(levels) == [grid[1]]
    again = levels(grid[0])
    assert again is not first  # rebuilt, not kept
    with torch.no_grad():
        assert_same(again, compress(net, grid[0]))
        assert_same(first, again)


def test_a_level_larger_than_the_bound_is_served_but_not_kept():
    net = create_model("small_cnn", SubspaceSpec("quantization")).eval()
    cache = LevelCache(bound_bytes=16)
    levels = LevelCompressor(net, cache=True, level_cache=cache)
    assert levels(0.5).gamma == 5 and cache.nbytes == 0 and cache.alphas(levels) == []


def test_an_owners_levels_are_freed_with_it():
    import gc

    net = create_model("small_cnn", SubspaceSpec("quantization")).eval()
    cache = LevelCache()
    levels = LevelCompressor(net, cache=True, level_cache=cache)
    levels(0.5)
    assert cache.nbytes > 0
    del levels
    gc.collect()
    assert cache.nbytes == 0 and cache.held_for(net) == 0
