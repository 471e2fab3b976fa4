"""What `make accuracy` trains: LCS and the paper's baselines per family, and where each is read."""

from __future__ import annotations

from dataclasses import dataclass

# The training recipe's version: part of every cached run's settings, so a change to models/'
# training defaults retrains instead of reusing stale runs. 2 = issue 19 (the reference's
# sampling, warm-ups, GroupNorm groups and line initialisation; exact grid widths).
RECIPE = 2
# Recipe 2's sampling defaults. A method whose family now defaults to something else for it
# (Family.training_defaults; issue 19's A/B: unstructured LCS+P) is recipe 3, so only its runs
# retrain.
RECIPE_2_DEFAULTS = {"prune_warmup": 0.8, "compressed_mix": 0.0, "compressed_span": 0.25}
# Further TrainConfig fields per method: recipe 4. In-place distillation for structured LCS+P
# (issue 19's A/B row (c''), 20 epochs, 3 seeds: width 0.25 97.1 % against 96.1 plain, paired
# +1.3 / +1.4 / +0.2; width 0.5 98.4 against 98.1; no width more than 0.1 below plain).
OVERRIDES: dict[str, dict[str, bool]] = {"structured-lcspin": {"distill": True}}
# Epochs per run, by family: 20 (structured LCS+P at 20 epochs gained 5.2 points at width
# 0.25 over 10, paired, 3 seeds; the digits give 32 steps an epoch, so 10 epochs left LCS+L
# ~80 steps at its dense end, and quantization LCS+L 2.3-2.6 points short at 4-8 bits);
# unstructured 30 (its LCS+L at 20 was 1.6-2.5 points short at 75-95 % pruned; the A/B's
# u-l30 gained 0.5-1.7 points at 90-95 % on the seeds it paired). Within a family every LCS
# network and every network trained for one level alone train equally long, so each cell of
# the goal compares runs of equal length.
# Discrete and Sandwich (baselines outside the goal, 4 passes a step) stay at 10.
DEFAULT_EPOCHS = 10
FAMILY_EPOCHS = {"structured": 20, "unstructured": 30, "quantization": 20}
EPOCHS = {"structured-discrete": 10, "structured-sandwich": 10}
STRUCTURED_WIDTHS = (0.25, 0.5, 0.75, 1.0)  # Discrete's widths, and the single-width networks
TOPK_TARGETS = (0.5, 0.75, 0.9, 0.95)  # fraction pruned each unstructured baseline trains at
BIT_WIDTHS = (3, 4, 5, 6, 7, 8)

# Levels every network is evaluated at, most accurate first (γ: width, fraction pruned, bits).
GRIDS: dict[str, tuple[float, ...]] = {
    "structured": tuple(1.0 - i / 16 for i in range(13)),
    "unstructured": (0.0, 0.25, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.975),
    "quantization": (8.0, 7.0, 6.0, 5.0, 4.0, 3.0),
}
AXIS = {
    "structured": "width factor γ",
    "unstructured": "fraction of weights pruned γ",
    "quantization": "bit width γ",
}


@dataclass(frozen=True)
class Method:
    """One way of training a network for a family; `role` says how the report reads it:
    "lcs" (ours), "baseline" (one network read at every level) or "single" (a network trained
    for one level alone, the yardstick the goal compares LCS against at that level)."""

    label: str
    family: str
    role: str
    kind: str = "point"
    norm: str = "group"
    train_gammas: tuple[float, ...] = ()

    @property
    def name(self) -> str:
        slug = self.label.lower().replace("+", "").replace(" ", "-").replace("=", "")
        return f"{self.family}-{slug}"

    @property
    def passes(self) -> int:
        """Forward/backward passes per step, the cost that orders the work queue."""
        if self.train_gammas:
            return len(self.train_gammas)
        return 4 if self.family == "structured" else 1


def epochs(m: Method) -> int:
    return EPOCHS.get(m.name, FAMILY_EPOCHS.get(m.family, DEFAULT_EPOCHS))


def recipe(m: Method) -> int:
    """The recipe version a method trains with today (part of its cached runs' settings)."""
    from models.families import get

    if overrides(m):
        return 4
    defaults = get(m.family).training_defaults(m.kind, sampled=not m.train_gammas)
    return RECIPE if defaults == RECIPE_2_DEFAULTS else 3


def overrides(m: Method) -> dict[str, bool]:
    """The TrainConfig fields a method sets beyond its family's defaults (plan.OVERRIDES)."""
    return OVERRIDES.get(m.name, {})


def methods(family: str) -> list[Method]:
    # small_cnn normalises with one group per channel (InstanceNorm) in every family.
    out = [
        Method("LCS+P+IN", family, "lcs"),
        Method("LCS+L+IN", family, "lcs", kind="line"),
    ]
    if family == "structured":
        out += [
            Method("Discrete", family, "baseline", norm="batch", train_gammas=STRUCTURED_WIDTHS),
            Method("Sandwich", family, "baseline", norm="batch"),
        ]
        out += [single(family, w, f"width {w:g}") for w in STRUCTURED_WIDTHS]
    elif family == "unstructured":
        out += [single(family, t, f"TopK {t:g}") for t in TOPK_TARGETS]
    else:
        out += [single(family, float(b), f"{b} bits") for b in BIT_WIDTHS]
    return out


def single(family: str, gamma: float, label: str) -> Method:
    # The paper's per-level baselines are standard networks: BatchNorm, trained at one level.
    return Method(label, family, "single", norm="batch", train_gammas=(gamma,))
