"""The `lcs train`, `lcs eval` and `lcs profile` sub-commands (argument parsing only)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from typing import TYPE_CHECKING

from models.data import DATASETS
from models.levels import FAMILIES, KINDS, NORMS
from models.networks import ARCHITECTURES

if TYPE_CHECKING:
    from models.profile import Runner


def add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", default="small_cnn", choices=sorted(ARCHITECTURES))
    p.add_argument("--family", default="structured", choices=FAMILIES)
    p.add_argument("--kind", default="point", choices=KINDS, help="point = LCS+P, line = LCS+L")
    p.add_argument("--dataset", default="digits", choices=DATASETS, help="digits32: padded")
    p.add_argument("--data-root", help="directory for cifar10 / folder datasets")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shift", type=int, default=2, help="random-shift augmentation in pixels")
    p.add_argument("--act-quant-start", type=float, default=0.8)
    p.add_argument(
        "--prune-warmup",
        type=float,
        help="unstructured: the dense warm-up's fraction (default: 0.5 for LCS+P, 0.8 for LCS+L)",
    )
    p.add_argument("--line-beta", type=float, default=0.0, help="β·cos²(ω1, ω2) for lines")
    p.add_argument(
        "--distill",
        action="store_true",
        help="in-place distillation: members learn from the most accurate one's softmax",
    )
    p.add_argument(
        "--compressed-mix",
        type=float,
        metavar="P",
        help="chance each uniform α is drawn from the compressed end instead (0: uniform; "
        "default 0.5 for unstructured LCS+P, else 0)",
    )
    p.add_argument(
        "--compressed-span",
        type=float,
        metavar="S",
        help="the compressed end for --compressed-mix: this fraction of the α range",
    )
    p.add_argument("--max-train", type=int, help="use at most this many training images")
    p.add_argument("--norm", default="group", choices=NORMS, help="batch: baselines only")
    p.add_argument(
        "--train-gammas",
        type=float,
        nargs="+",
        default=(),
        metavar="γ",
        help="baselines: train at these levels every step instead of sampling the subspace",
    )
    p.add_argument("--out", default="runs/model.safetensors")
    p.add_argument("--state", help="per-epoch training state file (default: OUT's .state.pt)")
    p.add_argument("--resume", action="store_true", help="continue from the --state file")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: all cores)")
    p.add_argument("--no-progress", action="store_true")


def run_train(args: argparse.Namespace) -> int:
    import torch

    from models.train import TrainConfig, train

    if args.threads:
        torch.set_num_threads(args.threads)
    names = {f.name for f in fields(TrainConfig)}
    try:
        given = {k: v for k, v in vars(args).items() if k in names}
        cfg = TrainConfig(**given | {"train_gammas": tuple(args.train_gammas)})
        path = train(cfg, progress=not args.no_progress)
    except (ValueError, FileNotFoundError) as e:
        print(f"lcs train: {e}", file=sys.stderr)
        return 2
    print(f"saved {path}")
    return 0


def add_eval(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", help="checkpoint file (default: the bundled model)")
    p.add_argument("--dataset", default=None, help="default: the one the model was trained on")
    p.add_argument("--data-root")
    p.add_argument("--levels", type=int, default=7, help="number of α values on the grid")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", metavar="PNG", help="write accuracy against γ as a PNG plot")


def run_eval(args: argparse.Namespace) -> int:
    from models import checkpoint
    from models.data import load_dataset
    from models.evaluate import accuracy_at_levels, format_table, plot

    try:
        net, meta, _ = checkpoint.load(args.checkpoint)
        name = args.dataset or meta.dataset  # load_dataset maps recorded names back
        data = load_dataset(name, args.data_root, tuple(meta.input_size[1:]))  # type: ignore[arg-type]
    except (ValueError, FileNotFoundError) as e:
        print(f"lcs eval: {e}", file=sys.stderr)
        return 2
    rows = accuracy_at_levels(net, data.test, meta.spec.calc.grid(args.levels), meta.mean, meta.std)
    print(json.dumps(rows, indent=2) if args.json else format_table(rows, meta.family))
    if args.plot:
        plot({meta.spec.name: rows}, args.plot, f"{meta.arch} on {data.name}", f"γ ({meta.family})")
    return 0


def add_profile(p: argparse.ArgumentParser) -> None:
    p.add_argument("arch", choices=sorted(ARCHITECTURES))
    p.add_argument("--family", default="structured", choices=FAMILIES)
    p.add_argument("--kind", default="point", choices=KINDS)
    p.add_argument("--levels", type=float, nargs="+", help="γ values (default: Table 2 widths)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=10, help="rounds, each timing every level")
    p.add_argument("--threads", type=int)
    p.add_argument("--json", action="store_true")


def run_profile(args: argparse.Namespace, runner: Runner | None = None) -> int:
    """`runner` times each level on a tier other than PyTorch (the server's ONNX Runtime one:
    models/ knows torch only, so server/cli.py passes it in)."""
    import torch

    from models.profile import format_profile, profile, torch_runner

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        rows = profile(
            args.arch,
            args.levels,
            args.family,
            args.kind,
            args.batch,
            args.repeats,
            runner or torch_runner,
        )
    except ValueError as e:
        print(f"lcs profile: {e}", file=sys.stderr)
        return 2
    print(json.dumps(rows, indent=2) if args.json else format_profile(args.arch, rows, args.batch))
    return 0
