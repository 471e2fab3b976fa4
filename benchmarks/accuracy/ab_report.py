"""ACCURACY.md's section on issue 19's recipe A/B, and its plot, from accuracy_ab.json."""

from __future__ import annotations

import statistics
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from benchmarks.accuracy.plan import AXIS
from benchmarks.report import PLOTS, table

NAMES = {"structured": "width", "unstructured": "pruned", "quantization": "bits"}


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
        head += [f"{NAMES[family]} γ {g:g}: mean (per seed)", "Δ", "Δ vs control, same seeds"]
    head.append("min per run (1 thread, loaded)")
    refs = {g: d["reference"][f"{g:g}"] for g in levels}
    rows: list[list[Any]] = []
    ref_row: list[Any] = ["trained for γ alone (BatchNorm), make accuracy", 10, "0, 1, 2"]
    for g in levels:
        ref_row += [_cell(refs[g]), "", ""]
    rows.append([*ref_row, ""])
    for rec in d["recipes"]:
        row: list[Any] = [rec["label"], rec["epochs"], ", ".join(map(str, rec["seeds"]))]
        for g in levels:
            if not _trained_for(rec, g):
                row += ["—", "", ""]
                continue
            vals = _at(rec, g)
            gap = 100 * (statistics.fmean(vals) - statistics.fmean(refs[g]))
            row += [_cell(vals), f"{gap:+.1f}", _paired(rec, _control(rec, d["recipes"]), g)]
        times = [t for t in rec["train_s"] if t]
        row.append(f"{statistics.fmean(times) / 60:.1f}" if times else "")
        rows.append(row)
    return table(head, rows)


def _control(rec: dict[str, Any], recipes: list[dict[str, Any]]) -> dict[str, Any] | None:
    """What a recipe is compared with: make accuracy's own run of its method (from_plan), else
    the family's row (a)."""
    same = [c for c in recipes if c.get("from_plan") and c["method"] == rec["method"]]
    return next(iter(same), None) or next((c for c in recipes if c["key"].endswith("-a")), None)


def _paired(rec: dict[str, Any], today: dict[str, Any] | None, gamma: float) -> str:
    """Mean difference to the control over the seeds both ran (seed noise is shared)."""
    if today is None or rec is today or not rec["method"].startswith("LCS"):
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
        elif family == "quantization":
            ax.invert_xaxis()
            ax.set_ylim(85, 100)
        else:
            ax.set_xlim(0.45, 1.0)
            ax.set_ylim(60, 100)
        ax.set_xlabel(AXIS[family] + " (more compressed →)")
        ax.set_ylabel("test accuracy (%): mean, band = seed range")
        ax.set_title(f"{family} LCS recipes, small CNN on digits")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6.5)
    fig.tight_layout()
    name = "accuracy_ab.png"
    fig.savefig(PLOTS / name)
    plt.close(fig)
    return name


SETUP = (
    "`python -m benchmarks.accuracy.ab` (recipes in `benchmarks/accuracy/ab.py`; runs cached "
    "per recipe × seed in `benchmarks/results/accuracy-ab/`), run as `nice -n 19` with two "
    "trainings of one thread at a time, on a machine shared with four other agents (load "
    "average 6–10 on 2 cores), so the minutes per run are not comparable with `make "
    "accuracy`'s. Same network, data, 10 epochs and evaluation as the tables above; rows (a) "
    "and the BatchNorm networks are `make accuracy`'s own runs (recipe 2). *Compressed-end "
    "mixture* (`--compressed-mix 0.5 --compressed-span 0.25`): each uniform α is, with chance "
    "½, drawn from the most compressed quarter of the α range instead, i.e. α ~ ½·U(α_min, "
    "α_max) + ½·U(α_min, α_min + ¼(α_max − α_min)); for structured that is the sandwich's two "
    "middle members (its α_min member is already trained every step), for unstructured LCS+P "
    "the one draw a step after the dense warm-up. `Δ vs control, same seeds` is the paired "
    "difference on the seeds both recipes ran, which cancels most of the seed-to-seed "
    "spread; the control is row (a), or for the line recipes make accuracy's own LCS+L run of "
    "the same length. A run that was stopped and resumed from its last finished epoch says "
    "so below."
)


