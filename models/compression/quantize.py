"""Quantization: per-tensor affine fake-quantization of weights and activations to γ bits."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from models.layers import LayerParams, SNorm, SubspaceLayer, fake_quantize


def compress_layer(
    layer: SubspaceLayer, w: Tensor, b: Tensor | None, gamma: float, ctx: dict[str, Any]
) -> LayerParams:
    if isinstance(layer, SNorm):
        return LayerParams(w, b, groups=layer.groups)
    if layer.role != "hidden":  # first conv and classifier stay in float, as in the reference
        return LayerParams(w, b)
    bits = round(gamma)
    wq = fake_quantize(w, bits, w.detach().min(), w.detach().max())
    return LayerParams(wq, b, act_bits=bits if ctx["act_quant"] else None)
