"""Tier 2 (ONNX Runtime) against tier 1 (PyTorch) and a stand-alone ORT session, batch 1."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from benchmarks.common import interleaved, ratio, save
from server import daemon as serving
from server.metrics import Metrics
from server.served import ServedModel
from server.settings import Settings
from server.tier2 import export, session_options, warmup_batch
from tests.helpers import make_checkpoint

WIDTHS = (1.0, 0.25)  # structured γ: full width and the narrowest trained one


async def until_onnx(rt: ServedModel, timeout_s: float = 600) -> float:
    t0 = time.perf_counter()
    while rt.service.tier() != "onnx":
        if time.perf_counter() - t0 > timeout_s:
            raise TimeoutError("tier 2 never served the level")
        await asyncio.sleep(0.001)
    return time.perf_counter() - t0


async def measure(name: str, ckpt: Path | None, repeats: int, warm: int) -> dict[str, Any]:
    settings = Settings(
        checkpoint=ckpt,
        controller_enabled=False,
        torch_threads=1,
        tier2_enabled=True,
        tier2_settle_s=0.0,
    )
    d = await serving.start(settings, Metrics())
    rt = d.registry.get()
    try:
        assert rt.tier2 is not None
        calc, (c, h, w) = rt.level.calc, rt.meta.input_size
        x = torch.randn(1, c, h, w, generator=torch.Generator().manual_seed(0))
        xn = np.ascontiguousarray(x.numpy())
        gammas = WIDTHS if rt.meta.family == "structured" else calc.gamma_range[::-1]
        rows, ready_s = [], []
        for gamma in gammas:
            t0 = time.perf_counter()
            await rt.level.switch(calc.alpha(gamma), "bench")
            ready_s.append(time.perf_counter() - t0 + await until_onnx(rt))
            level = rt.level.current
            prepared = rt.tier2.active
            assert prepared is not None and prepared.matches(level)
            # The same network in a session of its own, as a plain ORT user would run it.
            model, _ = export(rt.net, level, warmup_batch((c, h, w)))
            alone = ort.InferenceSession(
                model, session_options(1), providers=["CPUExecutionProvider"]
            )

            def tier1(level=level) -> object:
                with torch.inference_mode():
                    return torch.softmax(rt.net(x, level), dim=1)  # ServedModel.forward's tier 1

            def tier2() -> object:
                probs, _, tier, *_ = rt.service.forward(x)  # and precision
                assert tier == "onnx"
                return probs

            t = interleaved(
                {
                    "tier2": tier2,
                    "ort_alone": lambda alone=alone: alone.run(None, {"x": xn}),
                    "tier1": tier1,
                },
                repeats,
                warm,
            )
            times = t.pop("_times")
            rows.append(
                {
                    "gamma": level.gamma,
                    "alpha": level.alpha,
                    **{f"{k}_ms": v["median_ms"] for k, v in t.items()},
                    "tier2_per_ort_alone": ratio(times, "tier2", "ort_alone"),
                    "tier1_per_tier2": ratio(times, "tier1", "tier2"),
                    "tier2_ready_s": ready_s[-1],
                }
            )
            print(
                f"{name:>8} γ={level.gamma:<5g} tier2 {t['tier2']['median_ms']:8.3f} ms  "
                f"ORT alone {t['ort_alone']['median_ms']:8.3f} ms  "
                f"tier1 {t['tier1']['median_ms']:8.3f} ms  "
                f"tier1/tier2 {rows[-1]['tier1_per_tier2']:5.2f}  "
                f"tier 2 ready after {ready_s[-1]:6.2f} s",
                flush=True,
            )
        # Back to the first level: a cache hit, served by tier 2 at once.
        t0 = time.perf_counter()
        await rt.level.switch(calc.alpha(gammas[0]), "bench")
        hit_s = time.perf_counter() - t0 + await until_onnx(rt)
        result: dict[str, Any] = {"model": name, "arch": rt.meta.arch, "rows": rows}
        result["cache_hit_ready_s"] = hit_s
        # Full against narrowest width on tier 2: both sessions are cached, so their forward
        # passes can alternate round by round.
        wide, narrow = (rt.tier2.cache[r["alpha"]] for r in (rows[0], rows[-1]))
        t = interleaved(
            {"wide": lambda: wide.run(x), "narrow": lambda: narrow.run(x)}, repeats, warm
        )
        result["tier2_wide_per_narrow"] = ratio(t.pop("_times"), "wide", "narrow")
        return result
    finally:
        await serving.stop(d)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="+", default=["default", "resnet18"])
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument(
        "--warm", type=int, default=3, help="untimed calls of a variant before each timed one"
    )
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            r18 = Path(tmp) / "r18.safetensors"
            ckpt = None if name == "default" else make_checkpoint(r18, "resnet18")
            r = asyncio.run(measure(name, ckpt, args.repeats, args.warm))
            print(
                f"{name:>8} tier-2 latency γ={r['rows'][0]['gamma']:g} / "
                f"γ={r['rows'][-1]['gamma']:g}: {r['tier2_wide_per_narrow']:.2f}; "
                f"cache hit served after {1e3 * r['cache_hit_ready_s']:.1f} ms",
                flush=True,
            )
            results.append(r)
    meta = {"threads": 1, "batch": 1, "warm": args.warm}
    print("saved", save("tier2", meta | {"models": results}))


if __name__ == "__main__":
    main()
