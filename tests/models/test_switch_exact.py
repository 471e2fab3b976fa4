"""Serving's unstructured switch (reused tensors, thresholds kept per α) is exactly magnitude
pruning of ω*(α) by a full stable sort, ties included, and never touches a live level."""

import pytest
import torch

from models import LevelCompressor, SubspaceSpec, compress, create_model
from models.families import unstructured

ALPHAS = [0.025, 0.3, 0.5, 0.77, 1.0]


def full_sort_prune(layer, alpha: float, gamma: float) -> torch.Tensor:
    """The definition: ω*(α) with the n = ⌊γ·N⌋ smallest |w| zeroed, ties broken by a stable
    sort (the lower flat index goes first), computed from scratch."""
    w, _ = layer.at(alpha)
    n = int(gamma * w.numel())
    if layer.role != "hidden" or w.dim() == 1 or n == 0:
        return w
    order = torch.sort(w.abs().flatten(), stable=True).indices
    out = w.clone().flatten()
    out[order[:n]] = 0
    return out.view_as(w)


def assert_pruned_as_defined(net, level):
    for layer in net.subspace_layers():
        expected = full_sort_prune(layer, level.alpha, level.gamma)
        got = level[layer.key].weight
        assert torch.equal(got, expected), layer.key


def tie_heavy(net):
    """Weights rounded to a few magnitudes, so most boundaries fall inside a run of equal |w|
    (a line gets the same values at both ends: ω*(α) is then exact for every α)."""
    with torch.no_grad():
        for layer in net.subspace_layers():
            if layer.weight.dim() > 1:
                layer.weight.copy_((layer.weight * 20).round() / 20)
                if layer.line:
                    layer.weight_2.copy_(layer.weight)
    return net


@pytest.mark.parametrize("kind", ["point", "line"])
@pytest.mark.parametrize("ties", [False, True])
def test_switch_prunes_exactly_as_a_full_sort(kind, ties):
    """A line's endpoints differ (unless tie-heavy), so ω*(α) written into the reused tensors
    must be SubspaceLayer.at's bit for bit, too."""
    net = create_model("small_cnn", SubspaceSpec("unstructured", kind)).eval()
    if ties:
        tie_heavy(net)
    levels = LevelCompressor(net, cache=True)
    with torch.inference_mode():
        for alpha in ALPHAS + ALPHAS[::-1]:  # first visits, then the kept thresholds
            level = levels(alpha)
            assert_pruned_as_defined(net, level)
            reference = compress(net, alpha)  # training's path: the same f(ω, γ)
            assert all(torch.equal(level[k].weight, reference[k].weight) for k in level.params)


def test_ties_really_straddle_the_boundary():
    """The tie-heavy network exercises the tie path: equal |w| both pruned and kept."""
    net = tie_heavy(create_model("small_cnn", SubspaceSpec("unstructured", "line")).eval())
    level = LevelCompressor(net, cache=True)(0.5)
    layer = net.convs[2]
    w, kept = layer.at(0.5)[0].abs(), level[layer.key].weight.abs()
    boundary = w.flatten().sort().values[int(level.gamma * w.numel()) - 1]
    at_boundary = w == boundary
    assert (kept[at_boundary] == 0).any() and (kept[at_boundary] != 0).any()


@pytest.mark.parametrize("kind", ["point", "line"])
def test_a_live_level_is_never_overwritten(kind):
    net = create_model("small_cnn", SubspaceSpec("unstructured", kind)).eval()
    levels = LevelCompressor(net, cache=True)
    held = levels(0.3)
    snapshot = {k: p.weight.clone() for k, p in held.params.items()}
    weight = levels(0.6)[net.convs[1].key].weight  # the level goes, one tensor stays
    kept = weight.clone()
    view = levels(0.5)[net.convs[2].key].weight.view(-1)[10:]  # a view of another one's storage
    kept_view = view.clone()
    for alpha in (0.1, 0.9, 0.4, 0.7):
        levels(alpha)
    assert all(torch.equal(held[k].weight, snapshot[k]) for k in snapshot)
    assert torch.equal(weight, kept) and torch.equal(view, kept_view)


def test_a_dropped_levels_tensors_are_reused():
    """What makes the switch stable: no fresh (page-faulting) tensor once warmed."""
    net = create_model("small_cnn", SubspaceSpec("unstructured", "line")).eval()
    levels = LevelCompressor(net, cache=True)
    key = net.convs[1].key
    first = levels(0.3)[key].weight.data_ptr()  # the level is dropped at once
    assert levels(0.6)[key].weight.data_ptr() == first
    assert len(levels.buffers.sets) == 1


def _magnitudes():
    g = torch.Generator().manual_seed(1)
    smooth = torch.randn(200_000, generator=g).abs()
    ties = (torch.randn(100_000, generator=g) * 4).round().abs() / 4  # runs of equal |w|
    skewed = torch.cat([torch.zeros(60_000), torch.rand(40_000, generator=g)])  # zeros: ties
    nan = torch.rand(100_000, generator=g)
    nan[::997] = float("nan")  # a diverged weight: kthvalue orders NaN last
    return {"smooth": smooth, "ties": ties, "skewed": skewed, "nan": nan}


@pytest.mark.parametrize("name", ["smooth", "ties", "skewed", "nan"])
def test_band_selection_is_kthvalue(name, monkeypatch):
    """The sampled band finds the same n-th smallest |w|, and counts below and tied at it,
    as a full selection; on a smooth layer the band decides, without the fallback."""
    fallbacks = []
    counted = unstructured._counted
    monkeypatch.setattr(unstructured, "_counted", lambda m, t: fallbacks.append(t) or counted(m, t))
    magnitude = _magnitudes()[name]
    total = magnitude.numel()
    finite = int(magnitude.isfinite().sum())
    for n in (1, 7, total // 3, total // 2, int(0.975 * total), total - 1, total):
        n = min(n, finite)  # (NaN's own position is kthvalue's convention, not an order)
        threshold, below, tied = unstructured.kth_smallest(magnitude, n)
        expected = float(magnitude.kthvalue(n).values)
        assert threshold == expected, (name, n)
        assert below == int((magnitude < expected).sum()), (name, n)
        assert tied == int((magnitude == expected).sum()), (name, n)
    if name == "smooth":
        assert not fallbacks


def test_band_that_misses_falls_back_to_a_full_selection(monkeypatch):
    monkeypatch.setattr(unstructured, "BAND_SIGMAS", -50.0)  # an empty bracket
    magnitude = _magnitudes()["smooth"]
    for n in (5, 100_000, 199_999):
        threshold, below, tied = unstructured.kth_smallest(magnitude, n)
        assert threshold == float(magnitude.kthvalue(n).values)
        assert below == n - 1 and tied == 1


@pytest.mark.parametrize("ties", [False, True])
def test_cold_line_levels_off_the_grid_are_exact(ties):
    """α never seen before: each layer's boundary is found by the band (small_cnn's larger
    hidden layers are above BAND_MIN_NUMEL), then checked against the full stable sort."""
    net = create_model("small_cnn", SubspaceSpec("unstructured", "line")).eval()
    assert any(m.weight.numel() >= unstructured.BAND_MIN_NUMEL for m in net.subspace_layers())
    if ties:
        tie_heavy(net)
    levels = LevelCompressor(net, cache=True)
    with torch.inference_mode():
        for alpha in (0.0731, 0.4142, 0.6180, 0.9001):
            assert_pruned_as_defined(net, levels(alpha))
