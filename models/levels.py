"""The calculator γ(α) of each compression family: the one place α and γ are converted."""

from __future__ import annotations

import math
from dataclasses import dataclass

FAMILIES = ("structured", "unstructured", "quantization")
KINDS = ("point", "line")
# GroupNorm/InstanceNorm is the method (§3.5); BatchNorm exists only to train the baselines.
NORMS = ("group", "batch")

# Quantization trains bit widths 3..8 on the grid α ∈ {1/6, …, 1} (paper §3.4).
_QUANT_STEPS = 6


@dataclass(frozen=True)
class Calculator:
    """γ(α) for one family; α is always "higher = more accurate", whatever γ means.

    - structured:   γ = width factor, the affine map [α_min, α_max] → [γ_min, γ_max] (§3.4)
    - unstructured: γ = fraction of weights pruned, γ = 1 − α
    - quantization: γ = bit width, γ = 2 + 6α on α ∈ {1/6 … 1}
    """

    family: str
    alpha_min: float
    alpha_max: float
    gamma_min: float
    gamma_max: float

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; choose one of {FAMILIES}")
        if not 0.0 <= self.alpha_min < self.alpha_max <= 1.0:
            raise ValueError(
                f"need 0 ≤ α_min < α_max ≤ 1, got [{self.alpha_min}, {self.alpha_max}]"
            )

    @classmethod
    def default(cls, family: str) -> Calculator:
        if family == "structured":
            return cls(family, 0.0, 1.0, 0.25, 1.0)
        if family == "unstructured":
            # The reference trains TopK targets down to 2.5 % of weights kept.
            return cls(family, 0.025, 1.0, 0.0, 0.975)
        if family == "quantization":
            return cls(family, 1 / _QUANT_STEPS, 1.0, 3.0, 8.0)
        raise ValueError(f"unknown family {family!r}; choose one of {FAMILIES}")

    def clamp(self, alpha: float) -> float:
        """α limited to the trained range, and snapped to the bit grid for quantization."""
        alpha = min(max(float(alpha), self.alpha_min), self.alpha_max)
        if self.family == "quantization":
            alpha = math.ceil(alpha * _QUANT_STEPS - 1e-9) / _QUANT_STEPS
        return alpha

    def gamma(self, alpha: float) -> float:
        alpha = self.clamp(alpha)
        if self.family == "unstructured":
            return 1.0 - alpha
        if self.family == "quantization":
            return float(round(2 + _QUANT_STEPS * alpha))
        t = (alpha - self.alpha_min) / (self.alpha_max - self.alpha_min)
        return self.gamma_min + t * (self.gamma_max - self.gamma_min)

    def alpha(self, gamma: float) -> float:
        """γ⁻¹: the α that yields compression level γ (γ must lie in the trained range)."""
        lo, hi = self.gamma_range
        if not lo - 1e-9 <= gamma <= hi + 1e-9:
            raise ValueError(f"γ={gamma} is outside this model's range [{lo}, {hi}]")
        if self.family == "unstructured":
            return self.clamp(1.0 - gamma)
        if self.family == "quantization":
            return self.clamp((gamma - 2) / _QUANT_STEPS)
        t = (gamma - self.gamma_min) / (self.gamma_max - self.gamma_min)
        return self.clamp(self.alpha_min + t * (self.alpha_max - self.alpha_min))

    @property
    def gamma_range(self) -> tuple[float, float]:
        ends = (self.gamma(self.alpha_min), self.gamma(self.alpha_max))
        return (min(ends), max(ends))

    def grid(self, n: int = 7) -> list[float]:
        """α values spread over the range (the bit grid for quantization), most compressed first."""
        if self.family == "quantization":
            lo = round(self.alpha_min * _QUANT_STEPS)
            hi = round(self.alpha_max * _QUANT_STEPS)
            return [k / _QUANT_STEPS for k in range(max(lo, 1), hi + 1)]
        step = (self.alpha_max - self.alpha_min) / (n - 1)
        return [round(self.alpha_min + i * step, 6) for i in range(n)]

    def to_dict(self) -> dict[str, float | str]:
        return {
            "family": self.family,
            "alpha_min": self.alpha_min,
            "alpha_max": self.alpha_max,
            "gamma_min": self.gamma_min,
            "gamma_max": self.gamma_max,
        }


@dataclass(frozen=True)
class SubspaceSpec:
    """What subspace a network holds: compression family, point (LCS+P) or line (LCS+L), γ(α)."""

    family: str
    kind: str = "point"
    calculator: Calculator | None = None
    norm: str = "group"

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r}; choose one of {FAMILIES}")
        if self.kind not in KINDS:
            raise ValueError(f"unknown subspace kind {self.kind!r}; choose one of {KINDS}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of {NORMS}")
        if self.norm == "batch" and self.kind == "line":
            raise ValueError("BatchNorm is for point-subspace baselines only")
        if self.calculator is None:
            object.__setattr__(self, "calculator", Calculator.default(self.family))
        elif self.calculator.family != self.family:
            raise ValueError("calculator family does not match the subspace family")

    @property
    def calc(self) -> Calculator:
        assert self.calculator is not None
        return self.calculator

    @property
    def line_weights(self) -> bool:
        # Structured LCS+L duplicates only the norm parameters (paper §4.2).
        return self.kind == "line" and self.family != "structured"

    @property
    def line_norms(self) -> bool:
        return self.kind == "line"

    @property
    def name(self) -> str:
        return f"LCS+{'P' if self.kind == 'point' else 'L'} {self.family}"
