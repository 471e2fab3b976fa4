"""Adaptive vs pinned at full accuracy under `stress-ng --cpu N`: tail latency, misses, accuracy,
and whether adaptation meets its goal (≥ 10× fewer misses where the forward pass is at least
half the request; never worse than pinned on the default model)."""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import httpx

from benchmarks.common import save
from benchmarks.load import wait_for_tier
from tests.helpers import ROOT, digits, drive, encode, live_server, make_checkpoint

TRAINED_C20 = ROOT / "models" / "weights" / "digits_cpreresnet20.safetensors"


def level_changes(url: str) -> dict[str, int]:
    """The daemon's level changes so far, by reason (from /metrics; start-up left out)."""
    text = httpx.get(url + "/metrics").text
    pattern = r'^lcs_level_changes_total\{[^}]*reason="([^"]+)"[^}]*\} ([0-9.e+]+)$'
    found = Counter({m[1]: int(float(m[2])) for m in re.finditer(pattern, text, re.M)})
    found.pop("startup", None)
    return dict(found)


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
    if samples:  # served on tier 1 (torch), not tier 2's session
        row["tier1_share"] = sum(s[3] == "torch" for s in samples) / len(samples)
    if accuracy:
        near = [accuracy[min(accuracy, key=lambda a, x=x: abs(a - x))] for x in alphas]
        row["accuracy"] = statistics.fmean(near)
        row["accuracy_cost_pt"] = 100 * (accuracy[max(accuracy)] - row["accuracy"])
    return row


def run(name: str, env: dict[str, str], png: bytes, burners: list[int], seconds: float):
    with live_server({**env, "LCS_CONTROLLER_ENABLED": "0"}) as srv:
        wait_for_tier(srv.url)  # tier 2 serves the start-up level (when it is on)
        idle = drive(srv.url, png, 3)
        profile = httpx.get(srv.url + "/level").json()["profile"]
    median = statistics.median(s[1] for s in idle)
    target = 1.6 * median  # the rule the e2e test uses
    # The forward pass's part of an idle request at full width, on the tier that serves it
    top = max(profile, key=lambda p: p["alpha"])
    forward_ms = top["tier2_latency_ms"] or top["latency_ms"]
    forward_fraction = min(1.0, forward_ms / (1e3 * median))
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
                # Both modes start as a pinned daemon runs: on the tier that settles.
                settled_t2 = wait_for_tier(srv.url) == "onnx"
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
                changes = level_changes(srv.url)
            # The first 3 s are the controller's reaction time; report the settled part.
            settled = [s for s in samples if s[0] - samples[0][0] > min(3.0, seconds / 2)]
            row = {
                "model": name,
                "burners": n,
                "mode": mode,
                "target_ms": 1e3 * target,
                "forward_fraction": forward_fraction,
                "tier2_at_start": settled_t2,
                **summarise(settled, target, accuracy),
                "level_changes": changes,  # the whole run, by reason
            }
            rows.append(row)
            print(
                f"{name:9} stress-ng --cpu {n}  {mode:8}  p50 {row['p50_ms']:7.2f} ms  "
                f"p99 {row['p99_ms']:7.2f} ms  over {100 * row['over_target']:5.1f} %  "
                f"mean α {row['mean_alpha']:.2f}"
                + (f"  accuracy {100 * row['accuracy']:.1f} %" if "accuracy" in row else "")
                + f"  tier 1 {100 * row.get('tier1_share', 0):.0f} %"
                + f"  moves {sum(changes.values())} {changes or ''}",
                flush=True,
            )
    return rows


def goals(rows: list[dict]) -> list[dict]:
    """Per model and burner count under load: pinned misses / adaptive misses, and issue 16's
    goal: ≥ 10× fewer where the forward pass is ≥ half an idle request; never worse than
    pinned on the default model (digits); no goal for other overhead-bound models."""
    out = []
    for r in rows:
        if r["mode"] != "adaptive" or r["burners"] == 0:
            continue
        pin = next(
            p
            for p in rows
            if p["mode"] == "pinned" and p["model"] == r["model"] and p["burners"] == r["burners"]
        )
        a, b = r["over_target"], pin["over_target"]
        floor = 1 / max(1, r["requests"])  # 0 misses: count it as one
        ratio = None if a == b == 0 else b / max(a, floor)
        if r["forward_fraction"] >= 0.5:
            # no misses in either: the target was too loose to test anything
            goal, met = "≥ 10× fewer misses", None if ratio is None else ratio >= 10
        elif r["model"] == "digits":
            goal, met = "no worse than pinned", a <= b
        else:
            goal, met = "none (forward < half, not the default model)", None
        out.append(
            {
                "model": r["model"],
                "burners": r["burners"],
                "forward_fraction": r["forward_fraction"],
                "adaptive_over": a,
                "pinned_over": b,
                "ratio": ratio,
                "goal": goal + (" (no misses in either)" if a == b == 0 else ""),
                "met": met,
            }
        )
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--burners", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--seconds", type=float, default=15)
    default = ["resnet18", "cpreresnet20", "digits"] + (
        ["c20digits"] if TRAINED_C20.exists() else []
    )
    p.add_argument("--models", nargs="+", default=default)
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
    if "cpreresnet20" in args.models:
        ckpt = make_checkpoint(Path(tempfile.mkdtemp()) / "c20.safetensors", "cpreresnet20")
        rgb = encode(arr, "PNG", "RGB")
        rows += run(
            "cpreresnet20", {**env, "LCS_CHECKPOINT": str(ckpt)}, rgb, args.burners, args.seconds
        )
    if "c20digits" in args.models and TRAINED_C20.exists():  # the trained cPreResNet20
        rows += run(
            "c20digits",
            {**env, "LCS_CHECKPOINT": str(TRAINED_C20)},
            encode(arr),
            args.burners,
            args.seconds,
        )
    if "digits" in args.models:
        rows += run("digits", env, encode(arr), args.burners, args.seconds)
    for g in goals(rows):
        ratio = "n/a" if g["ratio"] is None else f"{g['ratio']:.1f}×"
        verdict = {True: "met", False: "NOT met", None: "-"}[g["met"]]
        print(
            f"goal {g['model']:12} cpu {g['burners']}  forward {100 * g['forward_fraction']:.0f} % "
            f"of a request  pinned/adaptive misses {ratio}  {g['goal']}: {verdict}",
            flush=True,
        )
    tier2 = os.environ.get("LCS_TIER2_ENABLED", "1").lower() not in ("0", "false", "no")
    print(
        "saved",
        save(
            "adaptation",
            {"rows": rows, "goals": goals(rows), "seconds": args.seconds, "tier2": tier2},
        ),
    )


if __name__ == "__main__":
    main()
