"""Start-up and shutdown: load → threads → engine → warm-up + profile → controller → ready."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

import torch

from models import checkpoint
from server import control
from server.engine import Engine
from server.metrics import Metrics
from server.preprocess import Preprocessor
from server.runtime import Runtime
from server.settings import Settings
from server.slot import ModelSlot

if TYPE_CHECKING:
    from server.tier2 import Tier2

log = logging.getLogger("lcs.server")


def inference_threads(settings: Settings) -> int:
    """torch intra-op threads: the setting, else the CPU quota (cgroup cpu.max, affinity)."""
    if settings.torch_threads:
        return settings.torch_threads
    from controller.sensors import cpu_quota_cores

    return cpu_quota_cores()


async def start(settings: Settings, metrics: Metrics) -> Runtime:
    net, meta, digest = await asyncio.to_thread(checkpoint.load, settings.checkpoint)
    threads = inference_threads(settings)
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    c, h, w = meta.input_size
    rt = Runtime(
        settings=settings,
        slot=ModelSlot(net, meta, digest),
        metrics=metrics,
        preprocess=Preprocessor(c, h, w, tuple(meta.mean), tuple(meta.std), settings.max_pixels),
        threads=threads,
        engine=Engine(
            lambda x: rt.forward(x),
            max_batch=settings.max_batch_size,
            max_wait_s=settings.max_batch_wait_ms / 1e3,
            max_queue=settings.max_queue,
            threads=threads,
            on_batch=lambda n, s, tier: _on_batch(metrics, n, s, tier),
        ),
    )
    if settings.tier2_enabled:
        rt.tier2 = _tier2(rt)
    metrics.torch_threads.set(threads)
    metrics.model.info(
        {
            "arch": meta.arch,
            "family": meta.family,
            "kind": meta.kind,
            "checksum": digest[:16],
            "dataset": meta.dataset,
        }
    )
    rt.engine.start()
    await rt.measure_profile()  # also warms every level's code path
    await rt.switch(_initial_alpha(rt), "startup")
    level = rt.slot.current
    if rt.tier2 is not None:
        rt.tier2.level_changed(level)  # the start-up level too (switch skips an unchanged α)
    metrics.alpha.set(level.alpha)
    metrics.gamma.set(level.gamma)
    if settings.controller_enabled:
        rt.controller = control.start(rt)
    rt.ready, rt.not_ready_reason = True, ""
    metrics.ready.set(1)
    log.info(
        "ready",
        extra={
            "arch": meta.arch,
            "family": meta.family,
            "kind": meta.kind,
            "threads": threads,
            "alpha": level.alpha,
            "gamma": level.gamma,
        },
    )
    return rt


def _initial_alpha(rt: Runtime) -> float:
    s, calc = rt.settings, rt.slot.calc
    alpha = calc.alpha_max if s.initial_alpha is None else s.initial_alpha
    if s.max_alpha is not None:
        alpha = min(alpha, s.max_alpha)
    if s.min_alpha is not None:
        alpha = max(alpha, s.min_alpha)
    return calc.clamp(alpha)


def _tier2(rt: Runtime) -> Tier2:
    from server.tier2 import Tier2  # onnxruntime is loaded only when tier 2 is on

    s, (c, h, w) = rt.settings, rt.slot.meta.input_size
    return Tier2(
        rt.slot.net,
        (c, h, w),
        s.tier2_threads or rt.threads,
        rt.metrics,
        lambda: rt.slot.current,
        settle_s=s.tier2_settle_s,
        budget_bytes=int(s.tier2_cache_mb * 2**20),
        tolerance=s.tier2_tolerance,
        exporter_idle_s=s.tier2_exporter_idle_s,
        spin=s.tier2_spin,
    )


def _on_batch(metrics: Metrics, size: int, seconds: float, tier: str) -> None:
    metrics.batch_size.observe(size)
    metrics.inference.labels(tier).observe(seconds)


async def stop(rt: Runtime) -> None:
    rt.ready, rt.not_ready_reason = False, "shutting down"
    rt.metrics.ready.set(0)
    if rt.controller is not None:
        await control.stop(rt)
    await rt.engine.stop()
    if rt.tier2 is not None:
        await rt.tier2.close()
    rt.slot.close()
    rt.decode_pool.shutdown(wait=False, cancel_futures=True)
