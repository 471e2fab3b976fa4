"""Multiply-accumulates, weight memory and latency of a network at each level (paper Table 2)."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from models import families
from models.compression import Level, LevelCompressor
from models.families.structured import TABLE2_WIDTHS
from models.levels import SubspaceSpec
from models.networks import ARCHITECTURES, SubspaceNet, create_model

__all__ = [
    "TABLE2_WIDTHS",
    "Runner",
    "count_macs",
    "interleaved_seconds",
    "median_seconds",
    "profile",
    "sample_seconds",
    "torch_runner",
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


# Builds the call `lcs profile` times for one level: (net, level, input batch) → (call, tier).
Runner = Callable[[SubspaceNet, Level, torch.Tensor], tuple[Callable[[], object], str]]


def torch_runner(
    net: SubspaceNet, level: Level, x: torch.Tensor
) -> tuple[Callable[[], object], str]:
    """The PyTorch tier: the level's forward pass in inference mode."""

    def run() -> object:
        with torch.inference_mode():
            return net(x, level)

    return run, "torch"


def interleaved_seconds(calls: Sequence[Callable[[], object]], rounds: int) -> list[list[float]]:
    """Each round times every call once, starting one further along each time, so a noisy
    moment slows all levels of a round alike rather than one level of the table."""
    for fn in calls:
        fn()
        fn()
    times: list[list[float]] = [[] for _ in calls]
    for r in range(rounds):
        for i in [(r + j) % len(calls) for j in range(len(calls))]:
            t0 = time.perf_counter()
            calls[i]()
            times[i].append(time.perf_counter() - t0)
    return times


def profile(
    arch: str,
    gammas: Sequence[float] | None = None,
    family: str = "structured",
    kind: str = "point",
    batch: int = 1,
    repeats: int = 10,
    runner: Runner = torch_runner,
) -> list[dict[str, Any]]:
    """MACs, weight bytes and latency per level on the tier `runner` builds; levels are timed
    interleaved and the speed-up is the median over rounds of the first level's time over
    this one's in the same round (as benchmarks/speedup.py)."""
    spec = SubspaceSpec(family, kind)
    net = create_model(arch, spec).eval().requires_grad_(False)
    size = ARCHITECTURES[arch].input_size
    levels = LevelCompressor(net, cache=True)
    gammas = gammas or spec.handler.profile_gammas(spec.calc)
    x = torch.randn(batch, *size)
    built = [levels(spec.calc.alpha(gamma)) for gamma in gammas]
    runs = [runner(net, level, x) for level in built]
    times = interleaved_seconds([fn for fn, _ in runs], repeats)
    rows: list[dict[str, Any]] = []
    for level, (_, tier), ts in zip(built, runs, times, strict=True):
        rows.append(
            {
                "gamma": level.gamma,
                "alpha": level.alpha,
                "mmacs": count_macs(net, level, size) / 1e6,
                "weights_mb": weight_bytes(net, level) / 1e6,
                "latency_ms": 1e3 * statistics.median(ts),
                "speedup": statistics.median(a / b for a, b in zip(times[0], ts, strict=True)),
                "tier": tier,
            }
        )
    return rows


def format_profile(arch: str, rows: Sequence[dict[str, Any]], batch: int) -> str:
    tiers = sorted({str(r["tier"]) for r in rows})
    out = [
        f"{arch} (batch {batch}, {torch.get_num_threads()} threads, tier {'/'.join(tiers)})",
        f"{'γ':>7} {'MMACs':>10} {'weights MB':>11} {'latency ms':>11} {'speed-up':>9}"
        + (" tier" if len(tiers) > 1 else ""),
    ]
    for r in rows:
        out.append(
            f"{r['gamma']:7.3f} {r['mmacs']:10.2f} {r['weights_mb']:11.2f} "
            f"{r['latency_ms']:11.2f} {r['speedup']:8.2f}×"
            + (f" {r['tier']}" if len(tiers) > 1 else "")
        )
    return "\n".join(out)
