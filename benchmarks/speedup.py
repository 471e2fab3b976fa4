"""Latency per width against the ratio of multiply-accumulates (the physical limit), Table 2."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from benchmarks.common import save
from models import ARCHITECTURES, LevelCompressor, SubspaceSpec, create_model
from models.profile import TABLE2_WIDTHS, count_macs


def measure(arch: str, batch: int, threads: int, repeats: int) -> list[dict[str, float]]:
    """Widths are timed in turn within each repeat, and the speed-up is the median of the
    per-repeat ratios: a noisy neighbour then slows both ends of a ratio alike."""
    torch.set_num_threads(threads)
    net = create_model(arch, SubspaceSpec("structured")).eval().requires_grad_(False)
    levels = LevelCompressor(net, cache=True)
    size = ARCHITECTURES[arch].input_size
    x = torch.randn(batch, *size)
    compressed = [levels(net.spec.calc.alpha(w)) for w in TABLE2_WIDTHS]
    times: list[list[float]] = [[] for _ in TABLE2_WIDTHS]
    with torch.inference_mode():
        for lv in compressed:
            net(x, lv)  # warm-up
        for _ in range(repeats):
            for i, lv in enumerate(compressed):
                t0 = time.perf_counter()
                net(x, lv)
                times[i].append(1e3 * (time.perf_counter() - t0))
    rows = []
    for width, lv, ts in zip(TABLE2_WIDTHS, compressed, times, strict=True):
        ratios = [a / b for a, b in zip(times[0], ts, strict=True)]
        rows.append(
            {
                "arch": arch,
                "batch": batch,
                "threads": threads,
                "width": width,
                "gmacs": count_macs(net, lv, size) / 1e9,
                "median_ms": statistics.median(ts),
                "speedup": statistics.median(ratios),
                "speedup_min": min(ratios),
                "speedup_max": max(ratios),
            }
        )
    for r in rows:
        r["mac_ratio"] = rows[0]["gmacs"] / r["gmacs"]
        r["share_of_limit"] = r["speedup"] / r["mac_ratio"]
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--archs", nargs="+", default=["resnet18", "cpreresnet20"])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    rows = []
    for arch in args.archs:
        for batch in args.batches:
            for threads in args.threads:
                part = measure(arch, batch, threads, args.repeats)
                rows += part
                last = part[-1]
                print(
                    f"{arch:13} batch {batch:3} threads {threads}: width 1.0 "
                    f"{part[0]['median_ms']:8.2f} ms → 0.25 {last['median_ms']:7.2f} ms = "
                    f"{last['speedup']:5.2f}× [{last['speedup_min']:.2f}–"
                    f"{last['speedup_max']:.2f}] (MAC ratio {last['mac_ratio']:5.2f}×, "
                    f"{100 * last['share_of_limit']:3.0f} % of the limit)",
                    flush=True,
                )
    print("saved", save("speedup", {"rows": rows}))


if __name__ == "__main__":
    main()
