"""`python -m benchmarks.accuracy.table2`: the paper's Table 2 (MACs, weight memory, latency)."""

from __future__ import annotations

import argparse

import torch

from benchmarks.common import save
from models.profile import TABLE2_WIDTHS, profile

# The paper's Table 2 at widths 1, 0.75, 0.625, 0.5, 0.375, 0.25 (MacBook Pro, 6-core i7),
# printed beside ours so the MAC and memory counts can be checked against the source.
PAPER = {
    "cpreresnet20": {
        "mmacs": [33.75, 19.07, 13.29, 8.55, 4.85, 2.2],
        "weights_mb": [0.87, 0.49, 0.34, 0.22, 0.12, 0.06],
        "latency_ms": [3.13, 2.64, 2.09, 1.83, 1.64, 1.28],
    },
    "resnet18": {
        "mmacs": [1814.1, 1042.66, 736.42, 483.16, 282.89, 135.61],
        "weights_mb": [46.72, 26.67, 18.74, 12.2, 7.06, 3.31],
        "latency_ms": [45.85, 30.34, 22.51, 14.31, 9.84, 6.02],
    },
    "vgg19": {
        "mmacs": [19533.52, 11008.56, 7656.48, 4911.33, 2773.1, 1241.81],
        "weights_mb": [82.12, 46.58, 32.56, 21.04, 12.03, 5.52],
        "latency_ms": [388.49, 246.81, 172.64, 105.77, 60.0, 29.55],
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--archs", nargs="+", default=list(PAPER), choices=list(PAPER))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = {}
    for arch in args.archs:
        print(f"profiling {arch} at widths {TABLE2_WIDTHS} …", flush=True)
        rows = profile(arch, TABLE2_WIDTHS, repeats=args.repeats)
        full = rows[0]["weights_mb"]
        for r in rows:
            r["sparsity_pct"] = 100 * (1 - r["weights_mb"] / full)
        out[arch] = {"ours": rows, "paper": PAPER[arch]}
        print(f"  {arch}: {rows[0]['latency_ms']:.1f} → {rows[-1]['latency_ms']:.1f} ms")
    print(f"saved {save('table2', {'threads': args.threads, 'archs': out})}")


if __name__ == "__main__":
    main()
