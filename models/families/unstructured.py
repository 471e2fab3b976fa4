"""Unstructured sparsity: per-layer TopK, pruning the fraction γ of weights smallest in |w|."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from models.families.base import Draw, Family, FamilyConfig, Schedule, is_norm
from models.families.registry import register
from models.fused import PrunedLine, prune
from models.layers import LayerParams, SubspaceLayer

if TYPE_CHECKING:
    from models.compression import Level
    from models.compression.buffers import BufferSet
    from models.levels import Calculator


# A line layer this small that is not pruned (a norm, a first conv) keeps its params per α
# known (ResNet18: ~120 KB an α) rather than interpolating into a buffer on every switch.
SMALL_NUMEL = 1 << 14


@dataclass(frozen=True)
class UnstructuredConfig(FamilyConfig):
    """γ = fraction of weights pruned, γ = 1 − α; the reference trains down to 2.5 % kept."""

    alpha_min: float = 0.025
    gamma_max: float = 0.975
    endpoint_chance: float = 0.5  # LCS+L: chance a step trains an endpoint of the line

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.endpoint_chance <= 1.0:
            raise ValueError(f"endpoint_chance must lie in [0, 1], got {self.endpoint_chance}")


@register
class Unstructured(Family):
    name = "unstructured"
    config_type = UnstructuredConfig
    gamma_label = "pruned γ"
    reuses_buffers = True  # a level is a full copy of the weights: write it into reused tensors
    config: UnstructuredConfig

    def gamma(self, calc: Calculator, alpha: float) -> float:
        return 1.0 - self.clamp(calc, alpha)

    def alpha(self, calc: Calculator, gamma: float) -> float:
        return self.clamp(calc, 1.0 - gamma)

    def compress_at(
        self, layer: SubspaceLayer, alpha: float, gamma: float, ctx: dict[str, Any]
    ) -> LayerParams:
        """Serving (ctx["out"] given): the same f(ω*(α), γ) as compress_layer, written into the
        layer's reused output tensor. What a first switch to α finds is kept in ctx["known"]:
        a hidden layer's boundary (threshold and kept ties), so a later switch to α computes
        ω*(α) and prunes it in one fused pass; a small line layer's params (a norm)."""
        out, known = ctx.get("out"), ctx.get("known")
        if out is None or known is None:
            return super().compress_at(layer, alpha, gamma, ctx)
        hidden = layer.role == "hidden" and not is_norm(layer)
        found = known.get(layer.key)
        if layer.line and not hidden and layer.weight.numel() <= SMALL_NUMEL:
            if found is None:
                found = known[layer.key] = super().compress_at(layer, alpha, gamma, ctx)
            return found  # fresh tensors, which no switch writes into
        if layer.line and found is not None:
            threshold, kept_ties = found
            into = out.like(layer.key, layer.weight)
            pruned = _line(layer, ctx).at(alpha, threshold, into, kept_ties)
            return LayerParams(pruned, _bias_at(layer, alpha, out))
        w: Tensor = layer.weight
        b: Tensor | None = layer.bias
        if layer.line:  # ω*(α) as SubspaceLayer.at computes it, into reused tensors
            w = torch.lerp(layer.weight_2, w, alpha, out=out.like(layer.key, w))
            b = _bias_at(layer, alpha, out)
        n = int(gamma * w.numel()) if hidden else 0
        if n == 0:
            return self.compress_layer(layer, w, b, gamma, ctx)
        if found is None:
            found = known[layer.key] = _boundary(layer, w, n, ctx["orders"])
            if layer.line:
                _line(layer, ctx)  # its kernel compiled now, at the first visit, not later
        threshold, kept_ties = found
        return LayerParams(prune(w, threshold, kept_ties, out.like(layer.key, w)), b)

    def compress_layer(
        self, layer: SubspaceLayer, w: Tensor, b: Tensor | None, gamma: float, ctx: dict[str, Any]
    ) -> LayerParams:
        if is_norm(layer):
            return LayerParams(w, b, groups=layer.groups)
        n = int(gamma * w.numel())
        if layer.role != "hidden" or n == 0:  # input and output layers stay dense (§3.4)
            return LayerParams(w, b)
        threshold, exact = _threshold(layer, w, n, ctx.get("orders"))
        if exact:
            # One pass: zero every |w| ≤ the n-th smallest magnitude. The gradient is 1 for
            # kept weights and 0 for pruned ones, as in the reference code (no straight-through).
            return LayerParams(F.hardshrink(w, threshold), b)
        # A tie at the boundary: an exact order decides which of the equal weights go.
        order = torch.argsort(w.detach().abs().flatten(), stable=True)
        keep = torch.ones(w.numel(), dtype=w.dtype)
        keep[order[:n]] = 0
        return LayerParams(w * keep.view_as(w), b)

    def training_defaults(self, kind: str, sampled: bool = True) -> dict[str, float]:
        """LCS+P: dense for half of training, not the reference's 80 %, then half the draws
        from the most compressed quarter of α (issue 19's A/B, ACCURACY.md: at 10 epochs the
        reference's 64 sparse steps left 90–95 % pruned 4.6–32.8 points below TopK networks;
        this is within 1 point at 50–95 %). LCS+L keeps the reference's 80 % ramp (not
        measured with these) and the TopK baselines theirs."""
        if kind == "point" and sampled:
            return {"prune_warmup": 0.5, "compressed_mix": 0.5, "compressed_span": 0.25}
        return super().training_defaults(kind, sampled)

    def sample(self, calc: Calculator, kind: str, rng: random.Random, at: Schedule) -> list[Draw]:
        lo, hi = calc.alpha_min, calc.alpha_max
        if kind == "point":
            # As the reference: dense for the warm-up, then one U(α_min, 1) TopK for all layers.
            if at.progress < at.prune_warmup:
                return [Draw(hi)]
            return [Draw(at.uniform_alpha(lo, hi, rng))]
        # A line: half the time an endpoint, else uniform; the pruned fraction ramps from 0 to
        # γ(α) over the warm-up. Without the ramp, early steps at 97.5 % pruned starve most
        # weights of gradient and the dense end never trains (measured: 80 % dense, not 98 %).
        if rng.random() < self.config.endpoint_chance:
            alpha = rng.choice([lo, hi])
        else:
            alpha = at.uniform_alpha(lo, hi, rng)
        return [Draw(alpha, self.warmup_gamma(calc, alpha, at))]

    def warmup_gamma(self, calc: Calculator, alpha: float, at: Schedule) -> float | None:
        """γ(α) scaled by the fraction of warm-up done; None (γ(α) itself) once past it."""
        if at.progress >= at.prune_warmup:
            return None
        return self.gamma(calc, alpha) * at.progress / at.prune_warmup

    def weight_bytes(self, layer: SubspaceLayer, p: LayerParams, level: Level) -> int:
        # Non-zeros only, as a sparse format would store them (values; indices not counted).
        n = int(torch.count_nonzero(p.weight))
        return 4 * (n + (0 if p.bias is None else p.bias.numel()))


