"""`python -m benchmarks.accuracy.ab`: issue 19's A/B of LCS+P training recipes, strong compression.

Each recipe × seed trains once (cached per run in benchmarks/results/accuracy-ab/, so a cut-short
run resumes) and is evaluated at the family's grid; the summary, with the networks trained for
one level alone from `make accuracy`'s cache, goes to benchmarks/results/accuracy_ab.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.accuracy import run
from benchmarks.accuracy.plan import GRIDS, RECIPE, Method, methods
from benchmarks.common import RESULTS, machine

CACHE = RESULTS / "accuracy-ab"
# The levels the goal is judged at: where the single-level networks were trained.
LEVELS = {"structured": (0.25, 0.5), "unstructured": (0.9, 0.95), "quantization": (8.0, 4.0)}
# Compressed-end mixture: half of the uniform draws from the most compressed quarter of α.
MIX = {"compressed_mix": 0.5, "compressed_span": 0.25}
# Recipe 2's unstructured LCS+P (the reference's 80 % dense, then uniform), pinned: the family's
# default changed to (e) after this A/B.
LEGACY = {"prune_warmup": 0.8, "compressed_mix": 0.0, "compressed_span": 0.25}
# The A/B's recipes are 10-epoch runs unless they say otherwise: make accuracy's 10-epoch runs.
TEN_EPOCHS = {"epochs": 10, "max_train": None, "dataset": "digits"}


@dataclass(frozen=True)
class Recipe:
    key: str
    family: str
    label: str
    overrides: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    method: str = "LCS+P+IN"  # the plan's method it trains (its kind, norm, levels)
    # A control that is make accuracy's own run at its plan.epochs and recipe: read from its
    # cache, never trained here.
    from_plan: bool = False

    def plan_method(self) -> Method:
        return next(m for m in methods(self.family) if m.label == self.method)


RECIPES = [
    Recipe("s-a", "structured", "(a) today (recipe 2): sandwich, U(0, 1) middle"),
    Recipe("s-b", "structured", "(b) middle draws ½ from the compressed quarter", MIX),
    Recipe("s-c", "structured", "(c) (b) + --distill", MIX | {"distill": True}),
    Recipe("s-d", "structured", "(d) today, 20 epochs", epochs=20),
    Recipe("s-c2", "structured", "(c') today + --distill", {"distill": True}),
    Recipe(
        "s-in",
        "structured",
        "control: width 0.25 alone, InstanceNorm",
        {"norm": "group"},
        method="width 0.25",
    ),
    Recipe(
        "s-c20", "structured", "(c'') today + --distill, 20 epochs", {"distill": True}, epochs=20
    ),
    Recipe(
        "s-in20",
        "structured",
        "control: width 0.25 alone, InstanceNorm, 20 epochs",
        {"norm": "group"},
        epochs=20,
        method="width 0.25",
    ),
    Recipe("u-a", "unstructured", "(a) recipe 2: dense 80 %, then U(0.025, 1)", LEGACY),
    Recipe(
        "u-b",
        "unstructured",
        "(b) dense 80 %, then ½ from the compressed quarter",
        MIX | {"prune_warmup": 0.8},
    ),
    Recipe(
        "u-e",
        "unstructured",
        "(e) dense 50 %, then ½ from the compressed quarter",
        MIX | {"prune_warmup": 0.5},
    ),
    Recipe(
        "u-f",
        "unstructured",
        "(f) (e) + --distill (dense teacher)",
        MIX | {"prune_warmup": 0.5, "distill": True},
    ),
    Recipe("u-d", "unstructured", "(d) recipe 2, 20 epochs", LEGACY, epochs=20),
    # Lines: make accuracy's LCS+L at 20 epochs is the control for each distilled line.
    Recipe(
        "u-l20",
        "unstructured",
        "LCS+L today, 20 epochs (make accuracy)",
        epochs=20,
        method="LCS+L+IN",
        from_plan=True,
    ),
    Recipe(
        "u-l20d",
        "unstructured",
        "LCS+L + --distill (dense teacher), 20 epochs",
        {"distill": True},
        epochs=20,
        method="LCS+L+IN",
    ),
    # The line's ramp to γ(α) takes 80 % of training: a shorter one, then the compressed-end mix;
    # then a longer schedule (adopted: make accuracy's unstructured family trains 30 epochs, and
    # its LCS+L records are these runs, stored in its cache).
    Recipe(
        "u-l20w",
        "unstructured",
        "LCS+L, ramp over 50 % (not 80), 20 epochs",
        {"prune_warmup": 0.5},
        epochs=20,
        method="LCS+L+IN",
    ),
    Recipe(
        "u-l20m",
        "unstructured",
        "LCS+L, ramp over 50 %, ½ of draws from the compressed quarter, 20 epochs",
        MIX | {"prune_warmup": 0.5},
        epochs=20,
        method="LCS+L+IN",
    ),
    Recipe(
        "u-l30",
        "unstructured",
        "LCS+L, 30 epochs (make accuracy's since)",
        epochs=30,
        method="LCS+L+IN",
    ),
    Recipe(
        "q-l20",
        "quantization",
        "LCS+L today, 20 epochs (make accuracy)",
        epochs=20,
        method="LCS+L+IN",
        from_plan=True,
    ),
    Recipe(
        "q-l20d",
        "quantization",
        "LCS+L + --distill (8-bit teacher), 20 epochs",
        {"distill": True},
        epochs=20,
        method="LCS+L+IN",
    ),
]
BY_KEY = {r.key: r for r in RECIPES}


def _settings(r: Recipe) -> dict[str, Any]:
    return {"epochs": r.epochs, "overrides": r.overrides, "dataset": "digits", "recipe": RECIPE}


def _path(r: Recipe, seed: int) -> Path:
    return CACHE / f"{r.key}-s{seed}.json"


def cached(r: Recipe, seed: int) -> dict[str, Any] | None:
    """A stored run of this recipe and seed; a recipe that is make accuracy's own (from_plan,
    or no overrides at 10 epochs) reads make accuracy's cache."""
    m = r.plan_method()
    if r.from_plan:
        return run.cached(m, seed, TEN_EPOCHS | {"epochs": r.epochs})
    if not r.overrides and r.epochs == 10:  # the recipe make accuracy trained before recipe 4
        return run.cached(m, seed, TEN_EPOCHS | {"recipe": RECIPE})
    path = _path(r, seed)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return record if record["settings"] == json.loads(json.dumps(_settings(r))) else None


