"""The model slot: the subspace in memory and the one Level requests run on, swapped atomically."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from models import Level, LevelCompressor, SubspaceNet
from models.checkpoint import Metadata

log = logging.getLogger("lcs.server")


@dataclass(frozen=True)
class Change:
    alpha: float
    gamma: float
    reason: str
    at: float = field(default_factory=time.time)  # wall clock, for GET /level


class ModelSlot:
    """Holds ω (or ω1, ω2) and the current compressed network f(ω*(α), γ(α)).

    A request reads `current` once and runs its whole forward pass on that Level; a change
    builds the next Level on its own thread and replaces the reference in one assignment, so
    no request ever sees a half-updated network.
    """

    def __init__(self, net: SubspaceNet, meta: Metadata, checksum: str) -> None:
        self.net, self.meta, self.checksum = net, meta, checksum
        self.calc = meta.spec.calc
        self._levels = LevelCompressor(net, cache=True)
        self._builder = ThreadPoolExecutor(1, thread_name_prefix="lcs-recompress")
        self._generation = 0
        self.current: Level = self._levels(self.calc.alpha_max)
        self.last_change = Change(self.current.alpha, self.current.gamma, "startup")

    def build(self, alpha: float) -> tuple[Level, float]:
        """f(ω*(α), γ(α)) and the seconds it took (also warms the TopK order cache)."""
        t0 = time.perf_counter()
        with torch.inference_mode():
            level = self._levels(alpha)
        return level, time.perf_counter() - t0

    async def switch(self, alpha: float, reason: str) -> tuple[Level, float] | None:
        """Move to α off the request path; returns the new Level and its build time, or None
        when α is already current or a newer switch overtook this one."""
        alpha = self.calc.clamp(alpha)
        if alpha == self.current.alpha:
            return None
        self._generation += 1
        gen = self._generation
        level, seconds = await asyncio.get_running_loop().run_in_executor(
            self._builder, self.build, alpha
        )
        if gen != self._generation:
            return None  # a later request for another level wins
        self.current = level  # the atomic swap
        self.last_change = Change(level.alpha, level.gamma, reason)
        log.info(
            "level changed",
            extra={
                "alpha": level.alpha,
                "gamma": level.gamma,
                "reason": reason,
                "recompress_s": round(seconds, 6),
            },
        )
        return level, seconds

    def close(self) -> None:
        self._builder.shutdown(wait=False, cancel_futures=True)
