"""Everything one running daemon holds, built at start-up: model slot, engine, metrics, policy."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from models import Level
from server.engine import Engine
from server.metrics import Metrics
from server.preprocess import Preprocessor
from server.settings import Settings
from server.slot import ModelSlot
from server.timing import median_seconds

if TYPE_CHECKING:
    from server.tier2 import Tier2

log = logging.getLogger("lcs.server")


@dataclass(frozen=True)
class ProfilePoint:
    alpha: float
    gamma: float
    latency_s: float  # median forward pass, batch 1, on this machine
    accuracy: float | None  # held-out accuracy from the checkpoint's metadata


@dataclass
class OperatorPolicy:
    """What an operator set through PUT /level (auto with the model's full range by default)."""

    mode: str = "auto"
    alpha: float | None = None
    min_alpha: float | None = None
    max_alpha: float | None = None
    latency_target_s: float | None = None
    set_by: str = "default"
    reason: str = ""

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Runtime:
    settings: Settings
    slot: ModelSlot
    engine: Engine
    metrics: Metrics
    preprocess: Preprocessor
    threads: int
    decode_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(2, thread_name_prefix="lcs-decode")
    )
    profile: list[ProfilePoint] = field(default_factory=list)
    policy: OperatorPolicy = field(default_factory=OperatorPolicy)
    controller: Any = None  # controller.loop.Controller when enabled
    tier2: Tier2 | None = None  # ONNX Runtime sessions of settled levels, when enabled
    ready: bool = False
    draining: bool = False
    not_ready_reason: str = "starting"
    latencies: list[float] = field(default_factory=list)  # recent request seconds (feedback)

    @property
    def model_name(self) -> str:
        return self.settings.model_name or self.slot.meta.arch

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Level, str]:
        """Runs on the inference thread: one Level captured for the whole pass, run by tier 2
        only if its session was built from that very level, else by PyTorch (tier 1)."""
        level = self.slot.current
        prepared = self.tier2.serving(level) if self.tier2 is not None else None
        if prepared is not None:
            try:
                return prepared.run(x, "probabilities"), level, "onnx"
            except Exception as e:  # tier 2 never fails a request: tier 1 answers
                assert self.tier2 is not None
                self.tier2.run_failed(prepared, e)
        with torch.inference_mode():
            probs = torch.softmax(self.slot.net(x, level), dim=1)
        return probs, level, "torch"

    def tier(self) -> str:
        """The tier a request arriving now would run on."""
        level = self.slot.current
        return "onnx" if self.tier2 is not None and self.tier2.serving(level) else "torch"

    async def switch(self, alpha: float, reason: str) -> None:
        """readings → level → recompress → swap, with metrics at each step."""
        done = await self.slot.switch(alpha, reason)
        if done is None:
            return
        level, seconds = done
        self.metrics.recompress.observe(seconds)
        self.metrics.level_changes.labels(reason).inc()
        self.metrics.alpha.set(level.alpha)
        self.metrics.gamma.set(level.gamma)
        if self.tier2 is not None:
            self.tier2.level_changed(level)

    def record_latency(self, seconds: float) -> None:
        self.latencies.append(seconds)
        if len(self.latencies) > 512:
            del self.latencies[:256]

    def feedback(self) -> tuple[float | None, float | None, float | None, int]:
        """Recent request latency p50/p95/p99 and queue depth, for the controller."""
        recent = self.latencies[-200:]
        if len(recent) < 5:
            return None, None, None, self.engine.depth
        q = statistics.quantiles(recent, n=100, method="inclusive")
        return q[49], q[94], q[98], self.engine.depth

    async def measure_profile(self) -> None:
        """Forward latency at a grid of levels on this machine, plus the stored accuracy."""
        c, h, w = self.slot.meta.input_size
        x = torch.zeros(1, c, h, w)
        acc = {round(r["alpha"], 4): r["accuracy"] for r in self.slot.meta.accuracy}
        points = []
        for alpha in self.slot.calc.grid(self.settings.profile_levels):
            level, _ = self.slot.build(alpha)
            seconds = await self.engine.run_sync(partial(_median_forward, self, level, x))
            assert isinstance(seconds, float)
            points.append(
                ProfilePoint(level.alpha, level.gamma, seconds, _nearest(acc, level.alpha))
            )
        self.profile = points


def _median_forward(rt: Runtime, level: Level, x: torch.Tensor) -> float:
    with torch.inference_mode():
        return median_seconds(lambda: rt.slot.net(x, level), budget_s=0.3)


def _nearest(acc: dict[float, float], alpha: float) -> float | None:
    if not acc:
        return None
    key = min(acc, key=lambda a: abs(a - alpha))
    return acc[key] if abs(key - alpha) < 0.05 else None


async def wait_idle(rt: Runtime, timeout_s: float) -> None:
    """Drain: wait until every accepted request has been answered (bounded)."""
    deadline = time.monotonic() + timeout_s
    while rt.engine.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
