"""Resident memory of a served subspace at each level, and of a line subspace against a point."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from benchmarks.common import save
from tests.helpers import ROOT

CHILD = """
import json, sys, psutil, torch
from models import LevelCompressor, SubspaceSpec, create_model
from models.compression.cache import LEVEL_CACHE
from server.admission import trim
arch, family, kind = sys.argv[1:4]
torch.set_num_threads(1)
proc = psutil.Process()
base = proc.memory_info().rss
net = create_model(arch, SubspaceSpec(family, kind)).eval().requires_grad_(False)
loaded = proc.memory_info().rss
levels = LevelCompressor(net, cache=True)
x = torch.randn(1, *{"resnet18": (3, 224, 224), "small_cnn": (1, 28, 28)}[arch])
rows = []
for alpha in net.spec.calc.grid(7):
    level = levels(alpha)
    with torch.inference_mode():
        net(x, level)
    rss = proc.memory_info().rss
    trim()  # malloc_trim(0), as the daemon does: what glibc keeps of freed blocks vs what is held
    rows.append({"alpha": level.alpha, "gamma": level.gamma, "rss_mb": rss / 1e6,
                 "trimmed_mb": proc.memory_info().rss / 1e6,
                 "cache_mb": LEVEL_CACHE.nbytes / 1e6, "buffers_mb": levels.buffers.nbytes() / 1e6})
    del level
print(json.dumps({"arch": arch, "family": family, "kind": kind, "python_torch_mb": base / 1e6,
                  "weights_mb": (loaded - base) / 1e6,
                  "cache_bound_mb": LEVEL_CACHE.bound_bytes / 1e6, "levels": rows}))
"""


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--arch", default="resnet18", choices=["resnet18", "small_cnn"])
    args = p.parse_args(argv)
    rows = []
    for family in ("structured", "unstructured", "quantization"):
        for kind in ("point", "line"):
            out = subprocess.run(
                [sys.executable, "-c", CHILD, args.arch, family, kind],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout)
            rows.append(r)
            peak = max(x["rss_mb"] for x in r["levels"])
            print(
                f"{args.arch} {family:13} {kind:5}: weights {r['weights_mb']:6.1f} MB, "
                f"resident at each level {min(x['rss_mb'] for x in r['levels']):6.1f}–"
                f"{peak:6.1f} MB",
                flush=True,
            )
    print("saved", save("memory", {"rows": rows}))


if __name__ == "__main__":
    main()
