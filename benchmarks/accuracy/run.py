"""Train every method × seed (cached, two workers of one thread) and evaluate on the grid."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.accuracy.plan import (
    GRIDS,
    RECIPE_2_DEFAULTS,
    Method,
    epochs,
    methods,
    overrides,
    recipe,
)
from benchmarks.common import RESULTS, machine

ROOT = Path(__file__).resolve().parents[2]
CACHE = RESULTS / "accuracy-runs"  # one JSON per method × seed: reruns train only what is new


def train_and_evaluate(
    method: Method,
    seed: int,
    epochs: int,
    max_train: int | None,
    out: str,
    overrides: dict[str, Any] | None = None,
):
    """Runs in a worker process with one thread: train, reload the checkpoint, evaluate.
    `overrides` are further TrainConfig fields (the recipes of benchmarks.accuracy.ab)."""
    import torch

    from models import checkpoint
    from models.data import load_dataset
    from models.evaluate import accuracy_at_levels
    from models.train import TrainConfig, train

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = load_dataset("digits")
    cfg = TrainConfig(
        family=method.family,
        kind=method.kind,
        norm=method.norm,
        train_gammas=method.train_gammas,
        epochs=epochs,
        seed=seed,
        max_train=max_train,
        out=out,
        **(overrides or {}),
    )
    train(cfg, data, progress=False)
    net, meta, _ = checkpoint.load(out)
    alphas = [meta.spec.calc.alpha(g) for g in GRIDS[method.family]]
    rows = accuracy_at_levels(net, data.test, alphas, meta.mean, meta.std)
    return {"rows": rows, "train_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--families", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, help="every run this long (default: plan.epochs())")
    ap.add_argument("--max-train", type=int, help="cap on training images (smoke runs)")
    ap.add_argument("--workers", type=int, default=2, help="parallel trainings, 1 thread each")
    ap.add_argument("--runs-dir", default=str(ROOT / "runs" / "accuracy"), help="checkpoints")
    ship = "copy the best LCS+P seed of these families (none named: every family run)"
    ap.add_argument("--ship", nargs="*", choices=list(GRIDS), metavar="FAMILY", help=ship)
    ap.add_argument("--methods", nargs="+", metavar="LABEL", help="only these (smoke runs)")
    args = ap.parse_args()
    chosen = set(args.methods or [])

    def selected(family: str) -> list[Method]:
        return [m for m in methods(family) if not chosen or m.label in chosen]

    settings = {"epochs": args.epochs, "max_train": args.max_train, "dataset": "digits"}
    jobs = [(m, s) for f in args.families for m in selected(f) for s in args.seeds]
    todo = [(m, s) for m, s in jobs if cached(m, s, settings) is None]
    # Seed by seed, so a cut-short run still has whole seeds; longest first within a seed.
    todo.sort(key=lambda job: (job[1], -job[0].passes * epochs(job[0])))
    print(f"{len(jobs)} trainings, {len(jobs) - len(todo)} cached, {len(todo)} to run", flush=True)
    _run(todo, settings, args)

    results = {f: _collect(selected(f), args.seeds, settings) for f in args.families}
    path = RESULTS / "accuracy.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {"machine": machine(), "settings": settings, "seeds": args.seeds, "families": results},
            indent=2,
        )
    )
    print(f"saved {path}")
    if args.ship is not None:
        for family in args.ship or args.families:
            _ship(family, results[family], args.seeds, Path(args.runs_dir), settings)


K = TypeVar("K")


def in_pool(
    jobs: Sequence[tuple[K, Callable[..., dict[str, Any]], tuple[Any, ...]]], workers: int
) -> Iterator[tuple[K, dict[str, Any], float]]:
    """Run fn(*args) for each (key, fn, args) in worker processes; yields (key, result,
    minutes since the start) as each finishes."""
    start = time.perf_counter()
    # spawn: a fresh interpreter per worker, no forked torch thread pools.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = {pool.submit(fn, *a): key for key, fn, a in jobs}
        for fut in as_completed(futures):
            yield futures[fut], fut.result(), (time.perf_counter() - start) / 60


def _run(todo: list[tuple[Method, int]], settings: dict[str, Any], args) -> None:
    jobs = [
        (
            (m, s),
            train_and_evaluate,
            (
                m,
                s,
                method_settings(m, settings)["epochs"],
                args.max_train,
                str(checkpoint_path(Path(args.runs_dir), m, s, settings)),
                overrides(m),
            ),
        )
        for m, s in todo
    ]
    for done, ((m, s), result, minutes) in enumerate(in_pool(jobs, args.workers), 1):
        _store(m, s, settings, result)
        eta = minutes / done * (len(todo) - done)
        best = max(r["accuracy"] for r in result["rows"])
        print(
            f"[{done:3}/{len(todo)}] {m.family:12} {m.label:10} seed {s}: "
            f"{result['train_s']:5.0f} s, best {100 * best:.1f}%, ETA {eta:.1f} min",
            flush=True,
        )


def _run_name(m: Method, seed: int, settings: dict[str, Any]) -> str:
    s = method_settings(m, settings)
    # from recipe 4 on the recipe is in the name too, so a method's earlier runs stay beside it
    tag = f"-r{s['recipe']}" if s["recipe"] >= 4 else ""
    return f"{m.name}{tag}-e{s['epochs']}-s{seed}"


def _cache_path(m: Method, seed: int, settings: dict[str, Any]) -> Path:
    return CACHE / f"{_run_name(m, seed, settings)}.json"


def checkpoint_path(runs_dir: Path, m: Method, seed: int, settings: dict[str, Any]) -> Path:
    return runs_dir / f"{_run_name(m, seed, settings)}.safetensors"


def method_settings(m: Method, settings: dict[str, Any]) -> dict[str, Any]:
    """The run's settings as this method trains: its recipe (plan.recipe) and its epochs
    (the run's --epochs, else plan.epochs). A caller may pin the recipe: the A/B reads runs of
    an earlier one as its controls."""
    return {"recipe": recipe(m)} | settings | {"epochs": settings.get("epochs") or epochs(m)}


def _store(m: Method, seed: int, settings: dict[str, Any], result: dict[str, Any]) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    settings = method_settings(m, settings)
    record = {"method": _plain(m), "seed": seed, "settings": settings, **result}
    _cache_path(m, seed, settings).write_text(json.dumps(record, indent=1))


def cached(m: Method, seed: int, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The stored run of this method and seed with these settings, if there is one."""
    path = _cache_path(m, seed, settings)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    same = record["settings"] == method_settings(m, settings) and record["method"] == _plain(m)
    return record if same else None


def _plain(m: Method) -> dict[str, Any]:
    """The method as it reads back from JSON (tuples become lists), to compare with a record."""
    return json.loads(json.dumps(asdict(m)))


def _collect(
    chosen: list[Method], seeds: list[int], settings: dict[str, Any]
) -> list[dict[str, Any]]:
    """Per method: accuracy per γ for every seed, and its mean and sample deviation."""
    out = []
    for m in chosen:
        per_seed = {s: cached(m, s, settings) for s in seeds}
        by_gamma: dict[float, list[float]] = {}
        for record in per_seed.values():
            assert record is not None
            for r in record["rows"]:
                by_gamma.setdefault(round(r["gamma"], 6), []).append(r["accuracy"])
        rows = [
            {
                "gamma": g,
                "mean": statistics.fmean(a),
                "sd": statistics.stdev(a) if len(a) > 1 else 0.0,
                "seeds": a,
            }
            for g, a in by_gamma.items()
        ]
        train_s = [r["train_s"] for r in per_seed.values() if r is not None]
        out.append(
            {
                **asdict(m),
                "name": m.name,
                "recipe": recipe(m),
                "epochs": method_settings(m, settings)["epochs"],
                "rows": rows,
                "train_s": train_s,
            }
        )
    return out


def _ship(
    family: str,
    results: list[dict[str, Any]],
    seeds: list[int],
    runs_dir: Path,
    settings: dict[str, Any],
) -> None:
    """The family's LCS+P network, the seed with the best accuracy over the grid, becomes
    models/weights/digits_{family}_point (the structured one is the default model). Not
    copied when that file already holds the same weights, so a rerun leaves git clean."""
    from safetensors.torch import load_file

    from models.checkpoint import content_hash

    best = next(r for r in results if r["role"] == "lcs" and r["kind"] == "point")
    totals = {s: sum(row["seeds"][i] for row in best["rows"]) for i, s in enumerate(seeds)}
    seed = max(totals, key=lambda s: totals[s])
    target = ROOT / "models" / "weights" / f"digits_{family}_point.safetensors"
    method = next(m for m in methods(family) if m.name == best["name"])
    source = checkpoint_path(runs_dir, method, seed, settings)
    if not _trained_as_today(source, family, "point"):
        # e.g. a checkpoint left in runs/ by an older recipe while the cache holds a newer one
        print(f"{family}: {source} was not trained with today's defaults; nothing shipped")
        return
    if target.exists() and content_hash(load_file(source)) == content_hash(load_file(target)):
        print(f"{family}: {target.relative_to(ROOT)} already is {best['label']} seed {seed}")
        return
    shutil.copyfile(source, target)
    print(f"{family}: shipped {best['label']} seed {seed} as {target.relative_to(ROOT)}")


def _trained_as_today(path: Path, family: str, kind: str) -> bool:
    """Whether the checkpoint's recorded training options are today's defaults for it."""
    from models.checkpoint import read_metadata
    from models.train import TrainConfig

    if not path.exists():
        return False
    t = read_metadata(path)[0].training
    now = TrainConfig(family=family, kind=kind)
    # Checkpoints older than the sampling options record none: recipe 2's values.
    return all(t.get(k, d) == getattr(now, k) for k, d in RECIPE_2_DEFAULTS.items())
