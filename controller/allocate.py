"""One CPU budget across models: a multiple-choice knapsack, solved exactly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Option:
    """One point a model could run at: its α (and precision), predicted CPU demand (cores)
    and value."""

    alpha: float
    demand: float
    value: float
    precision: str = "fp32"


def allocate(options: Mapping[str, Sequence[Option]], budget: float) -> dict[str, float]:
    """`allocate_points`, as one α per model."""
    return {n: o.alpha for n, o in allocate_points(options, budget).items()}


def allocate_points(
    options: Mapping[str, Sequence[Option]], budget: float, near: float = 0.0
) -> dict[str, Option]:
    """One option per model maximising Σ value with Σ demand ≤ budget; among equal values the
    larger Σ α (the more accurate levels), then the more fp32 points. When no combination
    fits, every model takes its cheapest option, or the most accurate option whose demand is
    within the fraction `near` of it (compressing further would save next to nothing).

    Exact: a dynamic programme over models that keeps only the Pareto frontier of partial
    choices (no other choice is cheaper and at least as good), so a few models of a dozen
    levels cost a few hundred comparisons, not the product of their level counts."""
    names = list(options)
    if any(not options[n] for n in names):
        raise ValueError("every model needs at least one option")
    # frontier: (demand, value, (Σα, fp32 count), choice per model so far)
    Tie = tuple[float, int]
    frontier: list[tuple[float, float, Tie, tuple[Option, ...]]] = [(0.0, 0.0, (0.0, 0), ())]
    for n in names:
        grown = [
            (d + o.demand, v + o.value, (s[0] + o.alpha, s[1] + (o.precision == "fp32")), (*ch, o))
            for d, v, s, ch in frontier
            for o in options[n]
            if d + o.demand <= budget + 1e-12
        ]
        if not grown:
            return {n: _cheapest(options[n], near) for n in names}
        grown.sort(key=lambda f: (f[0], -f[1], -f[2][0], -f[2][1]))
        frontier, best = [], None
        for f in grown:
            if best is None or (f[1], f[2]) > best:
                frontier.append(f)
                best = (f[1], f[2])
    top = max(frontier, key=lambda f: (f[1], f[2], -f[0]))
    return dict(zip(names, top[3], strict=True))


def _cheapest(opts: Sequence[Option], near: float = 0.0) -> Option:
    least = min(o.demand for o in opts)
    close = [o for o in opts if o.demand <= least * (1.0 + near) + 1e-12]
    return min(close, key=lambda o: (-o.alpha, o.precision != "fp32", o.demand))
