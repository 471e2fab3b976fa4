"""The control loop: the served level is the truth, decisions reach each plant, crashes are
survived, stop is prompt."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from controller.loop import Controller, Plant
from controller.policy import (
    Decision,
    LevelPoint,
    OperatorPolicy,
    Profile,
    Tuning,
    get_policy,
)
from controller.readings import ModelFeedback, Readings

PROFILE = Profile([LevelPoint(a, a, 0.001 + a / 100) for a in (0.0, 0.25, 0.5, 0.75, 1.0)])
DWELL_UP = Tuning().dwell_up_s


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class Server:
    """One model's level state as the server keeps it: the operator's policy and the level it
    serves. `lag` steps of delay before a requested switch lands (recompression runs off the
    loop); operator moves land at once."""

    def __init__(self, alpha: float, lag: int = 0) -> None:
        self.alpha, self.lag = alpha, lag
        self.policy = OperatorPolicy()
        self.feedback = ModelFeedback()
        self.pending: list[tuple[int, float]] = []
        self.asked: list[tuple[float, str]] = []

    def on_level(self, alpha: float, reason: str) -> None:
        self.asked.append((alpha, reason))
        if self.policy.mode == "fixed":
            return  # the operator's level wins, as the server does
        if self.lag == 0:
            self.alpha = alpha
        else:
            self.pending.append((self.lag, alpha))

    def tick(self) -> None:
        due = [a for n, a in self.pending if n <= 1]
        self.pending = [(n - 1, a) for n, a in self.pending if n > 1]
        if due:
            self.alpha = due[-1]

    def operate(self, policy: OperatorPolicy) -> None:
        """PUT /level: fixed moves now, bounds clamp now."""
        self.policy = policy
        if policy.mode == "fixed" and policy.alpha is not None:
            self.alpha = policy.alpha
        lo = policy.min_alpha if policy.min_alpha is not None else self.alpha
        hi = policy.max_alpha if policy.max_alpha is not None else self.alpha
        self.alpha = PROFILE.nearest(min(max(self.alpha, lo), hi))

    def plant(self, name: str = "m") -> Plant:
        return Plant(
            name=name,
            profile=PROFILE,
            current_alpha=lambda: self.alpha,
            operator=lambda: self.policy,
            feedback=lambda: self.feedback,
            on_level=self.on_level,
        )


def idle() -> Readings:
    return Readings(time=0.0)


def steps_until(ctl: Controller, clock: Clock, server: Server, alpha: float, limit: int) -> float:
    """Fake seconds until the server serves `alpha` (steps of 0.25 s), or inf."""
    start = clock.t
    for _ in range(limit):
        ctl.step()
        server.tick()
        if server.alpha == alpha:
            return clock.t - start
        clock.t += 0.25
    return float("inf")


@pytest.mark.parametrize("lag", [0, 3])
def test_a_server_started_below_the_top_returns_to_it_within_the_dwell(lag):
    """Issue 15's drift: the server starts at α = 0.5; the controller must see it there."""
    clock, server = Clock(), Server(0.5, lag=lag)
    ctl = Controller(read=idle, clock=clock)
    ctl.add(server.plant())
    ctl.step()
    assert ctl.states["m"].alpha == 0.5
    assert steps_until(ctl, clock, server, 1.0, 40) <= DWELL_UP + 0.25 * (lag + 1)
    # fixed → auto round trip: the operator pins 0.25, then gives control back
    server.operate(OperatorPolicy(mode="fixed", alpha=0.25))
    clock.t += 10
    ctl.step()
    assert server.alpha == 0.25 and ctl.states["m"].alpha == 0.25
    assert ctl.latest_decisions["m"].reason == "operator_fixed"
    server.operate(OperatorPolicy())
    assert steps_until(ctl, clock, server, 1.0, 40) <= DWELL_UP + 0.25 * (lag + 1)
    # a bounds change clamps the server at once, and lifting it lets the level rise again
    server.operate(OperatorPolicy(max_alpha=0.5))
    assert server.alpha == 0.5
    asked = len(server.asked)
    clock.t += 10
    ctl.step()
    assert ctl.states["m"].alpha == 0.5 and len(server.asked) == asked  # 0.5 is the top now
    server.operate(OperatorPolicy())
    assert steps_until(ctl, clock, server, 1.0, 40) <= DWELL_UP + 0.25 * (lag + 1)


