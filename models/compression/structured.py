"""Structured sparsity: keep the first round(γ·C) input and output channels of every layer."""

from __future__ import annotations

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
    """Channels kept at width factor γ: round(γ·C), at least 1, as the reference's
    `max(1, round(C·γ))`. Rounding, not ⌈γ·C⌉: γ(α) carries float noise (the grid's α are
    rounded to 6 decimals, so γ = 0.37500025 at α = 0.166667), and a ceiling turns any noise
    above an integer into an extra channel, where rounding absorbs noise up to 0.5/C."""
    return max(1, min(channels, round(gamma * channels)))
