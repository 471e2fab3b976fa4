"""Batch-1 forward latency of a shipped checkpoint at given widths (median, one thread).

python -m benchmarks.accuracy.latency models/weights/digits_cpreresnet20.safetensors 1 0.25
"""

from __future__ import annotations

import argparse
import json

import torch

from models import LevelCompressor, checkpoint
from models.profile import count_macs, median_latency


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("checkpoint")
    p.add_argument("gammas", type=float, nargs="+")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--note", default="", help="measuring conditions, e.g. 'machine loaded'")
    p.add_argument("--out", help="also write the JSON here (the report reads it)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    net, meta, _ = checkpoint.load(args.checkpoint)
    levels = LevelCompressor(net, cache=True)
    x = torch.randn(1, *meta.input_size, generator=torch.Generator().manual_seed(0))
    rows = []
    for g in args.gammas:
        level = levels(meta.spec.calc.alpha(g))
        ms = 1e3 * median_latency(net, level, x, args.repeats)
        macs = count_macs(net, level, meta.input_size) / 1e6
        rows.append({"gamma": level.gamma, "mmacs": round(macs, 2), "latency_ms": round(ms, 3)})
    result = {
        "checkpoint": args.checkpoint,
        "threads": args.threads,
        "repeats": args.repeats,
        "note": args.note,
        "rows": rows,
    }
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
