"""LevelState: the one owner of a model's level — current Level, the switch, the operator policy."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from controller.policy import OperatorPolicy
from models import Calculator, Level, LevelCompressor, SubspaceNet
from server import tracing

log = logging.getLogger("lcs.server")

# Levels kept for hinted requests: an unstructured level is a full copy of the weights.
HINTED_LEVELS = 3
Listener = Callable[[Level, str, float], None]  # (new level, reason, recompress seconds)


@dataclass(frozen=True)
class Change:
    alpha: float
    gamma: float
    reason: str
    at: float = field(default_factory=time.time)  # wall clock, for GET /level
    precision: str = "fp32"


@dataclass(frozen=True)
class Audit:
    """Who set the operator policy and why (the policy itself is the controller's record)."""

    who: str = "default"
    why: str = ""
    at: float = field(default_factory=time.time)


class LevelState:
    """Holds ω (or ω1, ω2) through its compressor and the current f(ω*(α), γ(α)).

    A request reads `current` once and runs its whole forward pass on that Level; a switch
    builds the next Level on its own thread and replaces the reference in one assignment, so
    no request ever sees a half-updated network. Every switch goes through `switch`, so the
    controller, which reads `current` on each step, can never hold a stale α.
    """

    def __init__(self, net: SubspaceNet, calc: Calculator, policy: OperatorPolicy) -> None:
        self.calc = calc
        self.model = ""  # its name, for tracing (set when the model is opened)
        self.policy, self.audit = policy, Audit()
        self._levels = LevelCompressor(net, cache=True)
        self._builder = ThreadPoolExecutor(1, thread_name_prefix="lcs-recompress")
        self._generation = 0
        self._listeners: list[Listener] = []
        self._hinted: dict[float, Level] = {}  # levels built for hinted requests, LRU
        self.current: Level = self._levels(calc.alpha_max)
        # The precision asked for at the current width: "int8" is served once tier 2 holds
        # the variant its gate admitted, fp32 until then. A point is (α, precision).
        self.precision = "fp32"
        self.last_change = Change(self.current.alpha, self.current.gamma, "startup")

    def listen(self, fn: Listener) -> None:
        """`fn` runs on the event loop right after each swap (metrics, tier 2)."""
        self._listeners.append(fn)

    async def level_at(self, alpha: float) -> Level:
        """The Level at α for one request (a hint), built off the loop; the last few are kept,
        so hinted traffic at a steady level costs a lookup."""
        alpha = self.calc.clamp(alpha)
        if alpha == self.current.alpha:
            return self.current
        kept = self._hinted.pop(alpha, None)
        if kept is not None:
            level = kept
        else:
            loop = asyncio.get_running_loop()
            level, _ = await loop.run_in_executor(self._builder, self.build, alpha)
        self._hinted[alpha] = level  # most recent last
        while len(self._hinted) > HINTED_LEVELS:
            del self._hinted[next(iter(self._hinted))]
        return level

    def build(self, alpha: float) -> tuple[Level, float]:
        """f(ω*(α), γ(α)) and the seconds it took (also warms the TopK order cache)."""
        t0 = time.perf_counter()
        with torch.inference_mode():
            level = self._levels(alpha)
        return level, time.perf_counter() - t0

    async def switch(self, alpha: float, reason: str, precision: str | None = None) -> Level | None:
        """Move to the point (α, precision) off the request path (precision None: keep it);
        returns the new Level, or None when α is already current (a change of precision
        alone is then made at once) or a newer switch overtook this one."""
        alpha = self.calc.clamp(alpha)
        precision = self.precision if precision is None else precision
        if alpha == self.current.alpha:
            if precision != self.precision:
                self.precision = precision
                self._changed(self.current, reason, 0.0)
            return None
        self._generation += 1
        gen = self._generation
        level, seconds = await asyncio.get_running_loop().run_in_executor(
            self._builder, self.build, alpha
        )
        if gen != self._generation:
            return None  # a later switch wins
        tracing.level_switch(self.model, self.current, level, reason, seconds)
        self.current = level  # the atomic swap
        self.precision = precision
        self._changed(level, reason, seconds)
        return level

    def _changed(self, level: Level, reason: str, seconds: float) -> None:
        self.last_change = Change(level.alpha, level.gamma, reason, precision=self.precision)
        log.info(
            "level changed",
            extra={
                "alpha": level.alpha,
                "gamma": level.gamma,
                "precision": self.precision,
                "reason": reason,
                "recompress_s": round(seconds, 6),
            },
        )
        for fn in self._listeners:
            fn(level, reason, seconds)

    async def set_policy(self, policy: OperatorPolicy, audit: Audit) -> None:
        """An operator's policy wins over the controller: fixed moves now, bounds clamp now."""
        self.policy, self.audit = policy, audit
        if policy.mode == "fixed" and policy.alpha is not None:
            await self.switch(policy.alpha, "operator_fixed", policy.precision)
            return
        alpha = self.current.alpha
        lo = policy.min_alpha if policy.min_alpha is not None else alpha
        hi = policy.max_alpha if policy.max_alpha is not None else alpha
        if not lo <= alpha <= hi:
            await self.switch(min(max(alpha, lo), hi), "operator_bounds")

    def close(self) -> None:
        self._builder.shutdown(wait=False, cancel_futures=True)
