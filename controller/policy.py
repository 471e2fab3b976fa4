"""Policies: pure functions from the machine's readings and each model's operator policy, level
profile and traffic to one level α per model."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial

from controller.allocate import Option, allocate_points
from controller.readings import ModelFeedback, Readings


@dataclass(frozen=True)
class OperatorPolicy:
    """What the operator set for one model (PUT /level). Validates itself: a bad value raises
    ValueError naming it, for the server to turn into a 4xx."""

    mode: str = "auto"  # "auto" | "fixed"
    alpha: float | None = None  # for fixed
    min_alpha: float | None = None
    max_alpha: float | None = None
    latency_target_s: float = 0.05
    latency_quantile: float = 0.95
    objective: str = "share"  # "share": a good neighbour's CPU share | "latency": the target only
    priority: float = 1.0  # weight of this model in the joint allocation
    precision: str = "fp32"  # for fixed: the precision at that width (int8 once tier 2 has it)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {self.precision!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, not {self.objective!r}")
        if not (math.isfinite(self.priority) and self.priority >= 0):
            raise ValueError(f"priority must be a finite number ≥ 0, not {self.priority}")
        if not (math.isfinite(self.latency_target_s) and self.latency_target_s > 0):
            raise ValueError(f"latency_target_s must be > 0, not {self.latency_target_s}")
        if not 0 < self.latency_quantile < 1:
            raise ValueError(f"latency_quantile must be in (0, 1), not {self.latency_quantile}")
        lo, hi = self.min_alpha, self.max_alpha
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"min_alpha {lo} is above max_alpha {hi}")


MODES = ("auto", "fixed")
OBJECTIVES = ("share", "latency")


PRECISIONS = ("int8", "fp32")  # least to most accurate at one width


@dataclass(frozen=True)
class LevelPoint:
    """A point the server can serve: a level α at a precision ("fp32", or "int8" when the
    server's tier 2 holds a variant of that width its gate admitted)."""

    alpha: float
    gamma: float
    latency_s: float  # one forward pass at batch 1 on this machine
    accuracy: float | None = None
    precision: str = "fp32"


def rank(alpha: float, precision: str = "fp32") -> tuple[float, int]:
    """Points ordered from most compressed to most accurate: by α, then precision."""
    return (alpha, PRECISIONS.index(precision))


@dataclass(frozen=True)
class Profile:
    """Forward latency per level. `measured(α)`, when it has a figure, overrides the profiled
    one: a level the server now runs on a faster path (an ONNX Runtime session, when cached)
    is predicted at that speed, not at the speed it was profiled; a level it does not hold is
    predicted on tier 1, where it is served after a move. `build_s(α)` is what a move to α
    costs beyond serving it: the seconds of CPU its tier-2 session takes to build (0 when
    held, or never built; None when the server has not measured a build yet); no `build_s`:
    moves cost nothing (no tier 2)."""

    points: tuple[LevelPoint, ...]  # fp32: the levels every α-based rule works over
    measured: Callable[[float], float | None] | None = None
    build_s: Callable[[float], float | None] | None = None
    variants: tuple[LevelPoint, ...] = ()  # the other precisions, at some of those widths
    _alphas: tuple[float, ...] = field(default=(), init=False, repr=False, compare=False)
    has_accuracy: bool = field(default=False, init=False, repr=False, compare=False)

    def __init__(
        self,
        points: Sequence[LevelPoint],
        measured: Callable[[float], float | None] | None = None,
        build_s: Callable[[float], float | None] | None = None,
    ) -> None:
        fp32 = [p for p in points if p.precision == "fp32"]
        if not fp32:
            raise ValueError("a profile needs at least one fp32 level")
        pts = tuple(sorted(fp32, key=lambda p: p.alpha))
        others = sorted((p for p in points if p.precision != "fp32"), key=lambda p: p.alpha)
        object.__setattr__(self, "points", pts)
        object.__setattr__(self, "variants", tuple(others))
        object.__setattr__(self, "measured", measured)
        object.__setattr__(self, "build_s", build_s)
        # the controller's step reads these a few hundred times: computed once
        object.__setattr__(self, "_alphas", tuple(p.alpha for p in pts))
        object.__setattr__(self, "has_accuracy", all(p.accuracy is not None for p in pts))

    def latency(self, p: LevelPoint) -> float:
        if p.precision != "fp32":  # measured by tier 2 when it admitted the variant
            return p.latency_s
        now = None if self.measured is None else self.measured(p.alpha)
        return p.latency_s if now is None else now

    def point_latency(self, alpha: float, precision: str = "fp32") -> float:
        """Forward latency at the point (α, precision); fp32 when no such variant is held."""
        v = None if precision == "fp32" else self.variant(alpha, precision)
        return self.expected_latency(alpha) if v is None else self.latency(v)

    @property
    def alphas(self) -> list[float]:
        return list(self._alphas)

    def expected_latency(self, alpha: float) -> float:
        """Forward latency at α, linearly interpolated between measured levels."""
        a, pts = self._alphas, self.points
        i = bisect.bisect_left(a, alpha)
        if i >= len(a):
            return self.latency(pts[-1])
        if i == 0 or abs(a[i] - alpha) <= 1e-12:
            return self.latency(pts[i])
        lo, hi = pts[i - 1], pts[i]
        t = (alpha - lo.alpha) / (hi.alpha - lo.alpha)
        return self.latency(lo) + t * (self.latency(hi) - self.latency(lo))

    def point(self, alpha: float) -> LevelPoint:
        """The profiled level nearest to α."""
        a = self._alphas
        i = bisect.bisect_left(a, alpha)
        if i > 0 and (i == len(a) or alpha - a[i - 1] <= a[i] - alpha):
            i -= 1
        return self.points[i]

    def nearest(self, alpha: float) -> float:
        return self.point(alpha).alpha

    def variant(self, alpha: float, precision: str) -> LevelPoint | None:
        """The point at exactly α in `precision` (the fp32 one: the profiled level at α)."""
        if precision == "fp32":
            p = self.point(alpha)
            return p if abs(p.alpha - alpha) <= 1e-9 else None
        return next(
            (v for v in self.variants if v.precision == precision and abs(v.alpha - alpha) <= 1e-9),
            None,
        )

    def with_points(self, extra: Sequence[LevelPoint]) -> Profile:
        """This profile with `extra` points added (a point of the same α and precision is
        replaced): how tier 2's admitted int8 variants join it at run time."""
        keys = {(p.alpha, p.precision) for p in extra}
        kept = [p for p in (*self.points, *self.variants) if (p.alpha, p.precision) not in keys]
        return Profile([*kept, *extra], self.measured, self.build_s)

    def without(self, alpha: float, precision: str) -> Profile:
        """This profile less the variant (α, precision): tier 2 no longer holds it."""
        kept = [v for v in self.variants if (v.alpha, v.precision) != (alpha, precision)]
        return Profile([*self.points, *kept], self.measured, self.build_s)


@dataclass(frozen=True)
class PolicyState:
    alpha: float  # the level the server serves now (read from it every step)
    changed_at: float  # monotonic seconds when it last really moved
    precision: str = "fp32"  # and the precision it serves that level in


@dataclass(frozen=True)
class Decision:
    alpha: float
    reason: str
    precision: str = "fp32"
    # What the default policy predicts at α, for GET /level (not part of the decision's identity)
    demand_cores: float | None = field(default=None, compare=False)  # this model's CPU
    latency_s: float | None = field(default=None, compare=False)  # its request latency


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
    dwell_down_s: float = 2.0  # minimum time between moves toward compression: what drives
    # the next move (the server's feedback medians, the smoothed CPU) shows a new level after ~2 s
    battery_low: float = 20.0  # % while discharging: cap at the middle of the range
    battery_critical: float = 10.0  # %: cap at the most compressed level
    memory_low_fraction: float = 0.10
    memory_pressure_high: float = 0.20  # PSI memory some avg10
    cpu_busy: float = 0.85  # used by cpu_linear
    cpu_headroom: float = 0.2  # share: leave this fraction of the free CPU to others' bursts
    cpu_up_margin: float = 0.8  # share: a move toward accuracy must fit in 80 % of the budget
    settle_s: float = 2.0  # share: trust the daemon's own CPU this long after a level change
    k_min: float = 0.1  # share: the forward cost may be explained down to this much (batching)
    unreachable_gain: float = 0.25  # compress for an unreachable target only if it cuts 25 %
    # share: compress for CPU only if it cuts the model's predicted demand by 10 %. Under a
    # saturating hog the free CPU is about the daemon's own use, so no level ever fits; a
    # model whose requests are mostly overhead (the digit CNN: forward 13 %) would otherwise
    # move for a cut of a few per cent, and serve from tier 1 until tier 2 holds the level.
    min_cut: float = 0.10
    # compress for the latency target only if it cuts the predicted latency by 10 %: a few
    # per cent over it is inside the noise of the observed quantile (the same tier-1 cost)
    latency_min_cut: float = 0.10
    near_cheapest: float = 0.05  # share, nothing fits: compress no further than within 5 %
    # of the cheapest point (further cuts are immaterial)
    switch_horizon_s: float = 10.0  # share: a move pays back its tier-2 build over this long
    switch_build_s: float = 0.3  # the build's CPU seconds until the server has measured one


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


def slowdown(r: Readings, p: PlantView) -> float:
    """How much slower the forward pass runs now than profiled: measured at the served level
    when the server has a figure, else from CPU pressure."""
    fb = p.feedback
    if fb.forward_s is not None and fb.forward_s > 0:
        return max(1.0, fb.forward_s / served_latency(p))
    return cpu_slowdown(r)


def served_latency(p: PlantView) -> float:
    """The profiled forward latency of the point served now."""
    return p.profile.point_latency(p.state.alpha, p.state.precision)


def predicted_latency(r: Readings, p: PlantView, alpha: float, precision: str = "fp32") -> float:
    """Request latency at α: the non-forward part (HTTP, decode, queue), which compression
    cannot shrink, plus the forward pass at α (profiled, or as its tier runs now) times the
    contention slowdown. With an observed quantile, the non-forward part is whatever that
    quantile has beyond the forward pass at the served level."""
    profile, fb = p.profile, p.feedback
    slow = slowdown(r, p)
    overhead = fb.overhead_s or 0.0
    observed = fb.latency_quantile(p.operator.latency_quantile)
    if observed is not None:
        overhead = max(overhead, observed - served_latency(p) * slow)
    return overhead + profile.point_latency(alpha, precision) * slow


def candidates(
    r: Readings,
    p: PlantView,
    t: Tuning,
    latency: Callable[[float], float] | None = None,
) -> tuple[list[float], str | None, bool]:
    """The levels a model may take now, the reason the best of them is below the operator's
    top (None if it is not) and whether the latency target is out of reach.

    Bounds, then the battery and memory caps, then the latency target (a move toward
    accuracy must be predicted within `up_margin` of it; one toward compression must cut the
    predicted latency by `latency_min_cut`, or the model holds). When no level meets the
    target, compression is used only if it buys a real cut (`unreachable_gain`); a model
    whose requests are mostly overhead is not compressed for nothing. Under the share
    objective a model without traffic has no latency to protect: the target does not apply.
    `latency(α)`: the predicted request latency (`predicted_latency` unless given)."""
    levels = allowed(p.operator, p.profile)
    current = p.state.alpha
    cap = resource_cap(r, levels, t, current)
    capped = [a for a in levels if cap is None or a <= cap[0] + 1e-9]
    why = cap[1] if cap is not None and capped[-1] < levels[-1] - 1e-9 else None
    if p.operator.objective == "share" and p.feedback.request_rate <= 0:
        return capped, why, False
    pred = {a: predicted_latency(r, p, a) if latency is None else latency(a) for a in capped}
    target = p.operator.latency_target_s
    ok = [a for a in capped if pred[a] <= target * (1.0 if a <= current + 1e-9 else t.up_margin)]
    here = next((pred[a] for a in capped if abs(a - current) <= 1e-9), None)
    if ok and ok[-1] < current - 1e-9 and here and pred[ok[-1]] > (1.0 - t.latency_min_cut) * here:
        # Over the target by a few per cent: the level that meets it is within the noise of
        # the feedback, and the move would serve from tier 1 until tier 2 holds it.
        return [a for a in capped if a <= current + 1e-9], "latency_no_gain", False
    if ok:
        chosen = ok
    else:
        fastest = min(capped, key=lambda a: (pred[a], -a))
        # once compressed, stay so until the cut is clearly small (no flapping at the edge)
        gain = t.unreachable_gain / (2 if current <= fastest + 1e-9 else 1)
        chosen = [fastest] if pred[fastest] <= (1 - gain) * pred[capped[-1]] else capped
    if chosen[-1] < capped[-1] - 1e-9:
        why = "latency" if ok else "target_unreachable"
    return chosen, why, not ok


def calibrate(
    r: Readings, plants: Mapping[str, PlantView], now: float, t: Tuning
) -> tuple[float, float]:
    """(k, o): the daemon's CPU seconds per request at α ≈ o + k · forward(α), fitted to the
    CPU its process tree really uses (`own_cpu_cores`).

    What the profiled forward passes do not explain is overhead (HTTP, decode), at most its
    measured wall time; anything beyond that scales the forward part (intra-op threads);
    less than the forward passes (batching) scales it down. Until every model with traffic
    has stayed `settle_s` at its level, the smoothed CPU still shows the previous level:
    then (1, 0), an estimate that errs low, so a stale reading never drives a compression."""
    busy = [p for p in plants.values() if p.feedback.request_rate > 0]
    own = r.own_cpu_cores
    if own is None or not busy or any(now - p.state.changed_at < t.settle_s for p in busy):
        return 1.0, 0.0
    rate = sum(p.feedback.request_rate for p in busy)
    fwd = sum(p.feedback.request_rate * served_latency(p) for p in busy)
    if fwd <= 0:
        return 1.0, own / rate
    extra = own - fwd
    if extra < 0:
        return max(t.k_min, own / fwd), 0.0
    walls = [p.feedback.overhead_s for p in busy]
    if all(w is not None for w in walls):
        wall = sum(p.feedback.request_rate * (p.feedback.overhead_s or 0.0) for p in busy)
        overhead = min(extra, wall)
    else:
        overhead = extra
    k = 1.0 + (extra - overhead) / fwd
    return min(k, float(max(1, r.cpu_count or 1))), overhead / rate


def rate_at(r: Readings, p: PlantView, alpha: float, latency_s: float | None = None) -> float:
    """The request rate a model would see at α. Clients that keep requests in flight (a closed
    loop: each sends again when its answer arrives) run at in-flight / latency (Little's law),
    so at a slower, more accurate level they ask for less than the rate seen now; without this
    the rate a compressed level allows reads as demand at the wide level, which then never
    fits and the level never recovers. Under one request in flight on average the traffic is
    taken as paced, whose rate does not depend on the level. `latency_s`: the predicted
    latency at α, when the caller has it already."""
    fb = p.feedback
    n = fb.concurrency
    if n is None or n < 1.0 or alpha <= p.state.alpha + 1e-9:
        return fb.request_rate
    if latency_s is None:
        latency_s = predicted_latency(r, p, alpha)
    return min(fb.request_rate, n / latency_s)


def switch_cores(p: PlantView, alpha: float, precision: str, t: Tuning) -> float:
    """What a move to (α, precision) costs, in cores over `switch_horizon_s`: the CPU its
    tier-2 session takes to build (none to stay, none for a point tier 2 holds)."""
    same = abs(alpha - p.state.alpha) <= 1e-9 and precision == p.state.precision
    build = p.profile.build_s
    if same or build is None or precision != "fp32":  # a variant is offered only when held
        return 0.0
    seconds = build(alpha)
    return (t.switch_build_s if seconds is None else seconds) / t.switch_horizon_s


def accuracy(profile: Profile, alpha: float) -> float:
    """The held-out accuracy at α; α itself when the profile has no accuracy figures (the
    paper's ordering: a larger α is a wider, more accurate model)."""
    acc = profile.point(alpha).accuracy if profile.has_accuracy else None
    return alpha if acc is None else acc


@register("latency_headroom")
def latency_headroom(
    r: Readings, plants: Mapping[str, PlantView], now: float, t: Tuning = Tuning()
) -> dict[str, Decision]:
    """The default policy, both objectives, every model at once.

    `latency`: each model at the most accurate level predicted to meet its latency target.
    `share`: the same candidates, then one CPU budget, what other work leaves free of the
    daemon's CPUs (less `cpu_headroom`), shared among the models by a knapsack that
    maximises Σ priority × request rate × accuracy over points (α, and its int8 variant
    where tier 2 admitted one). Fixed, out-of-bounds and
    latency-objective models are settled first and their demand comes off the budget. A
    move toward accuracy must fit with `cpu_up_margin` to spare; dwell keeps it steady.

    A point's demand is predicted on the tier it would be served on (tier 2's session where
    it holds one, else tier 1) plus the CPU of building its session, paid back over
    `switch_horizon_s`. When no combination fits, a model compresses no further than
    `near_cheapest` from its cheapest point, and a move for CPU must cut its demand by
    `min_cut`, or it holds (`cpu_share_no_gain`): a cut of a few per cent is not worth
    leaving a settled tier-2 session for."""
    k, o = calibrate(r, plants, now, t)
    # Per step, each (model, point)'s latency is predicted once: the knapsack, the rate a
    # closed loop would send and GET /level's figures all read it.
    memo: dict[tuple[int, float, str], float] = {}

    def latency(p: PlantView, a: float, precision: str = "fp32") -> float:
        key = (id(p), a, precision)
        if key not in memo:
            memo[key] = predicted_latency(r, p, a, precision)
        return memo[key]

    def demand(p: PlantView, a: float, precision: str = "fp32") -> float:
        rate = rate_at(r, p, a, latency(p, a) if a > p.state.alpha + 1e-9 else None)
        return rate * (o + k * p.profile.point_latency(a, precision))

    free = r.cpu_free_cores
    budget = math.inf if free is None else free * (1.0 - t.cpu_headroom)
    out: dict[str, Decision] = {}
    chosen: dict[str, tuple[float, str | None, bool, str]] = {}  # α, why, unreachable, precision
    shared: dict[str, tuple[list[float], str | None, bool]] = {}
    for name, p in plants.items():
        settled = _operator_decision(p)
        if settled is not None:  # fixed or out of bounds: no choice, but it uses CPU
            out[name] = settled
            budget -= demand(p, settled.alpha)
            continue
        levels, why, unreachable = candidates(r, p, t, partial(latency, p))
        if p.operator.objective == "share":
            shared[name] = (levels, why, unreachable)
        else:
            chosen[name] = (levels[-1], why, unreachable, "fp32")
            budget -= demand(p, levels[-1])
    if shared:

        def option(p: PlantView, pt: LevelPoint) -> Option:
            up = rank(pt.alpha, pt.precision) > rank(p.state.alpha, p.state.precision)
            value = accuracy(p.profile, pt.alpha)
            if pt.precision != "fp32" and pt.accuracy is not None:
                # never above its own width: an excess is the noise of a finite split
                value = min(value, pt.accuracy)
            cost = demand(p, pt.alpha, pt.precision) + switch_cores(p, pt.alpha, pt.precision, t)
            return Option(
                pt.alpha,
                cost / (t.cpu_up_margin if up else 1.0),
                p.operator.priority * p.feedback.request_rate * value,
                pt.precision,
            )

        options = {
            name: [option(plants[name], pt) for pt in points(plants[name].profile, levels)]
            for name, (levels, _, _) in shared.items()
        }
        alloc = allocate_points(options, max(0.0, budget), near=t.near_cheapest)
        for name, (levels, why, unreachable) in shared.items():
            p, pick = plants[name], alloc[name]
            below = rank(pick.alpha, pick.precision) < rank(levels[-1])
            reason = "cpu_share" if below else why
            # Where the model would stay: its point, or the top the caps and the latency
            # target leave it when those already move it down.
            at = (p.state.alpha, p.state.precision)
            stay = at if rank(*at) <= rank(levels[-1]) else (levels[-1], "fp32")
            moves = reason == "cpu_share" and rank(pick.alpha, pick.precision) < rank(*stay)
            # a move for CPU must pay: its demand (with the build) against staying
            if moves and pick.demand > (1.0 - t.min_cut) * demand(p, *stay):
                held = "cpu_share_no_gain" if stay == at else why
                chosen[name] = (stay[0], held, unreachable, stay[1])
                continue
            chosen[name] = (pick.alpha, reason, unreachable, pick.precision)
    for name, (a, why, unreachable, precision) in chosen.items():
        out[name] = _settle(plants[name].state, a, why, unreachable, now, t, precision)
    return {name: _predicted(out[name], p, demand, latency) for name, p in plants.items()}


def points(profile: Profile, levels: Sequence[float]) -> list[LevelPoint]:
    """The points the share objective chooses among at the candidate levels: each fp32 level
    and its int8 variant, when tier 2 admitted one and its held-out accuracy is recorded (the
    knapsack weighs accuracy; a variant of unknown accuracy is never chosen blind)."""
    out = []
    for a in levels:
        out.append(profile.point(a))
        v = profile.variant(a, "int8")
        if v is not None and v.accuracy is not None and profile.has_accuracy:
            out.append(v)
    return out


def _predicted(
    d: Decision,
    p: PlantView,
    demand: Callable[[PlantView, float, str], float],
    latency: Callable[[PlantView, float, str], float],
) -> Decision:
    return replace(
        d,
        demand_cores=demand(p, d.alpha, d.precision),
        latency_s=latency(p, d.alpha, d.precision),
    )


def _operator_decision(p: PlantView) -> Decision | None:
    """The operator's fixed level, or the nearest level inside the bounds when the served one
    is outside them (both at once, no dwell); None when the policy may choose."""
    op, current = p.operator, p.state.alpha
    if op.mode == "fixed" and op.alpha is not None:
        return Decision(op.alpha, "operator_fixed", op.precision)
    levels = allowed(op, p.profile)
    if levels[0] - 1e-9 <= current <= levels[-1] + 1e-9:
        return None
    return Decision(p.profile.nearest(min(max(current, levels[0]), levels[-1])), "bounds")


def _settle(
    state: PolicyState,
    alpha: float,
    why: str | None,
    unreachable: bool,
    now: float,
    t: Tuning,
    precision: str = "fp32",
) -> Decision:
    """Dwell: no move toward accuracy within `dwell_up_s` of the last change, none toward
    compression within `dwell_down_s` (a change of precision at one width is a move too)."""
    since = now - state.changed_at
    hold = Decision(state.alpha, "hold", state.precision)
    to, at = rank(alpha, precision), rank(state.alpha, state.precision)
    if abs(alpha - state.alpha) <= 1e-9:
        to = (at[0], to[1])  # the same width, whatever float noise
    if to > at:
        return Decision(alpha, "recovered", precision) if since >= t.dwell_up_s else hold
    if to < at:
        if since < t.dwell_down_s:
            return hold
        return Decision(alpha, why or "cpu_share", precision)
    if why in ("cpu_share_no_gain", "latency_no_gain"):  # short, but a move would not pay
        return replace(hold, reason=why)
    return replace(hold, reason="target_unreachable" if unreachable else "hold")


@register("static")
@each
def static(r: Readings, p: PlantView, now: float) -> Decision:
    """Always the most accurate level the operator allows."""
    op = p.operator
    if op.mode == "fixed" and op.alpha is not None:
        return Decision(op.alpha, "operator_fixed", op.precision)
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
    "OBJECTIVES",
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
    "latency_headroom",
    "predicted_latency",
]
