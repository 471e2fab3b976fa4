"""Median wall time of a call, bounded by a time budget (the latency profiles of both tiers)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], budget_s: float, most: int = 30) -> float:
    """One untimed warm-up call, then at least 3 and at most `most` timed calls, stopping
    once `budget_s` has passed."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < most and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
