"""Quantization: per-tensor affine fake-quantization of weights and activations to γ bits."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from models.families.base import Draw, Family, FamilyConfig, Schedule, is_norm
from models.families.registry import register
from models.layers import LayerParams, SubspaceLayer, fake_quantize

if TYPE_CHECKING:
    from models.compression import Level
    from models.levels import Calculator


@dataclass(frozen=True)
class QuantizationConfig(FamilyConfig):
    """γ = bit width, γ = 2 + steps·α on the grid α ∈ {1/steps … 1} (paper §3.4: 3..8 bits)."""

    alpha_min: float = 1 / 6
    gamma_min: float = 3.0
    gamma_max: float = 8.0
    steps: int = 6
    # LCS+P once activations are quantized: an independent bit width per layer in this range.
    layer_bits: tuple[int, int] = (3, 8)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1:
            raise ValueError("steps must be ≥ 1")
        lo, hi = self.layer_bits
        if not 2 <= lo <= hi <= 16:
            raise ValueError(f"layer_bits must satisfy 2 ≤ lo ≤ hi ≤ 16, got {self.layer_bits}")


@register
class Quantization(Family):
    name = "quantization"
    config_type = QuantizationConfig
    gamma_label = "bits γ"
    caches_levels = True  # six bit widths at most: kept in the bounded level cache
    config: QuantizationConfig

    def clamp(self, calc: Calculator, alpha: float) -> float:
        """α limited to the trained range and snapped up to the bit grid."""
        steps = self.config.steps
        alpha = super().clamp(calc, alpha)
        return math.ceil(alpha * steps - 1e-9) / steps

    def gamma(self, calc: Calculator, alpha: float) -> float:
        return float(round(2 + self.config.steps * self.clamp(calc, alpha)))

    def alpha(self, calc: Calculator, gamma: float) -> float:
        return self.clamp(calc, (gamma - 2) / self.config.steps)

    def grid(self, calc: Calculator, n: int) -> list[float]:
        """The bit grid, whatever n: one α per trained bit width."""
        steps = self.config.steps
        lo, hi = round(calc.alpha_min * steps), round(calc.alpha_max * steps)
        return [k / steps for k in range(max(lo, 1), hi + 1)]

    def compress_layer(
        self, layer: SubspaceLayer, w: Tensor, b: Tensor | None, gamma: float, ctx: dict[str, Any]
    ) -> LayerParams:
        if is_norm(layer):
            return LayerParams(w, b, groups=layer.groups)
        if layer.role != "hidden":  # first conv and classifier stay in float, as the reference
            return LayerParams(w, b)
        per_layer = ctx.get("per_layer")
        bits = round(per_layer(layer.key) if per_layer is not None else gamma)
        wq = fake_quantize(w, bits, w.detach().min(), w.detach().max())
        return LayerParams(wq, b, act_bits=bits if ctx["act_quant"] else None)

    def sample(self, calc: Calculator, kind: str, rng: random.Random, at: Schedule) -> list[Draw]:
        if kind == "line":
            return [Draw(rng.choice(self.grid(calc, 0)))]
        # LCS+P as the reference: 8 bits (the most accurate end) until activations are
        # quantized, then an independent bit width per layer each step.
        if not self.activations_quantized(at):
            return [Draw(calc.alpha_max)]
        lo, hi = self.config.layer_bits
        bits: dict[str, int] = {}

        def per_layer(key: str) -> float:
            return bits.setdefault(key, rng.randint(lo, hi))

        return [Draw(calc.alpha_max, per_layer=per_layer)]

    def activations_quantized(self, at: Schedule) -> bool:
        return at.progress >= at.act_quant_start

    def observes_activations(self, role: str) -> bool:
        return role == "hidden"

    def weight_bytes(self, layer: SubspaceLayer, p: LayerParams, level: Level) -> int:
        bits = 32 if is_norm(layer) or layer.role != "hidden" else round(level.gamma)
        return p.weight.numel() * bits // 8 + (0 if p.bias is None else 4 * p.bias.numel())

    def tier2_refusal(self, level: Level) -> str | None:
        # Activation fake-quantization rounds x/scale: where torch and ORT accumulate a
        # convolution in a different order, a value near a rounding boundary lands one step
        # apart, and the step grows through the network. No warm-up batch can prove the absence
        # of such flips; weight-only quantization is exact.
        if any(p.act_bits is not None for p in level.params.values()):
            return "activation fake-quantization does not export faithfully"
        return None
