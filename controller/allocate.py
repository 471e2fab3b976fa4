"""One CPU budget across models: a multiple-choice knapsack, solved exactly."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Option:
    """One level a model could run at: its α, predicted CPU demand (cores) and value."""

    alpha: float
    demand: float
    value: float


def allocate(options: Mapping[str, Sequence[Option]], budget: float) -> dict[str, float]:
    """One α per model maximising Σ value with Σ demand ≤ budget; among equal values the
    larger Σ α (the more accurate levels). When no combination fits, every model takes its
    cheapest option (the most accurate of the cheapest).

    Exact: a dynamic programme over models that keeps only the Pareto frontier of partial
    choices (no other choice is cheaper and at least as good), so a few models of a dozen
    levels cost a few hundred comparisons, not the product of their level counts."""
    names = list(options)
    if any(not options[n] for n in names):
        raise ValueError("every model needs at least one option")
    # frontier: (demand, value, Σα, choice per model so far)
    frontier: list[tuple[float, float, float, tuple[float, ...]]] = [(0.0, 0.0, 0.0, ())]
    for n in names:
        grown = [
            (d + o.demand, v + o.value, s + o.alpha, (*ch, o.alpha))
            for d, v, s, ch in frontier
            for o in options[n]
            if d + o.demand <= budget + 1e-12
        ]
        if not grown:
            return {n: _cheapest(options[n]) for n in names}
        grown.sort(key=lambda f: (f[0], -f[1], -f[2]))
        frontier, best = [], None
        for f in grown:
            if best is None or (f[1], f[2]) > best:
                frontier.append(f)
                best = (f[1], f[2])
    top = max(frontier, key=lambda f: (f[1], f[2], -f[0]))
    return dict(zip(names, top[3], strict=True))


def _cheapest(opts: Sequence[Option]) -> float:
    return min(opts, key=lambda o: (o.demand, -o.alpha)).alpha
