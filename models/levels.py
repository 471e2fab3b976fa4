"""The calculator γ(α) of a model and what subspace it holds; each family's math is its own."""

from __future__ import annotations

from dataclasses import dataclass

from models import families
from models.families import Family

FAMILIES = families.names()
KINDS = ("point", "line")
# GroupNorm/InstanceNorm is the method (§3.5); BatchNorm exists only to train the baselines.
NORMS = ("group", "batch")


@dataclass(frozen=True)
class Calculator:
    """γ(α) for one family; α is always "higher = more accurate", whatever γ means.

    - structured:   γ = width factor, the affine map [α_min, α_max] → [γ_min, γ_max] (§3.4)
    - unstructured: γ = fraction of weights pruned, γ = 1 − α
    - quantization: γ = bit width, γ = 2 + 6α on α ∈ {1/6 … 1}

    The family's handler (models/families) does the math; this holds the trained range.
    """

    family: str
    alpha_min: float
    alpha_max: float
    gamma_min: float
    gamma_max: float

    def __post_init__(self) -> None:
        families.get(self.family)  # raises on an unknown family
        if not 0.0 <= self.alpha_min < self.alpha_max <= 1.0:
            raise ValueError(
                f"need 0 ≤ α_min < α_max ≤ 1, got [{self.alpha_min}, {self.alpha_max}]"
            )

    @classmethod
    def default(cls, family: str) -> Calculator:
        c = families.get(family).config
        return cls(family, c.alpha_min, c.alpha_max, c.gamma_min, c.gamma_max)

    @property
    def handler(self) -> Family:
        return families.get(self.family)

    def clamp(self, alpha: float) -> float:
        """α limited to the trained range (and snapped to the bit grid for quantization)."""
        return self.handler.clamp(self, alpha)

    def gamma(self, alpha: float) -> float:
        return self.handler.gamma(self, alpha)

    def alpha(self, gamma: float) -> float:
        """γ⁻¹: the α that yields compression level γ (γ must lie in the trained range)."""
        lo, hi = self.gamma_range
        if not lo - 1e-9 <= gamma <= hi + 1e-9:
            raise ValueError(f"γ={gamma} is outside this model's range [{lo}, {hi}]")
        return self.handler.alpha(self, gamma)

    @property
    def gamma_range(self) -> tuple[float, float]:
        ends = (self.gamma(self.alpha_min), self.gamma(self.alpha_max))
        return (min(ends), max(ends))

    def grid(self, n: int = 7) -> list[float]:
        """α values spread over the range (the bit grid for quantization), most compressed first."""
        return self.handler.grid(self, n)

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
        families.get(self.family)  # raises on an unknown family
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
    def handler(self) -> Family:
        return families.get(self.family)

    @property
    def line_weights(self) -> bool:
        return self.kind == "line" and self.handler.line_weights

    @property
    def line_norms(self) -> bool:
        return self.kind == "line"

    @property
    def name(self) -> str:
        return f"LCS+{'P' if self.kind == 'point' else 'L'} {self.family}"
