"""The int8 ladder: tier 2's sessions of each width in fp32 and int8 (QDQ and QOperator), batch 1.

Latency and MACs per (width, precision) point on the ResNet18 shape (random weights, 224×224;
calibrated on random images) and on the trained digit models, whose held-out accuracy per
point is measured on the split the daemon's gate uses. Sessions are built as tier 2 builds
them (server.tier2.prepare; server.int8.quantize_and_check, which the daemon runs in its
export process) and timed interleaved, so the ratios hold on a loaded machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import interleaved, ratio, save
from models import LevelCompressor, checkpoint
from models.profile import count_macs
from server.int8 import DISABLED_OPTIMIZERS, FORMATS, Calibration, quantize_and_check
from server.tier2 import Prepared, export, open_session, verified, warmup_batch
from tests.helpers import make_checkpoint

TOLERANCE = 1e-3
MODELS = {
    "default": None,  # the bundled digit CNN
    "cpreresnet20": Path(__file__).parent.parent / "models/weights/digits_cpreresnet20.safetensors",
    "resnet18": "random",
}


def calibration(meta: checkpoint.Metadata, calibrate: int, check: int) -> Calibration:
    """The daemon's own choice for a trained model (its held-out split); random images in
    input space for the random ResNet18, which has no dataset."""
    common = {"mean": tuple(meta.mean), "std": tuple(meta.std), "calibrate": calibrate}
    if meta.dataset == "random":
        gen = torch.Generator().manual_seed(1)
        images = torch.randn(check, *meta.input_size, generator=gen).numpy()
        return Calibration(images=images, check=check, **common)  # type: ignore[arg-type]
    return Calibration(dataset=meta.dataset, check=check, **common)  # type: ignore[arg-type]


def measure(name: str, path: Path | None, args: argparse.Namespace) -> dict[str, Any]:
    net, meta, _ = checkpoint.load(path)
    levels = LevelCompressor(net)
    size = tuple(meta.input_size)
    r18 = meta.dataset == "random"
    cal = calibration(meta, 16 if r18 else 256, 32 if r18 else 2000)
    x = torch.randn(1, *size, generator=torch.Generator().manual_seed(0))
    rows: list[dict[str, Any]] = []
    sessions: dict[tuple[float, str], Prepared] = {}
    for gamma in args.widths:
        level = levels(meta.spec.calc.alpha(gamma))
        xw = warmup_batch(size)  # type: ignore[arg-type]
        model, reference = export(net, level, xw)  # exactly as tier 2 prepares a width
        fp32 = verified(level, open_session(model, 1), model, xw, reference, TOLERANCE)
        variants: dict[str, Prepared] = {"fp32": fp32}
        gates = {}
        for fmt in FORMATS:
            t0 = time.perf_counter()
            q, gate = quantize_and_check(net, level, model, cal, fmt)
            quantize_s = time.perf_counter() - t0
            session = open_session(q, 1, disabled=DISABLED_OPTIMIZERS)  # as tier 2 opens it
            p = Prepared(level.alpha, level.gamma, level.family, session, len(q))
            variants[fmt] = p
            gates[fmt] = (gate, quantize_s, len(q))
        t = interleaved({k: (lambda p=p: p.run(x)) for k, p in variants.items()}, args.repeats, 2)
        times = t.pop("_times")
        macs = count_macs(net, level, size)
        for k, p in variants.items():
            row: dict[str, Any] = {
                "gamma": level.gamma,
                "alpha": level.alpha,
                "precision": "fp32" if k == "fp32" else "int8",
                "format": None if k == "fp32" else k,
                "latency_ms": t[k]["median_ms"],
                "fp32_per_this": ratio(times, "fp32", k),
                "mmacs": macs / 1e6,
                "onnx_bytes": p.nbytes,
            }
            if k != "fp32":
                gate, quantize_s, _ = gates[k]
                row |= {
                    "agreement": gate.agreement,
                    "accuracy": gate.accuracy,
                    "fp32_accuracy": gate.fp32_accuracy,
                    "accuracy_loss_points": None
                    if gate.accuracy is None or gate.fp32_accuracy is None
                    else 100 * (gate.fp32_accuracy - gate.accuracy),
                    "quantize_s": quantize_s,
                    "images": gate.images,
                }
            else:
                row["accuracy"] = next(iter(gates.values()))[0].fp32_accuracy
            rows.append(row)
            sessions[(level.gamma, k)] = p
            print(
                f"{name:>12} γ={level.gamma:<5g} {k:>9} {row['latency_ms']:8.3f} ms "
                f"fp32/this {row['fp32_per_this']:5.2f} acc {row.get('accuracy')} "
                f"agree {row.get('agreement', '-')}",
                flush=True,
            )
    result: dict[str, Any] = {"model": name, "arch": meta.arch, "rows": rows}
    # The headline: full-width fp32 against the narrowest width's int8 points and its fp32,
    # all cached tier-2 sessions, timed alternately round by round.
    wide, narrow = max(args.widths), min(args.widths)
    head = {"wide_fp32": sessions[(wide, "fp32")], "narrow_fp32": sessions[(narrow, "fp32")]}
    head |= {f"narrow_{f}": sessions[(narrow, f)] for f in FORMATS}
    t = interleaved({k: (lambda p=p: p.run(x)) for k, p in head.items()}, args.repeats, 2)
    times = t.pop("_times")
    result["speedup_vs_full_fp32"] = {k: ratio(times, "wide_fp32", k) for k in head if k[0] == "n"}
    # The same in thread CPU time: a one-thread session runs on the calling thread, so other
    # work on the machine does not count (wall time does, by preemption).
    cpu = cpu_times(head, x, args.repeats)
    result["cpu_ms"] = {k: statistics.median(v) for k, v in cpu.items()}
    result["speedup_vs_full_fp32_cpu"] = {
        k: ratio(cpu, "wide_fp32", k) for k in head if k[0] == "n"
    }
    print(f"{name:>12} full fp32 / narrow, wall: {result['speedup_vs_full_fp32']}", flush=True)
    print(f"{name:>12} full fp32 / narrow, CPU: {result['speedup_vs_full_fp32_cpu']}", flush=True)
    return result


def cpu_times(
    sessions: dict[str, Prepared], x: torch.Tensor, repeats: int
) -> dict[str, list[float]]:
    """Thread CPU milliseconds of one run per session, round by round (two untimed first)."""
    out: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(repeats):
        for k, p in sessions.items():
            p.run(x)
            p.run(x)
            t0 = time.thread_time()
            p.run(x)
            out[k].append(1e3 * (time.thread_time() - t0))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--widths", nargs="+", type=float, default=[1.0, 0.5, 0.25])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--loaded", action="store_true", help="record that other work shared the CPU")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            where = MODELS[name]
            if where == "random":
                where = make_checkpoint(Path(tmp) / "r18.safetensors", "resnet18")
            results.append(measure(name, where, args))  # type: ignore[arg-type]
    meta = {"threads": 1, "batch": 1, "warm": 2, "loaded": args.loaded}
    print("saved", save("int8", meta | {"models": results}))


if __name__ == "__main__":
    main()
