"""f(ω, γ): compress a subspace network to the level at α, with its family's handler."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from models.compression.buffers import OutputBuffers
from models.compression.cache import LEVEL_CACHE, LevelCache, level_bytes
from models.families.structured import width as width  # re-exported
from models.layers import LayerParams

if TYPE_CHECKING:
    from models.networks import SubspaceNet

KNOWN_ALPHAS = 64  # α whose boundaries are kept (ResNet18: 19 floats, ties, 120 KB of norms)


@dataclass(frozen=True, eq=False)
class Level:
    """An immutable compressed network's tensors: what one forward pass runs on.

    Nothing in it is ever mutated, so a request that captured a Level finishes on it even if
    the server has moved on to another level meanwhile.
    """

    alpha: float
    gamma: float
    family: str
    kind: str
    params: Mapping[str, LayerParams] = field(repr=False)

    def __getitem__(self, key: str) -> LayerParams:
        return self.params[key]

    def describe(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "gamma": self.gamma, "family": self.family, "kind": self.kind}

    def detached(self) -> Level:
        """The level with every tensor its own contiguous copy, made outside inference mode: a
        sliced view would carry (and pickle) its whole parent storage, and a Level built for
        serving holds inference tensors, which neither pickle nor trace."""
        params = {
            key: LayerParams(
                p.weight.detach().clone().contiguous(),
                None if p.bias is None else p.bias.detach().clone().contiguous(),
                p.groups,
                p.act_bits,
            )
            for key, p in self.params.items()
        }
        return Level(self.alpha, self.gamma, self.family, self.kind, params)


class LevelCompressor:
    """Compresses one network to any α. With `cache=True` (serving, weights frozen) it keeps
    what does not depend on α: the |w| order for point-subspace TopK, and the levels of a
    family with few of them (quantization's bit widths) in `level_cache`, a byte-bounded LRU
    shared by every network of the process (default: LEVEL_CACHE)."""

    def __init__(
        self, net: SubspaceNet, *, cache: bool = False, level_cache: LevelCache | None = None
    ) -> None:
        self.net = net
        self.spec = net.spec
        self.cache = cache
        self.level_cache = LEVEL_CACHE if level_cache is None else level_cache
        # made once per layer and kept: |w| orders of a point, a line's fused-pass arrays
        self._ctx: dict[str, Any] = {"orders": {} if cache else None, "lines": {}}
        self.buffers = OutputBuffers()  # where serving writes the levels of such a family
        # What a switch to α found, by layer, for the α seen (the profile's grid at load): a
        # hidden layer's TopK boundary (threshold, kept ties), so a switch back costs one fused
        # pass of ω*(α) and its pruning, not a selection; a small layer's params (a norm).
        self._known: OrderedDict[float, dict[str, Any]] = OrderedDict()

    def __call__(
        self,
        alpha: float,
        gamma: float | None = None,
        per_layer: Callable[[str], float] | None = None,
    ) -> Level:
        """The level at α; `gamma` overrides γ(α) at the same ω*(α) (training's dense warm-up
        prunes less than γ(α)), `per_layer` gives each layer its own γ (by its key, training's
        per-layer bit widths); neither is cached."""
        alpha = self.spec.calc.clamp(alpha)
        if gamma is not None or per_layer is not None:
            return self._compress(alpha, gamma, per_layer)
        if self.cache:
            with torch.no_grad():
                return self._cached(alpha)
        return self._compress(alpha)

    def _cached(self, alpha: float) -> Level:
        handler = self.spec.handler
        if handler.reuses_buffers:
            return self._into_buffers(alpha)
        if not handler.caches_levels:
            return self._compress(alpha)
        level = self.level_cache.get(self, alpha)
        if level is None:
            level = self._compress(alpha)
            nbytes = level_bytes(level, self.net.parameters())
            self.level_cache.put(self, self.net, alpha, level, nbytes)
        return level

    def _into_buffers(self, alpha: float) -> Level:
        known = self._known.pop(alpha, {})
        self._known[alpha] = known  # most recent last
        while len(self._known) > KNOWN_ALPHAS:
            del self._known[next(iter(self._known))]
        buffers = self.buffers.take()
        level = None
        try:
            level = self._compress(alpha, out=buffers, known=known)
        finally:
            self.buffers.bind(buffers, level)
        return level

    def _compress(
        self,
        alpha: float,
        gamma: float | None = None,
        per_layer: Callable[[str], float] | None = None,
        **serving: Any,
    ) -> Level:
        gamma = self.spec.calc.gamma(alpha) if gamma is None else gamma
        handler = self.spec.handler
        ctx = dict(
            self._ctx, act_quant=bool(self.net.act_quant_enabled), per_layer=per_layer, **serving
        )
        params = {}
        for layer in self.net.subspace_layers():
            params[layer.key] = handler.compress_at(layer, alpha, gamma, ctx)
        return Level(alpha, gamma, self.spec.family, self.spec.kind, params)


def compress(
    net: SubspaceNet,
    alpha: float,
    gamma: float | None = None,
    per_layer: Callable[[str], float] | None = None,
) -> Level:
    """f(ω*(α), γ(α)) for `net`, differentiable (training); servers use a cached LevelCompressor."""
    return LevelCompressor(net)(alpha, gamma, per_layer)
