"""Policies: pure functions from the machine's readings and each model's operator policy, level
profile and traffic to one level α per model."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from controller.readings import ModelFeedback, Readings


@dataclass(frozen=True)
class OperatorPolicy:
    mode: str = "auto"  # "auto" | "fixed"
    alpha: float | None = None  # for fixed
    min_alpha: float | None = None
    max_alpha: float | None = None
    latency_target_s: float = 0.05
    latency_quantile: float = 0.95
    objective: str = "share"  # "share": a good neighbour's CPU share | "latency": the target only
    priority: float = 1.0  # weight of this model in the joint allocation


@dataclass(frozen=True)
class LevelPoint:
    alpha: float
    gamma: float
    latency_s: float  # one forward pass at batch 1 on this machine
    accuracy: float | None = None


@dataclass(frozen=True)
class Profile:
    """Forward latency per level. `measured(α)`, when it has a figure, overrides the profiled
    one: a level the server now runs on a faster path (an ONNX Runtime session, when cached)
    is predicted at that speed, not at the speed it was profiled."""

    points: tuple[LevelPoint, ...]
    measured: Callable[[float], float | None] | None = None

    def __init__(
        self,
        points: Sequence[LevelPoint],
        measured: Callable[[float], float | None] | None = None,
    ) -> None:
        if not points:
            raise ValueError("a profile needs at least one level")
        object.__setattr__(self, "points", tuple(sorted(points, key=lambda p: p.alpha)))
        object.__setattr__(self, "measured", measured)

    def latency(self, p: LevelPoint) -> float:
        now = None if self.measured is None else self.measured(p.alpha)
        return p.latency_s if now is None else now

    @property
    def alphas(self) -> list[float]:
        return [p.alpha for p in self.points]

    def expected_latency(self, alpha: float) -> float:
        """Forward latency at α, linearly interpolated between measured levels."""
        a, pts = self.alphas, self.points
        i = bisect.bisect_left(a, alpha)
        if i <= 0:
            return self.latency(pts[0])
        if i >= len(a):
            return self.latency(pts[-1])
        lo, hi = pts[i - 1], pts[i]
        t = (alpha - lo.alpha) / (hi.alpha - lo.alpha)
        return self.latency(lo) + t * (self.latency(hi) - self.latency(lo))

    def nearest(self, alpha: float) -> float:
        return min(self.alphas, key=lambda a: abs(a - alpha))


@dataclass(frozen=True)
class PolicyState:
    alpha: float  # the level the server serves now (read from it every step)
    changed_at: float  # monotonic seconds when it last really moved


@dataclass(frozen=True)
class Decision:
    alpha: float
    reason: str


@dataclass(frozen=True)
class PlantView:
    """What a policy sees of one model: its operator policy, profile, traffic and level."""

    operator: OperatorPolicy
    profile: Profile
    feedback: ModelFeedback
    state: PolicyState


@dataclass(frozen=True)
class Tuning:
    """Stability and resource thresholds of the default policy."""

    up_margin: float = 0.7  # move toward accuracy only if predicted ≤ 70 % of the target
    dwell_up_s: float = 3.0  # minimum time at a level before moving toward accuracy
    dwell_down_s: float = 0.5  # minimum time between moves toward compression
    battery_low: float = 20.0  # % while discharging: cap at the middle of the range
    battery_critical: float = 10.0  # %: cap at the most compressed level
    memory_low_fraction: float = 0.10
    memory_pressure_high: float = 0.20  # PSI memory some avg10
    cpu_busy: float = 0.85  # used by cpu_linear


# A policy decides every model at once (they share one machine): readings, plants by name, now.
Policy = Callable[[Readings, Mapping[str, PlantView], float], dict[str, Decision]]
PlantPolicy = Callable[[Readings, PlantView, float], Decision]
POLICIES: dict[str, Policy] = {}


def register(name: str) -> Callable[[Policy], Policy]:
    def deco(fn: Policy) -> Policy:
        POLICIES[name] = fn
        return fn

    return deco


def each(fn: PlantPolicy) -> Policy:
    """A policy that decides every model on its own, by `fn`."""

    def policy(r: Readings, plants: Mapping[str, PlantView], now: float) -> dict[str, Decision]:
        return {name: fn(r, p, now) for name, p in plants.items()}

    policy.__doc__ = fn.__doc__
    return policy


def get_policy(name: str) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown controller policy {name!r}; choose one of {sorted(POLICIES)}")
    return POLICIES[name]


def allowed(op: OperatorPolicy, profile: Profile) -> list[float]:
    """Profile levels inside the operator's bounds (the nearest one if none is inside)."""
    lo = op.min_alpha if op.min_alpha is not None else -1.0
    hi = op.max_alpha if op.max_alpha is not None else 2.0
    inside = [a for a in profile.alphas if lo - 1e-9 <= a <= hi + 1e-9]
    return inside or [profile.nearest(min(max(profile.alphas[0], lo), hi))]