def test_the_dwell_clock_restarts_only_when_the_served_level_really_moves():
    clock, server = Clock(), Server(1.0)
    ctl = Controller(read=idle, clock=clock)
    ctl.add(server.plant())
    ctl.step()
    assert ctl.states["m"].changed_at == 0.0
    clock.t = 5.0
    ctl.step()  # same level: the clock keeps running from 0
    assert ctl.states["m"].changed_at == 0.0
    server.alpha = 0.75  # a switch made elsewhere (a request's level, a replacement)
    clock.t = 6.0
    ctl.step()
    assert ctl.states["m"] == type(ctl.states["m"])(0.75, 6.0)


def test_randomized_operator_and_controller_moves_never_disagree():
    """Whatever the operator, the server and the policy do, the α the policy decides from is
    the α the server serves at that moment."""
    rng = random.Random(15)
    clock, server = Clock(), Server(0.5, lag=2)
    seen: list[tuple[float, float]] = []
    base = get_policy("latency_headroom")

    def policy(r, plants, now):
        seen.append((plants["m"].state.alpha, server.alpha))
        return base(r, plants, now)

    forward = {"s": None}  # the measured forward pass: None, fast, or far over the target

    def feedback() -> ModelFeedback:
        return ModelFeedback(overhead_s=0.001, forward_s=forward["s"], request_rate=10.0)

    ctl = Controller(read=idle, policy=policy, clock=clock)
    plant = server.plant()
    plant.feedback = feedback
    ctl.add(plant)
    moves = 0
    for _ in range(400):
        roll = rng.random()
        if roll < 0.05:
            server.operate(OperatorPolicy(mode="fixed", alpha=rng.choice(PROFILE.alphas)))
        elif roll < 0.10:
            lo = rng.choice(PROFILE.alphas)
            server.operate(OperatorPolicy(min_alpha=lo, max_alpha=rng.choice([lo, 1.0])))
        elif roll < 0.15:
            server.operate(OperatorPolicy())
        elif roll < 0.20:
            server.alpha = rng.choice(PROFILE.alphas)  # a switch the controller did not ask for
        elif roll < 0.30:
            forward["s"] = rng.choice([None, 0.001, 0.5])
        ctl.step()
        assert ctl.states["m"].alpha == server.alpha  # switches land later (lag), not during
        before = server.alpha
        server.tick()
        moves += server.alpha != before  # a switch the controller asked for landed
        clock.t += rng.choice([0.05, 0.25, 1.0])
    assert len(seen) == 400 and all(s == a for s, a in seen), "controller and server disagreed"
    assert moves > 10  # the controller did steer, not only watch


def test_several_plants_share_one_read_and_each_gets_its_decision():
    clock = Clock()
    reads = {"n": 0}

    def read() -> Readings:
        reads["n"] += 1
        return Readings(time=clock())

    servers = {name: Server(0.0) for name in ("a", "b", "c")}
    ctl = Controller(read=read, clock=clock)
    for name, s in servers.items():
        ctl.add(s.plant(name))
    servers["b"].operate(OperatorPolicy(mode="fixed", alpha=0.25))
    ctl.step()  # first sight of each level: the dwell clock starts
    clock.t = DWELL_UP + 1
    decisions = ctl.step()
    assert reads["n"] == 2 and set(decisions) == {"a", "b", "c"}
    assert servers["a"].alpha == servers["c"].alpha == 1.0 and servers["b"].alpha == 0.25
    assert decisions["b"] == Decision(0.25, "operator_fixed")
    ctl.remove("c")
    assert set(ctl.step()) == {"a", "b"}
    # a replaced model (same name, new level state) is followed from its own level
    replacement = Server(0.5)
    ctl.add(replacement.plant("a"))
    ctl.step()
    assert ctl.states["a"].alpha == 0.5 and ctl.plants["a"].current_alpha() == 0.5