def _line(layer: SubspaceLayer, ctx: dict[str, Any]) -> PrunedLine:
    line: PrunedLine | None = ctx["lines"].get(layer.key)
    if line is None:
        line = ctx["lines"][layer.key] = PrunedLine(layer.weight_2, layer.weight)
    return line


def _bias_at(layer: SubspaceLayer, alpha: float, out: BufferSet) -> Tensor | None:
    """A line's bias at α (SubspaceLayer.at_bias's values) into the level's reused tensor."""
    if layer.bias is None or layer.bias_2 is None:
        return None
    into = out.like(layer.key + ".bias", layer.bias)
    return torch.lerp(layer.bias_2, layer.bias, alpha, out=into)


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


# The band selection below: layers smaller than BAND_MIN_NUMEL take one kthvalue; larger ones
# sample BAND_SAMPLE of their |w| to bracket the n-th smallest (a miss falls back to kthvalue).
BAND_MIN_NUMEL = 1 << 15
BAND_SAMPLE = 16384
BAND_SIGMAS = 4.0  # half-width of the bracket in binomial standard deviations of the sample


def kth_smallest(magnitude: Tensor, n: int) -> tuple[float, int, int]:
    """The n-th smallest (1-based) of a flat tensor, with how many values are below it and
    how many equal it; the same τ as magnitude.kthvalue(n). A full selection of an 11 M-weight
    ResNet18 is ~150 ms: instead, a random sample's quantiles bracket τ in [lo, hi], one pass
    counts the values below lo and keeps those in [lo, hi] (a small fraction), and the exact
    selection runs on those alone. If the bracket missed τ (a sample too unlike the layer, or
    a run of ties) the full selection decides."""
    total = magnitude.numel()
    if total < BAND_MIN_NUMEL:
        return _counted(magnitude, float(magnitude.kthvalue(n).values))
    gen = torch.Generator().manual_seed(total)  # deterministic: the same band every run
    sample = magnitude[torch.randint(total, (BAND_SAMPLE,), generator=gen)]
    q = n / total
    margin = BAND_SIGMAS * math.sqrt(BAND_SAMPLE * q * (1.0 - q)) + 2.0
    lo_k, hi_k = int(q * BAND_SAMPLE - margin), int(q * BAND_SAMPLE + margin)
    # sample order statistics (1-based kthvalue); an end beyond the sample is unbounded
    lo = float(sample.kthvalue(min(lo_k, BAND_SAMPLE - 1) + 1).values) if lo_k >= 0 else -math.inf
    hi = float(sample.kthvalue(max(hi_k, 0) + 1).values) if hi_k < BAND_SAMPLE else math.inf
    # counted as below lo, not as total minus those at or above it: a NaN is neither
    lt = magnitude < lo
    below = _count(lt)
    # boolean indexing, not masked_select: that one sums the whole mask as int64 first
    band = magnitude[lt.logical_not_().logical_and_(magnitude <= hi)]
    if not below < n <= below + band.numel():
        return _counted(magnitude, float(magnitude.kthvalue(n).values))
    threshold = float(band.kthvalue(n - below).values)
    return threshold, below + _count(band < threshold), _count(band == threshold)


