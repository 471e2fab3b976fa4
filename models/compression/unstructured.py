"""Unstructured sparsity: per-layer TopK, pruning the fraction γ of weights smallest in |w|."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from models.layers import LayerParams, SNorm, SubspaceLayer


def compress_layer(
    layer: SubspaceLayer, w: Tensor, b: Tensor | None, gamma: float, ctx: dict[str, Any]
) -> LayerParams:
    if isinstance(layer, SNorm):
        return LayerParams(w, b, groups=layer.groups)
    n = int(gamma * w.numel())
    if layer.role != "hidden" or n == 0:  # input and output layers stay dense (§3.4)
        return LayerParams(w, b)
    threshold, exact = _threshold(layer, w, n, ctx.get("orders"))
    if exact:
        # One pass: zero every |w| ≤ the n-th smallest magnitude. The gradient is 1 for kept
        # weights and 0 for pruned ones, as in the reference code (no straight-through).
        return LayerParams(F.hardshrink(w, threshold), b)
    # A tie at the boundary: an exact order decides which of the equal weights go.
    order = torch.argsort(w.detach().abs().flatten(), stable=True)
    keep = torch.ones(w.numel(), dtype=w.dtype)
    keep[order[:n]] = 0
    return LayerParams(w * keep.view_as(w), b)


def _threshold(
    layer: SubspaceLayer, w: Tensor, n: int, cache: dict[str, Tensor] | None
) -> tuple[float, bool]:
    """The n-th smallest |w|, and whether pruning every |w| ≤ it removes exactly n weights.
    A point subspace's ω never changes while serving, so |w| is sorted once per layer and
    every later level is a lookup rather than a selection."""
    if cache is None or layer.line:
        magnitude = w.detach().abs().flatten()
        threshold = magnitude.kthvalue(n).values
        return float(threshold), int((magnitude <= threshold).sum()) == n
    if layer.key not in cache:
        cache[layer.key] = w.detach().abs().flatten().sort().values
    ordered = cache[layer.key]
    exact = n == ordered.numel() or bool(ordered[n - 1] < ordered[n])
    return float(ordered[n - 1]), exact
