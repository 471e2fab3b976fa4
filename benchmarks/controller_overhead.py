"""CPU cost of the controller steering three models: process CPU time / wall time, alone."""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import time

from benchmarks.common import save
from controller.loop import Controller, Plant
from controller.policy import OperatorPolicy
from controller.readings import ModelFeedback
from controller.sensors import SystemReader
from controller.watch import synthetic_profile

MODELS = 3


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def plant(name: str) -> Plant:
    """A model with steady traffic whose served level follows the controller's decisions."""
    alpha = {"now": 1.0}
    feedback = ModelFeedback(0.001, 0.002, 0.003, 0.0008, 0.0005, 100.0, 0)
    return Plant(
        name=name,
        profile=synthetic_profile(),
        current_alpha=lambda: alpha["now"],
        operator=OperatorPolicy,
        feedback=lambda: feedback,
        on_level=lambda a, r: alpha.update(now=a),
    )


async def run(seconds: float, interval: float) -> dict[str, float]:
    reader = SystemReader()
    ctl = Controller(read=reader.read, interval_s=interval)
    for i in range(MODELS):
        ctl.add(plant(f"model{i}"))
    steps = []
    for _ in range(200):  # the cost of one iteration, in isolation
        t0 = time.perf_counter()
        ctl.step()
        steps.append(time.perf_counter() - t0)
    c0, w0 = cpu_seconds(), time.monotonic()
    ctl.start()
    await asyncio.sleep(seconds)
    await ctl.stop()
    cpu, wall = cpu_seconds() - c0, time.monotonic() - w0
    return {
        "models": MODELS,
        "interval_s": interval,
        "wall_s": wall,
        "cpu_s": cpu,
        "core_share": cpu / wall,
        "step_median_ms": 1e3 * statistics.median(steps),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--interval", type=float, default=0.25)
    args = p.parse_args(argv)
    r = asyncio.run(run(args.seconds, args.interval))
    print(
        f"controller, {MODELS} models, at {r['interval_s']} s: "
        f"one iteration {r['step_median_ms']:.3f} ms; "
        f"{r['cpu_s']:.3f} s CPU in {r['wall_s']:.1f} s = {100 * r['core_share']:.2f} % of a core"
    )
    save("controller_overhead", r)


if __name__ == "__main__":
    main()
