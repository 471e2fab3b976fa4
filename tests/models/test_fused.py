"""The fused pass of an unstructured line is torch.lerp then hardshrink, bit for bit."""

import pytest
import torch

from models import fused
from models.fused import PrunedLine


def two_passes(start, end, alpha, threshold, keep):
    """The definition, in torch's own two passes: ω*(α), then every |w| ≤ τ zeroed but the
    kept indices."""
    w = torch.lerp(start, end, alpha)
    pruned = torch.where(w.abs() <= threshold, torch.zeros_like(w), w)
    if keep is not None:
        pruned.view(-1)[keep] = w.view(-1)[keep]
    return pruned


def ends(shape=(64, 32, 3, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


# both of ATen's lerp formulas (|α| < 0.5 and not), its switch point, the line's ends and α
# whose α − 1 is inexact in float32
@pytest.mark.parametrize("alpha", [0.025, 0.3, 0.4999999, 0.5, 0.77, 0.93, 0.987654, 1.0])
def test_equals_lerp_then_prune(alpha):
    start, end = ends()
    w = torch.lerp(start, end, alpha)
    threshold = float(w.abs().flatten().kthvalue(w.numel() // 2).values)
    keep = (w.abs().flatten() == threshold).nonzero().flatten()  # the one at τ stays
    out = torch.full_like(start, float("nan"))
    got = PrunedLine(start, end).at(alpha, threshold, out, keep)
    assert got is out
    assert torch.equal(out, two_passes(start, end, alpha, threshold, keep))
    assert int((out == 0).sum()) == w.numel() // 2 - 1  # τ itself kept: one fewer pruned
    assert not out.signbit()[out == 0].any()  # +0, as hardshrink writes
    PrunedLine(start, end).at(alpha, threshold, out, None)
    assert torch.equal(out, two_passes(start, end, alpha, threshold, None))
    assert int((out == 0).sum()) == w.numel() // 2  # |w| ≤ τ: τ itself goes too


def test_the_kernel_runs_for_float32_and_not_otherwise(monkeypatch):
    """Contiguous float32 goes to the fused kernel; anything else (float64, a strided out)
    to torch's two passes, with the same values."""
    calls = []
    real = fused._compiled()
    monkeypatch.setattr(fused, "_kernel", lambda *a: calls.append(1) or real(*a))
    start, end = ends((40, 50))
    PrunedLine(start, end).at(0.3, 0.5, torch.empty_like(start), None)
    assert calls == [1]
    strided = torch.empty(50, 40).t()
    got = PrunedLine(start, end).at(0.3, 0.5, strided, None)
    assert torch.equal(got, two_passes(start, end, 0.3, 0.5, None))
    s64, e64 = start.double(), end.double()
    got = PrunedLine(s64, e64).at(0.7, 0.5, torch.empty_like(s64), None)
    assert torch.equal(got, two_passes(s64, e64, 0.7, 0.5, None))
    assert calls == [1]
