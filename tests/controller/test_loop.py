"""The control loop: decisions reach the server, crashes are survived, stop is prompt."""

from __future__ import annotations

import asyncio
import time

from controller.loop import Controller
from controller.policy import Decision, LevelPoint, OperatorPolicy, Profile, latency_headroom
from controller.readings import Readings

PROFILE = Profile([LevelPoint(a, a, 0.001 + a / 100) for a in (0.0, 0.5, 1.0)])


def run(coro):
    return asyncio.run(coro)


def test_decisions_reach_on_level_and_operator_policy_applies_at_once():
    async def main():
        moves: list[tuple[float, str]] = []
        pressure = {"p95": None}

        def read():
            return Readings(time=0.0, latency_p95_s=pressure["p95"])

        ctl = Controller(
            read=read,
            policy=latency_headroom,
            profile=PROFILE,
            on_level=lambda a, r: moves.append((a, r)),
            interval_s=0.02,
            clock=time.monotonic,
        )
        ctl.operator_policy = OperatorPolicy(latency_target_s=0.020)  # idle: α = 1 fits
        ctl.start()
        await asyncio.sleep(0.6)  # past the down-dwell
        pressure["p95"] = 1.0
        await asyncio.sleep(0.2)
        ctl.operator_policy = OperatorPolicy(mode="fixed", alpha=0.5)
        await asyncio.sleep(0.05)
        await ctl.stop()
        return moves

    moves = run(main())
    assert moves[0] == (0.0, "latency") and moves[-1] == (0.5, "operator_fixed")


def test_crashing_iterations_are_counted_and_the_loop_goes_on():
    async def main():
        calls = {"n": 0}
        crashes: list[int] = []

        def read():
            calls["n"] += 1
            if calls["n"] <= 2:
                raise RuntimeError("sensor exploded")
            return Readings(time=0.0)

        ctl = Controller(
            read=read,
            policy=lambda *a: Decision(1.0, "hold"),
            profile=PROFILE,
            on_level=lambda a, r: None,
            interval_s=0.01,
            on_crash=lambda: crashes.append(1),
        )
        ctl.start()
        await asyncio.sleep(0.4)
        t0 = time.monotonic()
        await ctl.stop()
        return ctl, calls["n"], len(crashes), time.monotonic() - t0

    ctl, calls, crashes, stop_s = run(main())
    assert ctl.restarts == 2 and crashes == 2 and calls > 3
    assert ctl.latest_decision == Decision(1.0, "hold")
    assert stop_s < 0.5


def test_follows_levels_set_elsewhere():
    actual = {"alpha": 1.0}
    ctl = Controller(
        read=lambda: Readings(time=0.0),
        policy=lambda r, op, p, s, now: Decision(s.alpha, "hold"),
        profile=PROFILE,
        on_level=lambda a, r: None,
        current_alpha=lambda: actual["alpha"],
    )
    actual["alpha"] = 0.5  # an operator's fixed level
    ctl.step()
    assert ctl.state.alpha == 0.5
