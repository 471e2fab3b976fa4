"""Multiply-accumulates, weight memory and latency of a network at each level (paper Table 2)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from models import families
from models.compression import Level, LevelCompressor
from models.families.structured import TABLE2_WIDTHS
from models.levels import SubspaceSpec
from models.networks import ARCHITECTURES, SubspaceNet, create_model

__all__ = [
    "TABLE2_WIDTHS",
    "count_macs",
    "median_seconds",
    "profile",
    "sample_seconds",
    "weight_bytes",
]


def count_macs(net: SubspaceNet, level: Level, input_size: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass at `level` for one image (convs and linears)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, *input_size), level)
    return counter.get_total_flops() // 2


def weight_bytes(net: SubspaceNet, level: Level) -> int:
    """Bytes of the weights the compressed network runs on, as its family counts them: kept
    channels for structured, non-zeros for unstructured, γ bits per weight in quantized layers.
    Every layer's weights, biases and norm parameters count (see ACCURACY.md, Table 2)."""
    handler = families.get(level.family)
    return sum(handler.weight_bytes(m, level[m.key], level) for m in net.subspace_layers())


def sample_seconds(
    fn: Callable[[], object],
    *,
    most: int,
    least: int = 3,
    budget_s: float = math.inf,
    warmup: int = 1,
) -> list[float]:
    """Wall times of `fn`: `warmup` untimed calls, then at least `least` and at most `most`
    timed ones, stopping once `budget_s` has passed. The one timing loop of the project (the
    profile here, tier 2's session timing, the benchmarks)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < most and (len(times) < least or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median_seconds(fn: Callable[[], object], budget_s: float, most: int = 30) -> float:
    """Median of `sample_seconds` within a time budget (tier 2 times each new session so)."""
    return statistics.median(sample_seconds(fn, most=most, budget_s=budget_s))


def median_latency(net: SubspaceNet, level: Level, x: torch.Tensor, repeats: int) -> float:
    """Median seconds of one forward pass, after two warm-up passes."""
    with torch.inference_mode():
        times = sample_seconds(lambda: net(x, level), most=repeats, least=repeats, warmup=2)
    return statistics.median(times)


def profile(
    arch: str,
    gammas: Sequence[float] | None = None,
    family: str = "structured",
    kind: str = "point",
    batch: int = 1,
    repeats: int = 10,
) -> list[dict[str, float]]:
    spec = SubspaceSpec(family, kind)
    net = create_model(arch, spec).eval().requires_grad_(False)
    size = ARCHITECTURES[arch].input_size
    levels = LevelCompressor(net, cache=True)
    gammas = gammas or spec.handler.profile_gammas(spec.calc)
    x = torch.randn(batch, *size)
    rows = []
    for gamma in gammas:
        level = levels(spec.calc.alpha(gamma))
        rows.append(
            {
                "gamma": level.gamma,
                "alpha": level.alpha,
                "mmacs": count_macs(net, level, size) / 1e6,
                "weights_mb": weight_bytes(net, level) / 1e6,
                "latency_ms": 1e3 * median_latency(net, level, x, repeats),
            }
        )
    return rows


def format_profile(arch: str, rows: Sequence[dict[str, float]], batch: int) -> str:
    out = [
        f"{arch} (batch {batch}, {torch.get_num_threads()} threads)",
        f"{'γ':>7} {'MMACs':>10} {'weights MB':>11} {'latency ms':>11} {'speed-up':>9}",
    ]
    base = rows[0]["latency_ms"]
    for r in rows:
        out.append(
            f"{r['gamma']:7.3f} {r['mmacs']:10.2f} {r['weights_mb']:11.2f} "
            f"{r['latency_ms']:11.2f} {base / r['latency_ms']:8.2f}×"
        )
    return "\n".join(out)