def test_a_pending_switch_is_not_asked_again_every_step():
    clock, server = Clock(), Server(1.0, lag=1000)  # the switch never lands
    server.feedback = ModelFeedback(forward_s=1.0, request_rate=10.0)  # far over the target
    ctl = Controller(read=idle, clock=clock, resend_s=2.0)
    ctl.add(server.plant())
    ctl.step()  # first sight at t = 0: the down-dwell runs from here
    for _ in range(18):  # to 4.5 s in steps of 0.25 s
        clock.t += 0.25
        ctl.step()
    assert [a for a, _ in server.asked] == [0.0, 0.0]  # at 2 s (dwell), once more after resend_s


def run(coro):
    return asyncio.run(coro)


def test_the_task_steers_and_wake_applies_an_operator_change_at_once():
    async def main():
        server = Server(1.0)
        server.feedback = ModelFeedback()
        ctl = Controller(read=idle, interval_s=10.0)  # ticks too slow to matter: wake() must
        ctl.add(server.plant())
        ctl.start()
        await asyncio.sleep(0.05)
        server.policy = OperatorPolicy(mode="fixed", alpha=0.25)  # the server's own switch aside
        ctl.wake()
        for _ in range(100):
            await asyncio.sleep(0.01)
            if server.asked:
                break
        await ctl.stop()
        return server.asked

    assert run(main()) == [(0.25, "operator_fixed")]


def test_crashing_iterations_are_counted_and_the_loop_goes_on():
    async def main():
        calls = {"n": 0}
        crashes: list[int] = []
        observed: list[dict[str, Decision]] = []

        def read():
            calls["n"] += 1
            if calls["n"] <= 2:
                raise RuntimeError("sensor exploded")
            return Readings(time=0.0)

        ctl = Controller(
            read=read,
            policy=lambda r, plants, now: {n: Decision(1.0, "hold") for n in plants},
            interval_s=0.01,
            on_crash=lambda: crashes.append(1),
            on_readings=lambda r, d: observed.append(d),
        )
        ctl.add(Server(1.0).plant())
        ctl.start()
        await asyncio.sleep(0.4)
        t0 = time.monotonic()
        await ctl.stop()
        return ctl, calls["n"], len(crashes), time.monotonic() - t0, observed

    ctl, calls, crashes, stop_s, observed = run(main())
    assert ctl.restarts == 2 and crashes == 2 and calls > 3
    assert ctl.latest_decisions == {"m": Decision(1.0, "hold")} and observed[-1] == {
        "m": Decision(1.0, "hold")
    }
    assert stop_s < 0.5


def test_unknown_policy_name_is_refused():
    with pytest.raises(ValueError, match="latency_headroom"):
        Controller(read=idle, policy="nope")


def test_predicted_latency_for_request_hints():
    clock, server = Clock(), Server(1.0)
    server.feedback = ModelFeedback(overhead_s=0.002, forward_s=0.022)  # profile 11 ms at α = 1
    ctl = Controller(read=idle, clock=clock)
    ctl.add(server.plant())
    assert ctl.predicted_latency("m", 0.5) is None  # no step yet
    ctl.step()
    # overhead 2 ms + forward at α = 0.5 (6 ms profiled) × slowdown 2
    assert ctl.predicted_latency("m", 0.5) == pytest.approx(0.002 + 0.006 * 2)
    assert ctl.predicted_latency("nope", 0.5) is None


def test_a_failing_plant_is_skipped_and_the_others_are_still_steered():
    clock, good = Clock(), Server(0.0)
    crashes: list[int] = []
    ctl = Controller(read=idle, clock=clock, on_crash=lambda: crashes.append(1))
    ctl.add(good.plant("good"))
    bad = good.plant("bad")

    def gone() -> float:
        raise KeyError("model unloaded")

    bad.current_alpha = gone
    ctl.add(bad)
    ctl.step()
    clock.t = DWELL_UP
    decisions = ctl.step()
    assert set(decisions) == {"good"} and good.alpha == 1.0
    assert ctl.plant_errors == {"bad": 2} and len(crashes) == 2 and ctl.restarts == 0
