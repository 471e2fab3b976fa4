"""ACCURACY.md's section on issue 19's recipe A/B, and its plot, from accuracy_ab.json."""

from __future__ import annotations

import statistics
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.accuracy.plan import AXIS
from benchmarks.report import PLOTS, table

NAMES = {"structured": "width", "unstructured": "pruned"}


def _cell(values: list[float]) -> str:
    per_seed = " / ".join(f"{100 * v:.1f}" for v in values)
    return f"{100 * statistics.fmean(values):.1f} ({per_seed})"


def _at(recipe: dict[str, Any], gamma: float) -> list[float]:
    return next(r["seeds"] for r in recipe["rows"] if abs(r["gamma"] - gamma) < 1e-6)


def _trained_for(recipe: dict[str, Any], gamma: float) -> bool:
    """A control network trained for one level is read only there."""
    return recipe["method"].startswith("LCS") or f"{gamma:g}" in recipe["method"]


def family_table(family: str, d: dict[str, Any]) -> str:
    levels = d["levels"]
    head = ["recipe", "epochs", "seeds"]
    for g in levels:
        head += [f"{NAMES[family]} γ {g:g}: mean (per seed)", "Δ", "Δ vs (a), same seeds"]
    head.append("min per run (1 thread, loaded)")
    refs = {g: d["reference"][f"{g:g}"] for g in levels}
    rows: list[list[Any]] = []
    ref_row: list[Any] = ["trained for γ alone (BatchNorm), make accuracy", 10, "0, 1, 2"]
    for g in levels:
        ref_row += [_cell(refs[g]), "", ""]
    today = next(r for r in d["recipes"] if r["key"].endswith("-a"))
    rows.append([*ref_row, ""])
    for rec in d["recipes"]:
        row: list[Any] = [rec["label"], rec["epochs"], ", ".join(map(str, rec["seeds"]))]
        for g in levels:
            if not _trained_for(rec, g):
                row += ["—", "", ""]
                continue
            vals = _at(rec, g)
            gap = 100 * (statistics.fmean(vals) - statistics.fmean(refs[g]))
            row += [_cell(vals), f"{gap:+.1f}", _paired(rec, today, g)]
        times = [t for t in rec["train_s"] if t]
        row.append(f"{statistics.fmean(times) / 60:.1f}" if times else "")
        rows.append(row)
    return table(head, rows)


def _paired(rec: dict[str, Any], today: dict[str, Any], gamma: float) -> str:
    """Mean difference to today's recipe over the seeds both ran (seed noise is shared)."""
    if rec is today or not rec["method"].startswith("LCS"):
        return ""
    mine = dict(zip(rec["seeds"], _at(rec, gamma), strict=True))
    base = dict(zip(today["seeds"], _at(today, gamma), strict=True))
    common = sorted(set(mine) & set(base))
    diffs = [100 * (mine[s] - base[s]) for s in common]
    return f"{statistics.fmean(diffs):+.1f}" if diffs else ""


def plot(d: dict[str, Any]) -> str:
    fams = list(d["families"])
    fig, axes = plt.subplots(1, len(fams), figsize=(6 * len(fams), 4.2), dpi=110)
    for ax, family in zip(axes, fams, strict=True):
        f = d["families"][family]
        for rec in f["recipes"]:
            if not rec["method"].startswith("LCS"):
                continue
            g = [r["gamma"] for r in rec["rows"]]
            mean = [100 * r["mean"] for r in rec["rows"]]
            lo = [100 * min(r["seeds"]) for r in rec["rows"]]
            hi = [100 * max(r["seeds"]) for r in rec["rows"]]
            (line,) = ax.plot(g, mean, "o-", ms=3, lw=1.6, label=rec["label"])
            ax.fill_between(g, lo, hi, color=line.get_color(), alpha=0.12)
        for gamma, vals in f["reference"].items():
            ax.errorbar(
                [float(gamma)],
                [100 * statistics.fmean(vals)],
                yerr=[
                    [100 * (statistics.fmean(vals) - min(vals))],
                    [100 * (max(vals) - statistics.fmean(vals))],
                ],
                fmt="k*",
                ms=10,
                label=f"trained for γ {gamma} alone (BN)",
            )
        for rec in f["recipes"]:
            if rec["method"].startswith("LCS"):
                continue
            gamma = next(x for x in f["levels"] if _trained_for(rec, x))
            vals = _at(rec, gamma)
            ax.plot([gamma], [100 * statistics.fmean(vals)], "kx", ms=9, label=rec["label"])
        if family == "structured":
            ax.invert_xaxis()
            ax.set_ylim(75, 100)
        else:
            ax.set_xlim(0.45, 1.0)
            ax.set_ylim(60, 100)
        ax.set_xlabel(AXIS[family] + " (more compressed →)")
        ax.set_ylabel("test accuracy (%): mean, band = seed range")
        ax.set_title(f"{family} LCS+P recipes, small CNN on digits")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5)
    fig.tight_layout()
    name = "accuracy_ab.png"
    fig.savefig(PLOTS / name)
    plt.close(fig)
    return name


def section(d: dict[str, Any], note: str) -> str:
    parts = [
        "## Issue 19: LCS+P training recipes at strong compression (A/B)",
        note,
        f"![recipes](benchmarks/results/plots/{plot(d)})",
    ]
    for family, f in d["families"].items():
        parts.append(
            f"**{family.capitalize()}**, LCS+P+IN (Δ = mean − the BatchNorm network "
            "trained for that level alone):"
        )
        parts.append(family_table(family, f))
    return "\n\n".join(parts)