def _job(r: Recipe, seed: int, out: str) -> dict[str, Any]:
    m = r.plan_method()
    overrides = dict(r.overrides)
    norm = overrides.pop("norm", None)
    if norm:
        m = Method(m.label, m.family, m.role, m.kind, norm, m.train_gammas)
    if Path(out).exists():  # trained before its record was written (or by `lcs train`)
        done = _evaluate_existing(m, seed, r, out)
        if done is not None:
            return done
    # resume: a killed run continues from its last finished epoch (OUT's .state.pt)
    return run.train_and_evaluate(m, seed, r.epochs, None, out, overrides | {"resume": True})


def _evaluate_existing(m: Method, seed: int, r: Recipe, out: str) -> dict[str, Any] | None:
    """Evaluate a finished checkpoint at `out` if it was trained with this recipe and seed."""
    import torch

    from models import checkpoint
    from models.data import load_dataset
    from models.evaluate import accuracy_at_levels

    torch.set_num_threads(1)
    net, meta, _ = checkpoint.load(out)
    t = meta.training
    want = {"family": m.family, "kind": m.kind, "norm": m.norm, "seed": seed, "epochs": r.epochs}
    want |= {"train_gammas": list(m.train_gammas), **r.overrides}
    if any(json.loads(json.dumps(t.get(k))) != json.loads(json.dumps(v)) for k, v in want.items()):
        return None
    data = load_dataset("digits")
    alphas = [meta.spec.calc.alpha(g) for g in GRIDS[m.family]]
    rows = accuracy_at_levels(net, data.test, alphas, meta.mean, meta.std)
    return {"rows": rows, "train_s": None, "reused": out}


