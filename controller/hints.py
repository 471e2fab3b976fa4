"""Per-request floors and ceilings: the level one request is served at (issue 16)."""

from __future__ import annotations

from collections.abc import Callable

from controller.policy import OperatorPolicy, Profile, allowed

_EPS = 1e-9


class HintError(ValueError):
    """No level the operator allows meets the hint; the message names what is available (the
    server answers 422 with it)."""


def hinted_level(
    profile: Profile,
    op: OperatorPolicy,
    current: float,
    *,
    min_accuracy: float | None = None,
    max_latency_s: float | None = None,
    predict: Callable[[float], float | None] | None = None,
) -> float:
    """The α to serve one request at, given the controller's `current` level.

    - `min_accuracy` (0–1): the cheapest level whose held-out accuracy is at least the floor
      and at least that of the current level; it may be above the current level, never
      outside the operator's bounds. None reaches it → HintError naming the best available.
    - `max_latency_s`: the most accurate level, never more accurate than the current one,
      whose `predict(α)` meets it; none does → the fastest such level (best effort), or
      HintError when the floor or fixed mode leaves no faster level.
    - Fixed mode is the bounds [α, α]: a hint it cannot meet → HintError naming that level.
    Without hints, `current`."""
    if min_accuracy is not None and not 0.0 <= min_accuracy <= 1.0:
        raise HintError(f"min_accuracy must be in [0, 1], not {min_accuracy}")
    if max_latency_s is not None and not max_latency_s > 0:
        raise HintError(f"max_latency_ms must be > 0, not {max_latency_s * 1e3:g}")
    fixed = op.mode == "fixed" and op.alpha is not None
    levels = [op.alpha] if fixed and op.alpha is not None else allowed(op, profile)
    where = f"the model is fixed at α = {levels[0]:.3f}" if fixed else "within the bounds"
    alpha = min(levels, key=lambda a: abs(a - current))  # current, unless a switch is racing

    pool = levels  # the levels the floor allows
    if min_accuracy is not None:
        if not profile.has_accuracy:
            raise HintError("this model has no accuracy figures: min_accuracy cannot be met")
        acc = {a: profile.point(a).accuracy or 0.0 for a in levels}
        pool = [a for a in levels if acc[a] >= min_accuracy - _EPS]
        if not pool:
            best = max(levels, key=lambda a: (acc[a], a))
            raise HintError(
                f"no level reaches accuracy {min_accuracy:.4f} ({where}); the best is "
                f"{acc[best]:.4f} at α = {best:.3f}"
            )
        if acc[alpha] < min_accuracy - _EPS:  # rise to the cheapest level that reaches it
            alpha = min(pool, key=lambda a: (profile.expected_latency(a), -a))
    if max_latency_s is not None and predict is not None and predict(alpha) is not None:
        slower = [a for a in pool if a <= alpha + _EPS]  # never more accurate than chosen
        pred = {a: predict(a) or 0.0 for a in slower}
        meets = [a for a in slower if pred[a] <= max_latency_s]
        if meets:
            return max(meets)
        fastest = min(slower, key=lambda a: (pred[a], -a))
        if fixed or min_accuracy is not None:  # the operator or the floor forbids faster
            floor = "" if min_accuracy is None else f", accuracy ≥ {min_accuracy:.4f}"
            raise HintError(
                f"no level is predicted to meet {max_latency_s * 1e3:g} ms ({where}{floor}); "
                f"the fastest is {pred[fastest] * 1e3:.1f} ms at α = {fastest:.3f}"
            )
        return fastest  # best effort
    return alpha


def hinted_point(
    profile: Profile,
    op: OperatorPolicy,
    current: float,
    precision: str = "fp32",
    *,
    min_accuracy: float | None = None,
    max_latency_s: float | None = None,
    predict: Callable[[float], float | None] | None = None,
) -> tuple[float, str]:
    """`hinted_level` when the current point may be a variant (int8) of the current level:
    (α, precision) to serve one request at. The current point stays only if it meets the
    hints itself (its own recorded accuracy against the floor, its own latency against the
    ceiling); otherwise the request goes to the fp32 point `hinted_level` picks, which may
    be the current level's own fp32 point. Hints never choose a variant of another level."""
    alpha = hinted_level(
        profile,
        op,
        current,
        min_accuracy=min_accuracy,
        max_latency_s=max_latency_s,
        predict=predict,
    )
    if precision == "fp32":
        return alpha, "fp32"
    here = profile.variant(current, precision)
    if here is None:  # the variant is not (or no longer) profiled: what serves is fp32
        return alpha, "fp32"
    if min_accuracy is not None and (here.accuracy is None or here.accuracy < min_accuracy - _EPS):
        return alpha, "fp32"
    if max_latency_s is not None and predict is not None:
        seen = predict(current)
        overhead = 0.0 if seen is None else max(0.0, seen - profile.expected_latency(current))
        if overhead + profile.latency(here) <= max_latency_s:
            return current, precision  # a variant meeting the ceiling is faster than its fp32
    if abs(alpha - current) < _EPS:
        return current, precision
    return alpha, "fp32"
