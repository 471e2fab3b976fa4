"""Cost of a level switch f(ω*(α), γ(α)) against one forward pass, per family and kind."""

from __future__ import annotations

import argparse
import random

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


def measure(arch: str, family: str, kind: str, repeats: int) -> dict[str, float | str]:
    net = create_model(arch, SubspaceSpec(family, kind)).eval().requires_grad_(False)
    levels = LevelCompressor(net, cache=True)
    grid = net.spec.calc.grid(9)
    levels(grid[0])  # first use fills the caches (the TopK sort): paid once at start-up
    rng = random.Random(0)
    switch = timed(lambda: levels(rng.choice(grid)), repeats)
    # The line-only part: ω*(α) for every layer, the floor of any line switch.
    lerp = timed(lambda: [m.at(rng.random()) for m in net.subspace_layers()], repeats)
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
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    print(
        f"{'arch':>13} {'family':>13} {'kind':>6} {'switch ms':>10} {'lerp ms':>8} "
        f"{'forward ms':>10} {'switch/fwd':>10} {'target':>7}"
    )
    for arch in args.archs:
        for family in FAMILIES:
            for kind in KINDS:
                r = measure(arch, family, kind, args.repeats)
                rows.append(r)
                target = f"≤{r['target_ms']:g}" if "target_ms" in r else ""
                print(
                    f"{arch:>13} {family:>13} {kind:>6} {r['switch_ms']:10.3f} "
                    f"{r['interpolate_ms']:8.3f} {r['forward_ms']:10.2f} "
                    f"{r['switch_per_forward']:10.3f} {target:>7}",
                    flush=True,
                )
    print("saved", save("switch_cost", {"threads": args.threads, "rows": rows}))


if __name__ == "__main__":
    main()
