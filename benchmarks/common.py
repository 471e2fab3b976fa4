"""Shared benchmark helpers: repeated timing with median and spread, machine description, JSON."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# LCS_BENCH_RESULTS redirects output (the smoke test must not overwrite published results).
RESULTS = Path(os.environ.get("LCS_BENCH_RESULTS", Path(__file__).parent / "results"))


def timed(fn: Callable[[], object], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median and interquartile range of `fn` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - t0))
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else times * 3
    return {"median_ms": statistics.median(times), "p25_ms": q[0], "p75_ms": q[-1], "n": len(times)}


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
