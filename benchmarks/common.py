"""Shared benchmark helpers: repeated timing with median and spread, machine description, JSON."""

from __future__ import annotations

import itertools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models.profile import sample_seconds

# LCS_BENCH_RESULTS redirects output (the smoke test must not overwrite published results).
RESULTS = Path(os.environ.get("LCS_BENCH_RESULTS", Path(__file__).parent / "results"))


def timed(fn: Callable[[], object], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median and interquartile range of `fn` in milliseconds."""
    samples = sample_seconds(fn, most=repeats, least=repeats, warmup=warmup)
    times = [1e3 * s for s in samples]
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else times * 3
    return {"median_ms": statistics.median(times), "p25_ms": q[0], "p75_ms": q[-1], "n": len(times)}


def interleaved(
    variants: dict[str, Callable[[], object]], repeats: int, warm: int = 0
) -> dict[str, Any]:
    """Each round times every variant once, in turn: drift in machine load hits all alike.
    Rounds cycle through every order of the variants, so each is preceded equally often by
    each other one (a variant that always followed a PyTorch pass would always start on the
    caches that pass evicted; mere rotation of three gives one variant that twice as often).
    With `warm`, each timed call follows that many untimed calls of the same variant: a
    server at a settled level runs one network back to back, so its steady state is caches
    holding that network, not the one another variant just ran."""
    for fn in variants.values():
        fn()
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    orders = list(itertools.permutations(variants))
    for i in range(repeats):
        for name in orders[i % len(orders)]:
            fn = variants[name]
            for _ in range(warm):
                fn()
            t0 = time.perf_counter()
            fn()
            times[name].append(1e3 * (time.perf_counter() - t0))
    return {k: {"median_ms": statistics.median(v), "n": len(v)} for k, v in times.items()} | {
        "_times": times
    }


def ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of a/b measured in the same round."""
    return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2))
    return path