def resource_cap(
    r: Readings, levels: list[float], t: Tuning, current: float
) -> tuple[float, str] | None:
    """The highest α the battery and memory allow, and why; None when they allow everything."""
    caps: list[tuple[float, str]] = []
    if r.on_battery and r.battery_percent is not None:
        if r.battery_percent <= t.battery_critical:
            caps.append((levels[0], "battery_low"))
        elif r.battery_percent <= t.battery_low:
            caps.append((levels[(len(levels) - 1) // 2], "battery_low"))
    mem = r.memory_available_fraction
    if (mem is not None and mem < t.memory_low_fraction) or (
        r.memory_pressure is not None and r.memory_pressure > t.memory_pressure_high
    ):
        below = [a for a in levels if a < current - 1e-9]
        caps.append((below[-1] if below else levels[0], "memory_pressure"))
    return min(caps) if caps else None


def cpu_slowdown(r: Readings) -> float:
    """How much slower a forward pass runs than when profiled, from CPU pressure alone."""
    stall = max(r.cpu_pressure or 0.0, 0.0)
    return 1.0 / max(0.05, 1.0 - min(stall, 0.95))


def predicted_latency(r: Readings, p: PlantView, alpha: float) -> tuple[float, str]:
    """Latency at α under the present contention, and which signal predicted it.

    With recent request latencies, the observed quantile is scaled by the ratio of forward
    costs (it already includes the contention and the server's own overheads); without them,
    the profiled forward latency is scaled by the CPU-pressure slowdown."""
    profile, current = p.profile, p.state.alpha
    by_cpu = profile.expected_latency(alpha) * cpu_slowdown(r)
    observed = p.feedback.latency_quantile(p.operator.latency_quantile)
    if observed is None:
        return by_cpu, "cpu"
    scaled = observed * profile.expected_latency(alpha) / profile.expected_latency(current)
    return (scaled, "latency") if scaled >= by_cpu else (by_cpu, "cpu")


def latency_one(r: Readings, p: PlantView, now: float, t: Tuning = Tuning()) -> Decision:
    """The most accurate level whose predicted latency meets the target, within the bounds,
    capped on low battery and under memory pressure; hysteresis and dwell keep it steady."""
    op, state = p.operator, p.state
    if op.mode == "fixed" and op.alpha is not None:
        return Decision(op.alpha, "operator_fixed")
    levels = allowed(op, p.profile)
    current = state.alpha
    if current < levels[0] - 1e-9 or current > levels[-1] + 1e-9:
        return Decision(p.profile.nearest(min(max(current, levels[0]), levels[-1])), "bounds")
    cap = resource_cap(r, levels, t, current)
    fits = [
        a
        for a in levels
        if predicted_latency(r, p, a)[0]
        <= op.latency_target_s * (1.0 if a <= current + 1e-9 else t.up_margin)
    ]
    best = fits[-1] if fits else levels[0]
    reason = "recovered" if best > current else predicted_latency(r, p, current)[1]
    if cap is not None and best > cap[0]:
        best, reason = cap
    since = now - state.changed_at
    if best > current + 1e-9 and since < t.dwell_up_s:
        return Decision(current, "hold")
    if best < current - 1e-9 and since < t.dwell_down_s:
        return Decision(current, "hold")
    if abs(best - current) <= 1e-9:
        return Decision(current, "hold")
    return Decision(best, reason)


latency_headroom = register("latency_headroom")(each(latency_one))


@register("static")
@each
def static(r: Readings, p: PlantView, now: float) -> Decision:
    """Always the most accurate level the operator allows."""
    op = p.operator
    if op.mode == "fixed" and op.alpha is not None:
        return Decision(op.alpha, "operator_fixed")
    best = allowed(op, p.profile)[-1]
    return Decision(best, "hold" if best == p.state.alpha else "bounds")


def cpu_linear_one(r: Readings, p: PlantView, now: float, t: Tuning = Tuning()) -> Decision:
    """α falls linearly with CPU utilisation: idle → most accurate, busy → most compressed."""
    op, state = p.operator, p.state
    if op.mode == "fixed" and op.alpha is not None:
        return Decision(op.alpha, "operator_fixed")
    levels = allowed(op, p.profile)
    if r.cpu_utilisation is None:
        return Decision(state.alpha, "hold")
    share = 1.0 - min(r.cpu_utilisation / t.cpu_busy, 1.0)
    best = levels[round(share * (len(levels) - 1))]
    if best == state.alpha or now - state.changed_at < t.dwell_down_s:
        return Decision(state.alpha, "hold")
    return Decision(best, "cpu")


cpu_linear = register("cpu_linear")(each(cpu_linear_one))

__all__ = [
    "POLICIES",
    "Decision",
    "LevelPoint",
    "OperatorPolicy",
    "PlantView",
    "Policy",
    "PolicyState",
    "Profile",
    "Tuning",
    "each",
    "get_policy",
]
