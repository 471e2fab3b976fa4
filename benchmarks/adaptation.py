"""Adaptive vs pinned at full accuracy under `stress-ng --cpu N`: tail latency, misses, accuracy."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

import httpx

from benchmarks.common import save
from tests.helpers import digits, drive, encode, live_server, make_checkpoint


def summarise(samples, target_s: float, accuracy: dict[float, float]) -> dict[str, float]:
    lat = [s[1] for s in samples]
    q = statistics.quantiles(lat, n=100, method="inclusive")
    alphas = [s[2] for s in samples]
    row = {
        "requests": len(lat),
        "p50_ms": 1e3 * q[49],
        "p99_ms": 1e3 * q[98],
        "over_target": sum(x > target_s for x in lat) / len(lat),
        "mean_alpha": statistics.fmean(alphas),
    }
    if accuracy:
        near = [accuracy[min(accuracy, key=lambda a, x=x: abs(a - x))] for x in alphas]
        row["accuracy"] = statistics.fmean(near)
        row["accuracy_cost_pt"] = 100 * (accuracy[max(accuracy)] - row["accuracy"])
    return row


def run(name: str, env: dict[str, str], png: bytes, burners: list[int], seconds: float):
    with live_server({**env, "LCS_CONTROLLER_ENABLED": "0"}) as srv:
        idle = drive(srv.url, png, 3)
        profile = httpx.get(srv.url + "/level").json()["profile"]
    target = 1.6 * statistics.median(s[1] for s in idle)  # the rule the e2e test uses
    accuracy = {p["alpha"]: p["accuracy"] for p in profile if p["accuracy"] is not None}
    rows = []
    for n in burners:
        for mode in ("adaptive", "pinned"):
            extra = {
                "LCS_LATENCY_TARGET_MS": f"{1e3 * target:.2f}",
                "LCS_CONTROLLER_ENABLED": "1" if mode == "adaptive" else "0",
            }
            with live_server({**env, **extra}) as srv:
                drive(srv.url, png, 1)
                burner = (
                    subprocess.Popen(
                        [
                            "stress-ng",
                            "--cpu",
                            str(n),
                            "--timeout",
                            f"{seconds + 2:.0f}s",
                            "--quiet",
                        ]
                    )
                    if n
                    else None
                )
                try:
                    samples = drive(srv.url, png, seconds)
                finally:
                    if burner:
                        burner.wait(60)
            # The first 3 s are the controller's reaction time; report the settled part.
            settled = [s for s in samples if s[0] - samples[0][0] > 3]
            row = {
                "model": name,
                "burners": n,
                "mode": mode,
                "target_ms": 1e3 * target,
                **summarise(settled, target, accuracy),
            }
            rows.append(row)
            print(
                f"{name:9} stress-ng --cpu {n}  {mode:8}  p50 {row['p50_ms']:7.2f} ms  "
                f"p99 {row['p99_ms']:7.2f} ms  over {100 * row['over_target']:5.1f} %  "
                f"mean α {row['mean_alpha']:.2f}"
                + (f"  accuracy {100 * row['accuracy']:.1f} %" if "accuracy" in row else ""),
                flush=True,
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--burners", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--seconds", type=float, default=15)
    p.add_argument("--models", nargs="+", default=["resnet18", "digits"])
    args = p.parse_args(argv)
    arr = digits(1)[0][0]
    rows = []
    env = {"LCS_TORCH_THREADS": "1", "LCS_LOG_LEVEL": "warning"}
    if "resnet18" in args.models:
        ckpt = make_checkpoint(Path(tempfile.mkdtemp()) / "r18.safetensors", "resnet18")
        rows += run(
            "resnet18",
            {**env, "LCS_CHECKPOINT": str(ckpt)},
            encode(arr, "PNG", "RGB"),
            args.burners,
            args.seconds,
        )
    if "digits" in args.models:
        rows += run("digits", env, encode(arr), args.burners, args.seconds)
    tier2 = os.environ.get("LCS_TIER2_ENABLED", "1").lower() not in ("0", "false", "no")
    print("saved", save("adaptation", {"rows": rows, "seconds": args.seconds, "tier2": tier2}))


if __name__ == "__main__":
    main()