# What the runs above show (written from them; re-read if they are re-run).
FINDINGS = """**What it shows.**

- **Unstructured: adopted (e)** as unstructured LCS+P's default (`Family.training_defaults`;
  recipe 3, the tables above): dense for 50 % of training instead of the reference's 80 %, then
  the compressed-end mixture. Recipe 2 gave 10 epochs × 32 steps × 20 % = 64 sparse steps, about
  3 of them at 90–95 % pruned, and one seed in three collapsed at 95 % (12.7 %); (e) has 160
  sparse steps, 5/8 of them at 73–97.5 % pruned. Over 3 seeds it is 1.0 point below TopK 0.9 and
  1.2 below TopK 0.95 (recipe 2: −4.6, −32.8; paired gain +3.6 and +31.5), 0.3 and 0.9 below at
  50 / 75 %, and 84.1 % at 97.5 % pruned where recipe 2 reached 34.2 %. The price: 0.3–1.3
  points at 0–80 % pruned (the most at 70 %: 97.1 against 98.4). The goal (within 1 point) is met
  at 50, 75 and 90 % (90 % at exactly −1.0) and missed by 0.2 at 95 %. Row (b), the mixture
  with the reference's 80 % warm-up, separates the two changes: the mixture alone already stops
  the collapse (90 %: 96.5, 96.6) but reaches only 86.9 % at 95 % (88.8, 85.0); the longer
  sparse phase is what brings 95 % within reach.
- **(f) = (e) + `--distill`** (a dense teacher pass each step, 2× the passes): it removes (e)'s
  price at 0–80 % (98.7 % at 50 % pruned, +0.5 paired; 98.0 at 75 %) but costs 1.9 points at
  95 % (paired, seeds 0–1; seed 0 92.9 against 96.7). Not adopted: the goal's worst cell is 95 %.
- **Unstructured at 20 epochs** (`make accuracy`, every LCS and TopK network, after structured
  showed the longer schedule pays): LCS+P with (e) is within 0.2 points of the TopK network at
  50 / 75 / 90 / 95 % pruned (+0.1 / −0.1 / −0.2 / −0.2; the TopK networks gained too, 97.6 %
  at 95 % against 96.7 at 10 epochs), and LCS+L, whose dense end had only ~80 steps in 10
  epochs, reaches 98.2 % dense (94.8 at 10) and −1.3 / −1.6 / −1.7 / −2.5 at those levels (−4.9
  … −8.9 at 10).
- **Structured: nothing adopted as `make accuracy`'s default.** The mixture (b) moved width 0.25
  by +0.2 (paired, 2 seeds, within the spread) and cost 1.6 points at width 0.5: the sandwich
  already trains the width-0.25 member every step, so more middle draws near it add no signal
  there and take it from the middle. Distillation (c'): seed 1 +1.6 at 0.25, −0.6 at 0.5; seed 0
  (the earlier one-seed A/B below) +0.2 / +0.6: about +0.9 / 0.0, inside the seed spread. **20
  epochs (d)** is the one that moves it: over 3 seeds width 0.25 96.1 % (95.2 / 96.7 / 96.5;
  paired +5.2 over 10 epochs) and width 0.5 98.1 % (97.6 / 98.6 / 98.2), within 1 point of the
  width-0.25 and width-0.5 BatchNorm networks (−0.8, +0.2). Seed 0 was stopped after epoch 5 and
  resumed from its state, so its α draws after that differ from an uninterrupted run's. Note the
  compute: 20 epochs × 4 sandwich passes against 10 epochs × 1 pass for each single-width network,
  though one LCS+P network serves every width. Adopted: `make accuracy` now trains the
  structured LCS networks and every single-width network 20 epochs (`plan.FAMILY_EPOCHS`; the
  runs are cached per epoch count), so the structured table above compares runs of equal
  length — there the single-width networks gain too (width 0.25: 97.5 % at 20 epochs against
  96.9 % at 10) and LCS+P at 0.25 stays 1.2 points short.
- **Structured: in-place distillation at 20 epochs (c'') adopted** as `make accuracy`'s
  structured LCS+P (`plan.OVERRIDES`, recipe 4; the structured table above). At 10 epochs it
  was inside the seed spread
  (c': the teacher, the full-width member, is itself weak for most of a short run); at 20
  epochs, over 3 seeds, width 0.25 reaches 97.1 % (96.5 / 98.1 / 96.7) against 96.1 % for
  plain LCS+P (paired +1.3 / +1.4 / +0.2) and 0.4 below the width-0.25 BatchNorm network of
  20 epochs (97.5 %); width 0.5 98.4 against 98.1, width 1 99.0 against 98.9, no width more
  than 0.1 below plain. It costs nothing extra here: the sandwich already runs the full-width
  member every step, and its detached softmax is the narrower members' target.
- **Line recipes (LCS+L) at 20 epochs, with `make accuracy`'s own LCS+L runs as the paired
  control.** Unstructured LCS+L + `--distill` (a dense teacher pass): 90 % pruned 95.8 against
  96.5 (paired −1.3 / −0.4 / −0.4), 95 % pruned 93.1 against 95.1 (−4.1 / −1.8 / 0.0): it hurts
  where the line misses the goal, as (f) did for the point; not adopted, and unstructured
  LCS+L stays 1.6–2.5 points short at 75–95 % pruned. Quantization LCS+L + `--distill` (an
  8-bit teacher): 8 bits 98.9 against 98.5 (+0.9 / +0.3 / +0.1), 4 bits 98.4 against 98.3
  (+0.6 / +0.2 / −0.5): inside the seed spread at 4 bits, and plain LCS+L already meets the
  goal there (−0.0 … −0.4); not adopted, so the shipped quantization model and `make accuracy`
  keep one recipe per family.
- **The line's own recipe, 20 epochs, against the same control**: its pruning ramp over 50 % of
  training (not 80 %) costs 1.2 / 1.7 points at 75 / 90 % pruned (paired; 95 %: −0.1); the
  ramp with half the draws from the compressed quarter gives that back at 90 % (−0.2) but
  costs 1.2 at 50 %: neither adopted.
- **Unstructured LCS+L at 30 epochs: adopted.** Over 3 seeds, paired against 20 epochs: +0.9 /
  +1.0 / +1.0 / +1.4 at 50 / 75 / 90 / 95 % pruned (95 %: 96.5 % = 97.1 / 96.5 / 96.0 against
  95.1). The line was short of training, not of a recipe: 10 more epochs moved every level,
  where distillation, the shorter ramp and the mixture raised none. `make accuracy`'s unstructured
  family now trains every network 30 epochs, the TopK networks included (the table above;
  its LCS+L records are these three runs, the same method, seeds and code).
- **The width-0.25 gap is mostly the norm, not weight sharing** (departure 8's control). A
  width-0.25 small CNN trained alone with InstanceNorm, the norm every LCS model here uses,
  reaches 86.3 % (88.3 / 78.3 / 92.4) against 96.9 % with BatchNorm; structured LCS+P at 0.25
  (91.0 %) is ~5 points *above* its like-for-like network. At 20 epochs the same control
  reaches 96.0 % (95.8 / 95.2 / 97.0) against 97.5 % with BatchNorm, and structured LCS+P at
  20 epochs 96.3 %: sharing its weights with every wider member costs the width-0.25 network
  nothing measurable (+0.3 over its InstanceNorm twin); the 1.2 points the goal misses are the
  norm's 1.5. Likely cause: InstanceNorm right before
  global average pooling standardises every channel per image, so after the ReLU the pooled value
  of a channel depends only on the shape of its spatial distribution, not its strength; 128
  channels at full width carry enough of that (98.5 %), 32 at width 0.25 do not. Untested next
  step (outside this helper's files: `models/networks/small_cnn.py` and a norm setting stored in
  checkpoints): one group (LayerNorm) or no norm on the last convolution, then this A/B again.
"""


def section(d: dict[str, Any], findings: str = FINDINGS) -> str:
    parts = [
        "## Issue 19: LCS training recipes at strong compression (A/B)",
        SETUP,
        f"![recipes](benchmarks/results/plots/{plot(d)})",
    ]
    for family, f in d["families"].items():
        parts.append(
            f"**{family.capitalize()}**, InstanceNorm LCS (LCS+P unless the recipe says LCS+L; "
            "Δ = mean − the BatchNorm network trained for that level alone):"
        )
        parts.append(family_table(family, f))
    parts.append(findings)
    return "\n\n".join(parts)