def _counted(magnitude: Tensor, threshold: float) -> tuple[float, int, int]:
    return threshold, _count(magnitude < threshold), _count(magnitude == threshold)


def _count(mask: Tensor) -> int:
    return int(torch.count_nonzero(mask))  # (a bool .sum() first copies it to int64)


def _boundary(
    layer: SubspaceLayer, w: Tensor, n: int, cache: dict[str, Tensor] | None
) -> tuple[float, Tensor | None]:
    """The n-th smallest |w| = τ, and when weights equal to τ straddle the boundary, the flat
    indices of the tied ones that stay: the last in index order, as the stable sort of
    compress_layer's tie path keeps them (it prunes the first n of (|w|, index)). A line's
    ω*(α) is new at every α: its τ comes from kth_smallest's band, not a full selection."""
    if layer.line:
        magnitude = w.detach().abs().flatten()
        threshold, below, tied_count = kth_smallest(magnitude, n)
        if below + tied_count == n:
            return threshold, None
        tied = (magnitude == threshold).nonzero().flatten()
        return threshold, tied[n - below :]
    threshold, exact = _threshold(layer, w, n, cache)
    if exact:
        return threshold, None
    magnitude = w.detach().abs().flatten()
    tied = (magnitude == threshold).nonzero().flatten()
    pruned_ties = n - int((magnitude < threshold).sum())
    return threshold, tied[pruned_ties:]
