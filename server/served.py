"""ServedModel: one loaded checkpoint with its level state, inference service, engine and tier 2."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import torch

from controller.policy import LevelPoint, OperatorPolicy, Profile
from models import Level, SubspaceNet, checkpoint
from models.checkpoint import Metadata
from server.admission import DecodeBudget
from server.engine import Engine, InferenceThread
from server.exporter import Exporter
from server.inference import DaemonLoad, InferenceService
from server.int8 import Calibration
from server.levels import LevelState
from server.metrics import Metrics, ModelMetrics
from server.preprocess import Preprocessor
from server.settings import Settings
from server.tier2 import Int8, Prepared, Tier2

log = logging.getLogger("lcs.server")

PROFILE_BUDGET_S = 0.3  # per level; each timed call is its own job on the inference thread


@dataclass
class Shared:
    """What every model of one daemon shares: settings, metrics and the threads."""

    settings: Settings
    metrics: Metrics
    threads: int  # torch intra-op threads (from the CPU quota)
    inference: InferenceThread  # the one inference thread, every model's forward passes
    decode_pool: ThreadPoolExecutor
    large_decode_pool: ThreadPoolExecutor  # images over the budget's small share: own lane
    decode_budget: DecodeBudget  # bytes of images being decoded at once, across models
    exporter: Exporter | None  # tier 2's export process, shared; None when tier 2 is off
    load: DaemonLoad = field(default_factory=DaemonLoad)  # requests in any model's service


@dataclass(eq=False)
class ServedModel:
    name: str
    version: int
    checksum: str
    path: Path
    meta: Metadata
    net: SubspaceNet
    level: LevelState
    service: InferenceService
    engine: Engine
    metrics: ModelMetrics
    tier2: Tier2 | None = None
    profile: list[LevelPoint] = field(default_factory=list)
    load_bytes: int = 0  # resident growth measured while loading
    loaded_at: float = field(default_factory=time.time)

    @property
    def resident_bytes(self) -> int:
        """What this model holds: its load growth plus its cached tier-2 sessions."""
        return self.load_bytes + (self.tier2.cached_bytes if self.tier2 is not None else 0)

    def identity(self) -> dict[str, Any]:
        """Name, version and checksum, in every response: which model answered."""
        return {
            "name": self.name,
            "version": str(self.version),
            "checksum": self.checksum[:16],
            "arch": self.meta.arch,
        }

    async def close(self) -> None:
        self.service.closed = True
        await self.engine.stop()
        if self.tier2 is not None:
            await self.tier2.close()
        self.level.close()


def resident() -> int:
    return int(psutil.Process().memory_info().rss)


async def open_model(name: str, path: Path, version: int, shared: Shared) -> ServedModel:
    """Load, verify, warm and profile a model off the request path (raises CheckpointError)."""
    before = resident()
    net, meta, digest = await asyncio.to_thread(checkpoint.load, path)
    s, metrics = shared.settings, shared.metrics.for_model(name)
    level = LevelState(net, meta.spec.calc, default_policy(s))
    level.model = name  # for its level-switch spans
    c, h, w = meta.input_size
    service = InferenceService(
        net,
        level,
        Preprocessor(c, h, w, tuple(meta.mean), tuple(meta.std), s.max_pixels),
        shared.decode_pool,
        shared.large_decode_pool,
        shared.decode_budget,
        metrics,
        # The queue must be able to hold a whole request, or it could never be served.
        max_images=min(s.max_batch_images, s.max_queue),
        tier2=_tier2(net, meta, path, level, shared, metrics),
        load=shared.load,
    )
    inline_s = s.inline_forward_max_ms / 1e3
    engine = Engine(
        service.forward,
        max_batch=s.max_batch_size,
        max_wait_s=s.max_batch_wait_ms / 1e3,
        max_queue=s.max_queue,
        executor=shared.inference,
        on_batch=lambda n, sec, tier: _on_batch(metrics, n, sec, tier),
        inline=(lambda: service.pass_short(inline_s)) if inline_s > 0 else None,
        inside=lambda: shared.load.requests,
    )
    model = ServedModel(
        name, version, digest, path, meta, net, level, service, engine, metrics, service.tier2
    )
    level.listen(lambda lv, reason, sec: _on_switch(model, lv, reason, sec))
    engine.start()
    try:
        # The profile also warms every level's code path.
        model.profile = await measure_profile(model, s.profile_levels)
        tier2 = model.tier2
        # Tier 1 profiled at load; a level tier 2 holds is predicted at tier 2's speed.
        # A move to a level tier 2 does not hold also costs the CPU of building its session.
        service.profile = (
            Profile(model.profile)
            if tier2 is None
            else Profile(model.profile, measured=tier2.latency, build_s=tier2.build_seconds)
        )
        if tier2 is not None:
            tier2.on_int8 = lambda p: _int8_point(model, p)
            tier2.on_int8_gone = lambda alpha: _int8_gone(model, alpha)
        moved = await level.switch(initial_alpha(s, level), "startup")
    except BaseException:
        await model.close()
        raise
    if moved is None and model.tier2 is not None:
        model.tier2.level_changed(level.current)  # the start-up level, unchanged by the switch
    service.engine = engine  # accepting requests from here on
    model.load_bytes = max(resident() - before, _tensor_bytes(net))
    _publish(model)
    return model


def default_policy(s: Settings) -> OperatorPolicy:
    return OperatorPolicy(
        min_alpha=s.min_alpha,
        max_alpha=s.max_alpha,
        latency_target_s=s.latency_target_ms / 1e3,
        objective=s.controller_objective,
    )


def initial_alpha(s: Settings, level: LevelState) -> float:
    alpha = level.calc.alpha_max if s.initial_alpha is None else s.initial_alpha
    if s.max_alpha is not None:
        alpha = min(alpha, s.max_alpha)
    if s.min_alpha is not None:
        alpha = max(alpha, s.min_alpha)
    return level.calc.clamp(alpha)


async def measure_profile(model: ServedModel, n: int) -> list[LevelPoint]:
    """Forward latency at a grid of levels on this machine, plus the stored accuracy. Each
    timed pass is its own job on the shared inference thread, so other models keep being
    served in between while a new one is profiled."""
    c, h, w = model.meta.input_size
    x = torch.zeros(1, c, h, w)
    acc = {round(r["alpha"], 4): r["accuracy"] for r in model.meta.accuracy}
    points = []
    for alpha in model.level.calc.grid(n):
        level, _ = model.level.build(alpha)
        seconds = await _median_forward(model, level, x)
        points.append(LevelPoint(level.alpha, level.gamma, seconds, _nearest(acc, level.alpha)))
    return points


async def _median_forward(model: ServedModel, level: Level, x: torch.Tensor) -> float:
    def once() -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.net(x, level)
        return time.perf_counter() - t0

    await model.engine.run_sync(once)  # untimed warm-up
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 30 and (len(times) < 3 or time.perf_counter() - start < PROFILE_BUDGET_S):
        seconds = await model.engine.run_sync(once)
        assert isinstance(seconds, float)
        times.append(seconds)
    return statistics.median(times)


def _nearest(acc: dict[float, float], alpha: float) -> float | None:
    if not acc:
        return None
    key = min(acc, key=lambda a: abs(a - alpha))
    return acc[key] if abs(key - alpha) < 0.05 else None


def _tensor_bytes(net: SubspaceNet) -> int:
    return sum(t.numel() * t.element_size() for t in net.state_dict().values())


def _int8_point(model: ServedModel, p: Prepared) -> None:
    """An admitted int8 variant joins the profile, with its measured latency and held-out
    accuracy: a (width, int8) point the controller may choose (on the event loop)."""
    assert p.latency_s is not None and p.gate is not None
    point = LevelPoint(p.alpha, p.gamma, p.latency_s, p.gate.accuracy, "int8")
    model.service.profile = model.service.profile.with_points([point])


def _int8_gone(model: ServedModel, alpha: float) -> None:
    """An evicted variant leaves the profile: the controller cannot choose what is not held."""
    model.service.profile = model.service.profile.without(alpha, "int8")


def calibration(meta: Metadata, path: Path, s: Settings) -> Calibration | None:
    """The images int8 variants are calibrated and checked on: the folder the checkpoint
    names (training["calibration"], relative to the checkpoint), else the held-out split of
    its dataset (training["data_root"] for datasets not bundled); None if neither exists."""
    common: dict[str, Any] = {
        "mean": tuple(meta.mean),
        "std": tuple(meta.std),
        "size": tuple(meta.input_size[1:]),
        "calibrate": s.tier2_int8_calibration,
    }
    named = meta.training.get("calibration")
    if named:
        folder = path.parent / str(named)
        return Calibration(dataset="folder", root=str(folder), **common)
    from models.data import DATASETS, RECORDED

    name = RECORDED.get(meta.dataset, meta.dataset)
    root = meta.training.get("data_root")
    if name in ("digits", "digits32") or (name in DATASETS and root):
        return Calibration(dataset=meta.dataset, root=root, **common)
    return None


def _tier2(
    net: SubspaceNet,
    meta: Metadata,
    path: Path,
    level: LevelState,
    shared: Shared,
    metrics: ModelMetrics,
) -> Tier2 | None:
    if shared.exporter is None:
        return None
    s = shared.settings
    c, h, w = meta.input_size
    return Tier2(
        net,
        (c, h, w),
        s.tier2_threads or shared.threads,
        metrics,  # type: ignore[arg-type]  # the model's view has the same metric names
        lambda: level.current,
        settle_s=s.tier2_settle_s,
        budget_bytes=int(s.tier2_cache_mb * 2**20),
        tolerance=s.tier2_tolerance,
        exporter=shared.exporter,
        spin=s.tier2_spin,
        int8=Int8(calibration(meta, path, s), s.tier2_int8_min_agreement, s.tier2_int8_format)
        if s.tier2_int8
        else None,
    )


def _on_switch(model: ServedModel, level: Level, reason: str, seconds: float) -> None:
    """readings → level → recompress → swap: the metrics and tier 2 after each swap."""
    m = model.metrics
    m.recompress.observe(seconds)
    m.level_changes.labels(reason).inc()
    m.alpha.set(level.alpha)
    m.gamma.set(level.gamma)
    m.int8.set(model.service.precision() == "int8")
    if model.tier2 is not None:
        model.tier2.level_changed(level)


def _on_batch(metrics: ModelMetrics, size: int, seconds: float, tier: str) -> None:
    metrics.batch_size.observe(size)
    metrics.inference.labels(tier).observe(seconds)


def _publish(model: ServedModel) -> None:
    m, meta, level = model.metrics, model.meta, model.level.current
    m.alpha.set(level.alpha)
    m.gamma.set(level.gamma)
    m.resident.set(model.resident_bytes)
    m.info.labels(
        str(model.version), meta.arch, meta.family, meta.kind, model.checksum[:16], meta.dataset
    ).set(1)