def reference(family: str, gamma: float, seeds: list[int]) -> list[float]:
    """Accuracy at γ of the network trained for γ alone (make accuracy's cache), per seed."""
    single = next(
        m for m in methods(family) if m.role == "single" and abs(m.train_gammas[0] - gamma) < 1e-9
    )
    out = []
    for s in seeds:
        rec = run.cached(single, s, TEN_EPOCHS)
        if rec is not None:
            out.append(_at(rec["rows"], gamma))
    return out


def _at(rows: list[dict[str, Any]], gamma: float) -> float:
    return next(r["accuracy"] for r in rows if abs(r["gamma"] - gamma) < 1e-6)


def summary(seeds: list[int]) -> dict[str, Any]:
    families: dict[str, Any] = {}
    for family, levels in LEVELS.items():
        recipes = []
        for r in (r for r in RECIPES if r.family == family):
            per_seed = {s: cached(r, s) for s in seeds}
            runs = {s: rec for s, rec in per_seed.items() if rec is not None}
            if not runs:
                continue
            recipes.append(
                {
                    "key": r.key,
                    "label": r.label,
                    "epochs": r.epochs,
                    "overrides": r.overrides,
                    "method": r.method,
                    "from_plan": r.from_plan,
                    "seeds": sorted(runs),
                    "rows": [
                        {"gamma": g, "seeds": [_at(rec["rows"], g) for rec in runs.values()]}
                        for g in GRIDS[family]
                    ],
                    "train_s": [rec["train_s"] for rec in runs.values()],
                }
            )
        for rec in recipes:
            for row in rec["rows"]:
                row["mean"] = statistics.fmean(row["seeds"])
        refs = {f"{g:g}": reference(family, g, seeds) for g in levels}
        families[family] = {"levels": list(levels), "reference": refs, "recipes": recipes}
    return families


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--recipes", nargs="+", default=[r.key for r in RECIPES], choices=list(BY_KEY))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--workers", type=int, default=2, help="parallel trainings, 1 thread each")
    ap.add_argument("--runs-dir", default=str(run.ROOT / "runs" / "ab"), help="checkpoints")
    ap.add_argument("--summary-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", nargs="+", metavar="KEY:SEED", help="exactly these, in this order")
    args = ap.parse_args()
    jobs = [(BY_KEY[k], s) for k in args.recipes for s in args.seeds]
    if args.jobs:
        jobs = [(BY_KEY[j.split(":")[0]], int(j.split(":")[1])) for j in args.jobs]
    todo = [(r, s) for r, s in jobs if cached(r, s) is None and not r.from_plan]
    print(f"{len(jobs)} runs, {len(jobs) - len(todo)} cached, {len(todo)} to train", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    runs = Path(args.runs_dir)
    work = [((r, s), _job, (r, s, str(runs / f"{r.key}-s{s}.safetensors"))) for r, s in todo]
    for (r, s), result, minutes in run.in_pool(work, args.workers):
        record = {"recipe": r.key, "seed": s, "settings": _settings(r), **result}
        _path(r, s).write_text(json.dumps(record, indent=1))
        cells = " ".join(f"{g:g}:{100 * _at(result['rows'], g):.1f}" for g in LEVELS[r.family])
        print(f"{r.key} seed {s}: {result['train_s'] or 0:.0f} s, {cells} ({minutes:.1f} min)",
              flush=True)  # fmt: skip
    out = RESULTS / "accuracy_ab.json"
    out.write_text(
        json.dumps({"machine": machine(), "families": summary(args.summary_seeds)}, indent=1)
    )
    print(f"saved {out}")


if __name__ == "__main__":
    main()
