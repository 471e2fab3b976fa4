"""Latency per width against the ratio of multiply-accumulates (the physical limit), Table 2."""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import save, timed
from models import ARCHITECTURES, LevelCompressor, SubspaceSpec, create_model
from models.profile import TABLE2_WIDTHS, count_macs


def measure(arch: str, batch: int, threads: int, repeats: int) -> list[dict[str, float]]:
    torch.set_num_threads(threads)
    net = create_model(arch, SubspaceSpec("structured")).eval().requires_grad_(False)
    levels = LevelCompressor(net, cache=True)
    size = ARCHITECTURES[arch].input_size
    x = torch.randn(batch, *size)
    rows = []
    for width in TABLE2_WIDTHS:
        level = levels(net.spec.calc.alpha(width))
        with torch.inference_mode():
            t = timed(lambda lv=level: net(x, lv), repeats, warmup=1)
        rows.append(
            {
                "arch": arch,
                "batch": batch,
                "threads": threads,
                "width": width,
                "gmacs": count_macs(net, level, size) / 1e9,
                **t,
            }
        )
    full = rows[0]
    for r in rows:
        r["speedup"] = full["median_ms"] / r["median_ms"]
        r["mac_ratio"] = full["gmacs"] / r["gmacs"]
        r["share_of_limit"] = r["speedup"] / r["mac_ratio"]
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--archs", nargs="+", default=["resnet18", "cpreresnet20"])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=5)
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
                    f"{last['speedup']:5.2f}× (MAC ratio {last['mac_ratio']:5.2f}×, "
                    f"{100 * last['share_of_limit']:3.0f} % of the limit)",
                    flush=True,
                )
    print("saved", save("speedup", {"rows": rows}))


if __name__ == "__main__":
    main()
