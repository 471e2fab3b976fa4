"""The control loop: every interval, one read → one decision per model → tell the server; it
never dies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from controller.policy import (
    Decision,
    OperatorPolicy,
    PlantView,
    Policy,
    PolicyState,
    Profile,
    get_policy,
    predicted_latency,
)
from controller.readings import ModelFeedback, Readings

log = logging.getLogger("lcs.controller")
_EPS = 1e-9


@dataclass
class Plant:
    """One model the controller steers. Every callable is read each step, on the event loop."""

    name: str
    profile: Profile | Callable[[], Profile]  # a callable: points join it while serving
    current_alpha: Callable[[], float]  # the level the server ACTUALLY serves: the truth
    operator: Callable[[], OperatorPolicy]  # the operator's policy for this model
    feedback: Callable[[], ModelFeedback]
    on_level: Callable[[float, str], None]  # called on the event loop; must not block
    # Precision as part of a point: what the server serves the level in, and how to move to
    # a point (α, precision, reason); without `on_point` only α is steered.
    current_precision: Callable[[], str] = lambda: "fp32"
    on_point: Callable[[float, str, str], None] | None = None

    def points(self) -> Profile:
        return self.profile() if callable(self.profile) else self.profile


class Controller:
    """Runs `policy` on fresh readings every `interval_s` in an asyncio task, for every plant.

    The controller keeps no level of its own: each step the policy state's α is the plant's
    `current_alpha()`, and the dwell timer restarts only when that really moved (whoever
    moved it: the controller, an operator, a model replacement). `on_level(α, reason)` is
    called when a decision differs from the served level; while that switch is pending it is
    not repeated for `resend_s`. A crashing iteration is logged, counted (`restarts`,
    `on_crash`) and the loop goes on after a short back-off; a plant whose callables raise is
    skipped for that step (`plant_errors`, `on_crash`) and the others are still decided.
    """

    def __init__(
        self,
        *,
        read: Callable[[], Readings],
        policy: str | Policy = "latency_headroom",
        interval_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        on_crash: Callable[[], None] | None = None,
        on_readings: Callable[[Readings, dict[str, Decision]], None] | None = None,
        resend_s: float = 2.0,
    ) -> None:
        self.read, self.interval_s, self.clock = read, interval_s, clock
        self.policy = get_policy(policy) if isinstance(policy, str) else policy
        self.on_crash, self.on_readings, self.resend_s = on_crash, on_readings, resend_s
        self.latest_readings: Readings | None = None
        self.latest_decisions: dict[str, Decision] = {}
        self.restarts = 0
        self.plant_errors: dict[str, int] = {}  # per plant: steps its callables raised in
        self._plants: dict[str, Plant] = {}
        self._states: dict[str, PolicyState] = {}  # last served α seen, and when it moved
        self._asked: dict[str, tuple[float, float, str]] = {}  # pending: α, when, precision
        self._views: dict[str, PlantView] = {}  # what the policy saw last step
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, plant: Plant) -> None:
        """Steer `plant`; one of the same name (a model replaced at run time) is replaced."""
        self.remove(plant.name)
        self._plants[plant.name] = plant
        self.wake()

    def remove(self, name: str) -> None:
        self._plants.pop(name, None)
        self._states.pop(name, None)
        self._asked.pop(name, None)
        self._views.pop(name, None)
        self.latest_decisions.pop(name, None)

    @property
    def plants(self) -> dict[str, Plant]:
        return dict(self._plants)

    @property
    def states(self) -> dict[str, PolicyState]:
        """Per plant: the served α the last step read, and since when it has been there."""
        return dict(self._states)

    def wake(self) -> None:
        """Evaluate at once, not at the next tick (an operator changed a policy)."""
        self._wake.set()

    def step(self) -> dict[str, Decision]:
        """One iteration: one read() for all plants, then one decision per plant. Synchronous
        and cheap (procfs reads, arithmetic)."""
        now = self.clock()
        readings = self.read()
        plants = dict(self._plants)
        views: dict[str, PlantView] = {}
        for name, p in plants.items():
            try:
                state = self._observe(name, p.current_alpha(), now, p.current_precision())
                views[name] = PlantView(p.operator(), p.points(), p.feedback(), state)
            except Exception:  # one model's trouble (being unloaded?) must not stop the rest
                self._plant_failed(name)
        self._views = views
        decisions = self.policy(readings, views, now)
        for name, d in decisions.items():
            plant = plants.get(name)
            if plant is None:
                continue
            state = self._states[name]
            precision = d.precision if plant.on_point is not None else state.precision
            if abs(d.alpha - state.alpha) <= _EPS and precision == state.precision:
                continue
            asked = self._asked.get(name)
            if (
                asked is None
                or abs(asked[0] - d.alpha) > _EPS
                or asked[2] != precision
                or now - asked[1] >= self.resend_s
            ):
                self._asked[name] = (d.alpha, now, precision)
                try:
                    if plant.on_point is not None:
                        plant.on_point(d.alpha, precision, d.reason)
                    else:
                        plant.on_level(d.alpha, d.reason)
                    # switched at once?
                    self._observe(name, plant.current_alpha(), now, plant.current_precision())
                except Exception:
                    self._plant_failed(name)
        self.latest_readings, self.latest_decisions = readings, decisions
        if self.on_readings is not None:
            self.on_readings(readings, decisions)
        return decisions

    def predicted_latency(self, name: str, alpha: float) -> float | None:
        """The latency a request to `name` served at α would see now, by the policy's model
        (overhead + forward at α × contention), from the last step's readings and feedback;
        for per-request latency hints. None before the first step or for an unknown name."""
        view, r = self._views.get(name), self.latest_readings
        return None if view is None or r is None else predicted_latency(r, view, alpha)

    def _plant_failed(self, name: str) -> None:
        self.plant_errors[name] = self.plant_errors.get(name, 0) + 1
        if self.plant_errors[name] == 1:  # once per plant, not four times a second
            log.exception("controller: model %s failed; skipped while it fails", name)
        if self.on_crash is not None:
            self.on_crash()

    def _observe(self, name: str, alpha: float, now: float, precision: str = "fp32") -> PolicyState:
        """The served point is the truth; the dwell clock restarts only when it really moved."""
        state = self._states.get(name)
        if state is None or abs(state.alpha - alpha) > _EPS or state.precision != precision:
            state = PolicyState(alpha, now, precision)
            self._states[name] = state
            self._asked.pop(name, None)  # it moved: whatever was pending is settled
        return state

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="lcs-controller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            self._wake.clear()  # before the step: a wake() during it is not lost
            try:
                self.step()
                delay = self.interval_s
            except Exception:
                self.restarts += 1
                log.exception("controller iteration failed; restarting")
                if self.on_crash is not None:
                    self.on_crash()
                delay = min(5.0, self.interval_s * 2 ** min(self.restarts, 4))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
