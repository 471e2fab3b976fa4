"""Cost of a level switch f(ω*(α), γ(α)) against one forward pass, per family and kind."""

from __future__ import annotations

import argparse
import random
import time

import torch

from benchmarks.common import save, timed
from models import ARCHITECTURES, FAMILIES, KINDS, LevelCompressor, SubspaceSpec, create_model

TARGETS_MS = {
    ("resnet18", "structured", "point"): 1.0,
    ("resnet18", "structured", "line"): 6.0,
    ("resnet18", "unstructured", "point"): 15.0,
    ("resnet18", "unstructured", "line"): 6.0,
    ("resnet18", "quantization", "line"): 6.0,
}
COLD = 3  # switches to an α never seen before, per row


def measure(arch: str, family: str, kind: str, repeats: int) -> dict[str, float | str]:
    # One draw of the weights for every run: where |w| ties at a pruning boundary depends on
    # it (1-3 of the 9 grid levels of a random ResNet18), and so did the old tie path's cost.
    torch.manual_seed(0)
    net = create_model(arch, SubspaceSpec(family, kind)).eval().requires_grad_(False)
    levels = LevelCompressor(net, cache=True)
    grid = net.spec.calc.grid(9)
    # As the daemon at load, whose profile visits its grid: the TopK sorts, the LCS+L
    # thresholds of each α and the quantized levels are in place before the first switch.
    for alpha in grid:
        levels(alpha)
    rng = random.Random(0)
    switch = timed(lambda: levels(rng.choice(grid)), repeats)
    # A switch to an α off the grid (a hinted request, an operator's level): its threshold
    # (LCS+L) or its quantized level is not known yet.
    cold = []
    for _ in range(COLD):
        alpha = rng.uniform(net.spec.calc.alpha_min, net.spec.calc.alpha_max)
        t0 = time.perf_counter()
        levels(alpha)
        cold.append(1e3 * (time.perf_counter() - t0))
    # The line-only part: ω*(α) for every layer into tensors reused from call to call (as the
    # switch writes its levels), the floor of any line switch that interpolates every weight.
    line = [m for m in net.subspace_layers() if m.line]
    outs = [torch.empty_like(m.weight) for m in line]

    def interpolate() -> None:
        a = rng.random()
        for m, out in zip(line, outs, strict=True):
            torch.lerp(m.weight_2, m.weight, a, out=out)

    lerp = timed(interpolate, repeats)
    x = torch.randn(1, *ARCHITECTURES[arch].input_size)
    level = levels(grid[len(grid) // 2])
    with torch.inference_mode():
        forward = timed(lambda: net(x, level), max(3, repeats // 4))
    row: dict[str, float | str] = {
        "arch": arch,
        "family": family,
        "kind": kind,
        "switch_ms": switch["median_ms"],
        "switch_p25_ms": switch["p25_ms"],
        "switch_p75_ms": switch["p75_ms"],
        "cold_ms": sorted(cold)[len(cold) // 2],
        "interpolate_ms": lerp["median_ms"] if kind == "line" else 0.0,
        "forward_ms": forward["median_ms"],
        "switch_per_forward": switch["median_ms"] / forward["median_ms"],
    }
    if (arch, family, kind) in TARGETS_MS:
        row["target_ms"] = TARGETS_MS[(arch, family, kind)]
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--archs", nargs="+", default=["small_cnn", "cpreresnet20", "resnet18"])
    p.add_argument("--repeats", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    print(
        f"{'arch':>13} {'family':>13} {'kind':>6} {'switch ms':>10} {'p25':>8} {'p75':>8} "
        f"{'cold ms':>8} {'lerp ms':>8} {'forward ms':>10} {'switch/fwd':>10} {'target':>7}"
    )
    for arch in args.archs:
        for family in args.families:
            for kind in args.kinds:
                r = measure(arch, family, kind, args.repeats)
                rows.append(r)
                target = f"≤{r['target_ms']:g}" if "target_ms" in r else ""
                print(
                    f"{arch:>13} {family:>13} {kind:>6} {r['switch_ms']:10.3f} "
                    f"{r['switch_p25_ms']:8.3f} {r['switch_p75_ms']:8.3f} {r['cold_ms']:8.2f} "
                    f"{r['interpolate_ms']:8.3f} {r['forward_ms']:10.2f} "
                    f"{r['switch_per_forward']:10.3f} {target:>7}",
                    flush=True,
                )
    print("saved", save("switch_cost", {"threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()
