"""Structured sparsity: keep the first round(γ·C) input and output channels of every layer."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor

from models.families.base import Draw, Family, FamilyConfig, Schedule, is_norm
from models.families.registry import register
from models.layers import LayerParams, SubspaceLayer

if TYPE_CHECKING:
    from models.levels import Calculator

# Paper Table 2's widths, for `lcs profile`.
TABLE2_WIDTHS = (1.0, 0.75, 0.625, 0.5, 0.375, 0.25)


@dataclass(frozen=True)
class StructuredConfig(FamilyConfig):
    """γ = width factor in [0.25, 1]; the sandwich rule trains `samples` members a step."""

    gamma_min: float = 0.25
    gamma_max: float = 1.0
    samples: int = 4  # α_min, α_max and samples − 2 uniform draws

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.gamma_min <= self.gamma_max <= 1.0:
            raise ValueError(f"widths must lie in (0, 1], got [{self.gamma_min}, {self.gamma_max}]")
        if self.samples < 2:
            raise ValueError("the sandwich rule needs at least both ends (samples ≥ 2)")


def width(channels: int, gamma: float) -> int:
    """Channels kept at width factor γ: round(γ·C), at least 1, as the reference's
    `max(1, round(C·γ))`. Rounding, not ⌈γ·C⌉: γ(α) carries float noise (the grid's α are
    rounded to 6 decimals, so γ = 0.37500025 at α = 0.166667), and a ceiling turns any noise
    above an integer into an extra channel, where rounding absorbs noise up to 0.5/C."""
    return max(1, min(channels, round(gamma * channels)))


@register
class Structured(Family):
    name = "structured"
    config_type = StructuredConfig
    gamma_label = "width γ"
    line_weights = False  # structured LCS+L duplicates only the norm parameters (§4.2)
    config: StructuredConfig

    def compress_layer(
        self, layer: SubspaceLayer, w: Tensor, b: Tensor | None, gamma: float, ctx: dict[str, Any]
    ) -> LayerParams:
        # Slices are views: no copy, and the convolution really runs on fewer channels.
        if is_norm(layer):
            k = width(w.shape[0], gamma)
            assert b is not None
            return LayerParams(w[:k], b[:k], groups=k)  # InstanceNorm: one group per channel
        k_out = w.shape[0] if layer.role == "last" else width(w.shape[0], gamma)
        k_in = w.shape[1] if layer.role == "first" else width(w.shape[1], gamma)
        return LayerParams(w[:k_out, :k_in], None if b is None else b[:k_out])

    def sample(self, calc: Calculator, kind: str, rng: random.Random, at: Schedule) -> list[Draw]:
        # The sandwich rule, most accurate member first (in-place distillation's teacher).
        lo, hi = calc.alpha_min, calc.alpha_max
        middle = [Draw(at.uniform_alpha(lo, hi, rng)) for _ in range(self.config.samples - 2)]
        return [Draw(hi), Draw(lo), *middle]

    def profile_gammas(self, calc: Calculator) -> Sequence[float]:
        return TABLE2_WIDTHS
