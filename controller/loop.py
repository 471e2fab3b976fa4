"""The control loop: every interval, read → decide → tell the server; it never dies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from controller.policy import Decision, OperatorPolicy, Policy, PolicyState, Profile
from controller.readings import Readings

log = logging.getLogger("lcs.controller")


class Controller:
    """Runs `policy` on fresh readings every `interval_s` in an asyncio task.

    `on_level(alpha, reason)` is called on the event loop when the decision moves; it must
    not block (the server hands the recompression to its own thread). A crashing iteration
    is logged, counted (`restarts`, `on_crash`) and the loop goes on after a short back-off.
    """

    def __init__(
        self,
        *,
        read: Callable[[], Readings],
        policy: Policy,
        profile: Profile,
        on_level: Callable[[float, str], None],
        interval_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        current_alpha: Callable[[], float] | None = None,
        on_crash: Callable[[], None] | None = None,
        on_readings: Callable[[Readings, Decision], None] | None = None,
    ) -> None:
        self.read, self.policy, self.profile = read, policy, profile
        self.on_level, self.interval_s, self.clock = on_level, interval_s, clock
        self.current_alpha, self.on_crash, self.on_readings = current_alpha, on_crash, on_readings
        start = current_alpha() if current_alpha else profile.alphas[-1]
        self.state = PolicyState(start, clock())
        self._operator = OperatorPolicy()
        self.latest_readings: Readings | None = None
        self.latest_decision: Decision | None = None
        self.restarts = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def operator_policy(self) -> OperatorPolicy:
        return self._operator

    @operator_policy.setter
    def operator_policy(self, policy: OperatorPolicy) -> None:
        self._operator = policy
        self._wake.set()  # evaluate at once, not at the next tick

    def step(self) -> Decision:
        """One iteration; synchronous and cheap (procfs reads, arithmetic)."""
        now = self.clock()
        if self.current_alpha is not None:
            actual = self.current_alpha()
            if abs(actual - self.state.alpha) > 1e-9:  # an operator moved it meanwhile
                self.state = PolicyState(actual, now)
        readings = self.read()
        decision = self.policy(readings, self._operator, self.profile, self.state, now)
        self.latest_readings, self.latest_decision = readings, decision
        if self.on_readings is not None:
            self.on_readings(readings, decision)
        if abs(decision.alpha - self.state.alpha) > 1e-9:
            self.state = PolicyState(decision.alpha, now)
            self.on_level(decision.alpha, decision.reason)
        return decision

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="lcs-controller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                self.step()
                delay = self.interval_s
            except Exception:
                self.restarts += 1
                log.exception("controller iteration failed; restarting")
                if self.on_crash is not None:
                    self.on_crash()
                delay = min(5.0, self.interval_s * 2 ** min(self.restarts, 4))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
