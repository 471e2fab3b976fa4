"""`lcs controller`: live readings and the level a policy would choose for one idle model, no
server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from pathlib import Path

from controller.loop import Controller, Plant
from controller.policy import POLICIES, LevelPoint, OperatorPolicy, Profile
from controller.readings import ModelFeedback, Readings
from controller.sensors import SystemReader


def synthetic_profile() -> Profile:
    """Seven levels with forward latency from 0.25 ms (α = 0) to 1 ms (α = 1)."""
    return Profile([LevelPoint(i / 6, i / 6, (0.25 + 0.75 * i / 6) / 1e3) for i in range(7)])


def load_profile(path: str) -> Profile:
    """A JSON list of {alpha, gamma, latency_ms, accuracy} (the `profile` of GET /level)."""
    rows = json.loads(Path(path).read_text())
    rows = rows.get("profile", rows) if isinstance(rows, dict) else rows
    return Profile(
        [LevelPoint(r["alpha"], r["gamma"], r["latency_ms"] / 1e3, r.get("accuracy")) for r in rows]
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interval", type=float, default=1.0, help="seconds between readings")
    p.add_argument("--count", type=int, default=0, help="stop after N readings (0: until ^C)")
    p.add_argument("--policy", default="latency_headroom", choices=sorted(POLICIES))
    p.add_argument("--profile", help="JSON profile (e.g. saved from GET /level)")
    p.add_argument("--latency-target-ms", type=float, default=50.0)


def line(r: Readings, alpha: float, reason: str) -> str:
    def f(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    mem = r.memory_available_fraction
    return (
        f"cpu {f(r.cpu_utilisation, '.0%'):>5} psi {f(r.cpu_pressure, '.0%'):>4} "
        f"other {f(r.other_cpu_cores, '.2f'):>4} own {f(r.own_cpu_cores, '.2f'):>4} "
        f"free {f(r.cpu_free_cores, '.2f'):>4} "
        f"load {f(r.load_average_1m, '.2f'):>5} mem free {f(mem, '.0%'):>4} "
        f"psi {f(r.memory_pressure, '.0%'):>4} battery {f(r.battery_percent, '.0f'):>4} "
        f"cpu limit {f(r.cgroup_cpu_limit_cores, '.2f'):>5} → α {alpha:.3f} ({reason})"
    )


async def watch(args: argparse.Namespace) -> None:
    """One synthetic plant whose level follows the controller at once."""
    profile = load_profile(args.profile) if args.profile else synthetic_profile()
    alpha = {"value": profile.alphas[-1]}
    operator = OperatorPolicy(latency_target_s=args.latency_target_ms / 1e3)

    def moved(a: float, reason: str) -> None:
        alpha["value"] = a

    ctl = Controller(read=SystemReader().read, policy=args.policy, interval_s=args.interval)
    ctl.add(
        Plant(
            name="synthetic",
            profile=profile,
            current_alpha=lambda: alpha["value"],
            operator=lambda: operator,
            feedback=ModelFeedback,
            on_level=moved,
        )
    )
    n = 0
    while args.count == 0 or n < args.count:
        d = ctl.step()["synthetic"]
        assert ctl.latest_readings is not None
        print(line(ctl.latest_readings, alpha["value"], d.reason), flush=True)
        n += 1
        await asyncio.sleep(args.interval)


def main(args: argparse.Namespace) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(watch(args))
    return 0
