"""What a compression family is: a frozen config that validates itself, and the handler it owns."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeGuard

from torch import Tensor

from models.layers import LayerParams, SNorm, SubspaceLayer

if TYPE_CHECKING:
    from models.compression import Level
    from models.levels import Calculator


@dataclass(frozen=True)
class FamilyConfig:
    """A family's default γ(α) range; subclasses add the family's own knobs and checks."""

    alpha_min: float = 0.0
    alpha_max: float = 1.0
    gamma_min: float = 0.0
    gamma_max: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha_min < self.alpha_max <= 1.0:
            raise ValueError(
                f"need 0 ≤ α_min < α_max ≤ 1, got [{self.alpha_min}, {self.alpha_max}]"
            )
        if self.gamma_min > self.gamma_max:
            raise ValueError(f"need γ_min ≤ γ_max, got [{self.gamma_min}, {self.gamma_max}]")


@dataclass(frozen=True)
class Draw:
    """One member a training step compresses to: α, and optionally a γ other than γ(α) (a
    warm-up) or a γ per layer (keyed by the layer's path)."""

    alpha: float
    gamma: float | None = None
    per_layer: Callable[[str], float] | None = None


@dataclass(frozen=True)
class Schedule:
    """Where training stands, as the families' warm-ups need it."""

    progress: float  # fraction of training behind us, in [0, 1)
    prune_warmup: float = 0.8
    act_quant_start: float = 0.8
    # Sampling weighted toward the compressed end (issue 19): each uniform draw of α is, with
    # chance `compressed_mix`, drawn instead from the most compressed `compressed_span` of the
    # range. 0 = the paper's U(α_min, α_max).
    compressed_mix: float = 0.0
    compressed_span: float = 0.25

    def uniform_alpha(self, lo: float, hi: float, rng: random.Random) -> float:
        """One draw from (1 − p)·U(lo, hi) + p·U(lo, lo + s·(hi − lo)), p = compressed_mix,
        s = compressed_span. With p = 0 it is rng.uniform(lo, hi) and consumes the same
        random numbers, so today's default trains bit for bit as before."""
        if self.compressed_mix <= 0.0:
            return rng.uniform(lo, hi)
        if rng.random() < self.compressed_mix:
            return rng.uniform(lo, lo + self.compressed_span * (hi - lo))
        return rng.uniform(lo, hi)


class Family:
    """The handler of one compression family. Every family-specific decision lives in a
    subclass; no other module branches on a family's name."""

    name: ClassVar[str]
    config_type: ClassVar[type[FamilyConfig]]
    gamma_label: ClassVar[str] = "γ"  # column title in accuracy tables
    line_weights: ClassVar[bool] = True  # LCS+L duplicates the conv/linear weights too
    caches_levels: ClassVar[bool] = False  # few levels: serving keeps them (bounded LRU cache)
    reuses_buffers: ClassVar[bool] = False  # serving writes levels into reused output tensors

    def __init__(self, config: FamilyConfig | None = None) -> None:
        self.config = config if config is not None else self.config_type()

    # -- γ(α): the calculator -------------------------------------------------------------
    def clamp(self, calc: Calculator, alpha: float) -> float:
        return min(max(float(alpha), calc.alpha_min), calc.alpha_max)

    def gamma(self, calc: Calculator, alpha: float) -> float:
        """The affine map [α_min, α_max] → [γ_min, γ_max] (§3.4); α is clamped first."""
        t = (self.clamp(calc, alpha) - calc.alpha_min) / (calc.alpha_max - calc.alpha_min)
        return calc.gamma_min + t * (calc.gamma_max - calc.gamma_min)

    def alpha(self, calc: Calculator, gamma: float) -> float:
        t = (gamma - calc.gamma_min) / (calc.gamma_max - calc.gamma_min)
        return self.clamp(calc, calc.alpha_min + t * (calc.alpha_max - calc.alpha_min))

    def grid(self, calc: Calculator, n: int) -> list[float]:
        """α values spread over the range, most compressed first (6 decimals, for reading)."""
        step = (calc.alpha_max - calc.alpha_min) / (n - 1)
        return [round(calc.alpha_min + i * step, 6) for i in range(n)]

    # -- f(ω, γ) ---------------------------------------------------------------------------
    def compress_at(
        self, layer: SubspaceLayer, alpha: float, gamma: float, ctx: dict[str, Any]
    ) -> LayerParams:
        """f(ω*(α), γ) for one layer. A family that `reuses_buffers` overrides it to write into
        ctx["out"] (a BufferSet) when serving; training passes no buffers."""
        w, b = layer.at(alpha)
        return self.compress_layer(layer, w, b, gamma, ctx)

    def compress_layer(
        self, layer: SubspaceLayer, w: Tensor, b: Tensor | None, gamma: float, ctx: dict[str, Any]
    ) -> LayerParams:
        raise NotImplementedError

    # -- training ----------------------------------------------------------------------------
    def training_defaults(self, kind: str, sampled: bool = True) -> dict[str, float]:
        """The training options a run of this family and kind gets when it sets none: the
        warm-up length and the sampling toward the compressed end (TrainConfig's None).
        `sampled` is False for the baselines that train at fixed levels."""
        return {"prune_warmup": 0.8, "compressed_mix": 0.0, "compressed_span": 0.25}

    def sample(self, calc: Calculator, kind: str, rng: random.Random, at: Schedule) -> list[Draw]:
        """This step's members α_n (§3.3)."""
        raise NotImplementedError

    def warmup_gamma(self, calc: Calculator, alpha: float, at: Schedule) -> float | None:
        """The γ a training step at α compresses to during the family's warm-up, or None for
        γ(α) itself (no warm-up, or past it)."""
        return None

    def activations_quantized(self, at: Schedule) -> bool:
        """Whether training quantizes layer inputs at this point of training."""
        return False

    def observes_activations(self, role: str) -> bool:
        """Whether a conv of this role keeps a running range of its input (for quantization)."""
        return False

    def norm_groups(self, channels: int) -> int:
        """GroupNorm groups at full width: 32 capped at C, as the reference (a divisor of C)."""
        groups = min(32, channels)
        while channels % groups:
            groups -= 1
        return groups

    # -- memory and serving ------------------------------------------------------------------
    def weight_bytes(self, layer: SubspaceLayer, p: LayerParams, level: Level) -> int:
        """Bytes of one layer's tensors at `level`: float32 by default."""
        return 4 * (p.weight.numel() + (0 if p.bias is None else p.bias.numel()))

    def tier2_refusal(self, level: Level) -> str | None:
        """Why `level` cannot be served from an exported graph (tier 2), if it cannot."""
        return None

    def profile_gammas(self, calc: Calculator) -> Sequence[float]:
        """The levels `lcs profile` reports by default, least compressed first."""
        return [self.gamma(calc, a) for a in reversed(self.grid(calc, 7))]


def is_norm(layer: SubspaceLayer) -> TypeGuard[SNorm]:
    return isinstance(layer, SNorm)
