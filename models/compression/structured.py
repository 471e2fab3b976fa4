"""Structured sparsity: keep the first ⌈γ·C⌉ input and output channels of every layer."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from models.layers import LayerParams, SNorm, SubspaceLayer


def compress_layer(
    layer: SubspaceLayer, w: Tensor, b: Tensor | None, gamma: float, ctx: dict[str, Any]
) -> LayerParams:
    # Slices are views: no copy, and the convolution really runs on fewer channels.
    if isinstance(layer, SNorm):
        k = width(w.shape[0], gamma)
        assert b is not None
        return LayerParams(w[:k], b[:k], groups=k)  # InstanceNorm: one group per channel
    k_out = w.shape[0] if layer.role == "last" else width(w.shape[0], gamma)
    k_in = w.shape[1] if layer.role == "first" else width(w.shape[1], gamma)
    return LayerParams(w[:k_out, :k_in], None if b is None else b[:k_out])


def width(channels: int, gamma: float) -> int:
    """Channels kept at width factor γ: ⌈γ·C⌉, at least 1 (never fewer than the fraction asked)."""
    return max(1, min(channels, math.ceil(gamma * channels - 1e-6)))
