"""Training a compressible subspace (paper Figure 1b): sample α, compress, sum losses, one step."""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import checkpoint, families
from models.compression import compress
from models.data import Dataset, load_dataset, random_shift
from models.evaluate import accuracy_at_levels, format_table, normalise
from models.families import Draw, Schedule
from models.levels import FAMILIES, KINDS, SubspaceSpec
from models.networks import ARCHITECTURES, SubspaceNet, create_model

log = logging.getLogger("lcs.train")


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "small_cnn"
    family: str = "structured"
    kind: str = "point"
    dataset: str = "digits"
    data_root: str | None = None
    epochs: int = 20
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    seed: int = 0
    shift: int = 2  # random-shift augmentation, pixels
    # Quantization: activations are quantized after this fraction of training (the reference's
    # 0.8); LCS+P trains 8 bits until then and a random bit width per layer after.
    act_quant_start: float = 0.8
    # Unstructured: the dense warm-up, as in the reference code. LCS+P trains dense for it;
    # LCS+L ramps the pruned fraction from 0 to γ(α) over it. None = the family's default
    # (Family.training_defaults: 0.8 as the reference, 0.5 for unstructured LCS+P).
    prune_warmup: float | None = None
    # β·cos²(ω1, ω2) for lines (structured: on the norm scales, the only line parameters). The
    # paper's text does not use it (β = 0); the reference code has β = 1.
    line_beta: float = 0.0
    # In-place distillation (Universally Slimmable Networks): the most accurate member learns
    # from the labels, every other member from its detached softmax.
    distill: bool = False
    # Sampling weighted toward the compressed end: each uniform α is, with this chance, drawn
    # from the most compressed `compressed_span` of the range instead (0 = the paper's uniform).
    # None = the family's default (0 but for unstructured LCS+P: 0.5 of the lowest 0.25).
    compressed_mix: float | None = None
    compressed_span: float | None = None
    max_train: int | None = None  # cap on training images (quick runs and tests)
    # Baselines (benchmarks/accuracy): BatchNorm, and training at given levels γ instead of
    # sampling the subspace — every γ in the tuple each step (Discrete), or one (fixed level).
    norm: str = "group"
    train_gammas: tuple[float, ...] = ()
    out: str = "runs/model.safetensors"
    # Per-epoch training state for --resume (default: OUT with .state.pt). Keep it outside
    # models/weights: it is a pickle-format file, never served and never committed.
    state: str | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}; choose {sorted(ARCHITECTURES)}")
        if self.family not in FAMILIES or self.kind not in KINDS:
            raise ValueError(f"family must be one of {FAMILIES}, kind one of {KINDS}")
        # Resolve the family's defaults, so the checkpoint records what training used.
        defaults = families.get(self.family).training_defaults(self.kind, not self.train_gammas)
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("epochs and batch size must be ≥ 1 and the learning rate > 0")
        assert self.prune_warmup is not None and self.compressed_mix is not None
        assert self.compressed_span is not None
        if not (0 <= self.act_quant_start <= 1 and 0 <= self.prune_warmup <= 1):
            raise ValueError(
                "act_quant_start and prune_warmup are fractions of training, in [0, 1]"
            )
        if self.line_beta < 0:
            raise ValueError("line_beta must be ≥ 0")
        if not (0 <= self.compressed_mix <= 1 and 0 < self.compressed_span <= 1):
            raise ValueError("compressed_mix must lie in [0, 1] and compressed_span in (0, 1]")
        spec = SubspaceSpec(self.family, self.kind, norm=self.norm)
        for g in self.train_gammas:
            spec.calc.alpha(g)  # raises if γ is outside the family's range

    def schedule(self, done: float) -> Schedule:
        """Where training stands after the fraction `done`: this run's warm-ups and sampling."""
        assert self.prune_warmup is not None and self.compressed_mix is not None
        assert self.compressed_span is not None
        return Schedule(
            done,
            self.prune_warmup,
            self.act_quant_start,
            self.compressed_mix,
            self.compressed_span,
        )


def training_draws(
    spec: SubspaceSpec, cfg: TrainConfig, rng: random.Random, done: float
) -> list[Draw]:
    """This step's members, most accurate first: the given levels for a baseline (every γ each
    step), else the family's sampling of α_n at this point of training (§3.3)."""
    at = cfg.schedule(done)
    if cfg.train_gammas:
        alphas = sorted((spec.calc.alpha(g) for g in cfg.train_gammas), reverse=True)
        return [Draw(a, spec.handler.warmup_gamma(spec.calc, a, at)) for a in alphas]
    draws = spec.handler.sample(spec.calc, spec.kind, rng, at)
    teacher = Draw(spec.calc.alpha_max)  # the least compressed end: dense for unstructured
    if cfg.distill and draws[0] != teacher:
        draws = [teacher, *draws]
    return draws


def soft_cross_entropy(logits: Tensor, target_probs: Tensor) -> Tensor:
    """Mean over the batch of −Σ_c p_c · log softmax(logits)_c."""
    return -(target_probs * F.log_softmax(logits, dim=1)).sum(1).mean()


def members_loss(outputs: list[Tensor], y: Tensor, distill: bool) -> Tensor:
    """Σ over members of their losses. Plain LCS: cross-entropy on the labels for every member.
    In-place distillation: the first member (the most accurate) on the labels, every other on
    the first's softmax, detached so that no student gradient reaches the teacher's output."""
    if not distill:
        return torch.stack([F.cross_entropy(out, y) for out in outputs]).sum()
    teacher = outputs[0]
    soft = F.softmax(teacher.detach(), dim=1)
    losses = [F.cross_entropy(teacher, y)] + [soft_cross_entropy(o, soft) for o in outputs[1:]]
    return torch.stack(losses).sum()


class _Step(nn.Module):
    """forward(x, α) = the network compressed to α, so DistributedDataParallel can wrap it."""

    def __init__(self, net: SubspaceNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor, draw: Draw) -> Tensor:
        return self.net(x, compress(self.net, draw.alpha, draw.gamma, draw.per_layer))


def line_regulariser(net: SubspaceNet, beta: float) -> Tensor | float:
    """β·cos²(ω1, ω2) for a line (every family: structured LCS+L's line parameters are its norm
    scales and shifts), 0 for a point or β = 0."""
    if not beta or net.spec.kind != "line":
        return 0.0
    return beta * line_penalty(net)


def line_penalty(net: SubspaceNet) -> Tensor:
    """cos²(ω1, ω2) over all line-layer weights (norm scales included; for structured LCS+L
    they are the only ones), flattened into one vector each."""
    pairs = [(m.weight, m.weight_2) for m in net.subspace_layers() if m.line]
    w1 = torch.cat([a.flatten() for a, _ in pairs])
    w2 = torch.cat([b.flatten() for _, b in pairs])
    return F.cosine_similarity(w1, w2, dim=0) ** 2


def _distributed() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def train(cfg: TrainConfig, data: Dataset | None = None, progress: bool = True) -> Path:
    """Train, evaluate on the held-out split, save a checkpoint; returns its path."""
    rank, world = _distributed()
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed + rank)
    gen = torch.Generator().manual_seed(cfg.seed)
    data = data or load_dataset(cfg.dataset, cfg.data_root)
    mean, std = data.normalisation()
    spec = SubspaceSpec(cfg.family, cfg.kind, norm=cfg.norm)
    net = create_model(cfg.arch, spec, len(data.class_names), data.input_size[0])
    step: nn.Module = _Step(net)
    if world > 1:
        step = nn.parallel.DistributedDataParallel(step)
    train_x, train_y = data.train.images, data.train.labels
    if cfg.max_train:  # a seeded random subset: the bundled digits are sorted by class
        keep = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(cfg.seed))
        train_x, train_y = train_x[keep[: cfg.max_train]], train_y[keep[: cfg.max_train]]
    per_epoch = -(-len(train_y) // (cfg.batch_size * world))
    total = per_epoch * cfg.epochs
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=total)
    state_path = Path(cfg.state) if cfg.state else Path(cfg.out).with_suffix(".state.pt")
    start = _resume(state_path, net, opt, sched) if cfg.resume else 0

    for epoch in range(start, cfg.epochs):
        net.train()
        t0, losses = time.monotonic(), []
        order = torch.randperm(len(train_y), generator=gen)[rank::world]
        batches = order.split(cfg.batch_size)
        bar = _bar(batches, f"epoch {epoch + 1}/{cfg.epochs}", progress and rank == 0)
        for i, idx in enumerate(bar):
            done = (epoch * per_epoch + i) / total  # fraction of training behind us
            at = cfg.schedule(done)
            if spec.handler.activations_quantized(at):
                net.act_quant_enabled.fill_(True)
            x = normalise(random_shift(train_x[idx], cfg.shift, gen), mean, std)
            y = train_y[idx]
            draws = training_draws(spec, cfg, rng, done)
            loss = members_loss([step(x, d) for d in draws], y, cfg.distill)
            loss = loss + line_regulariser(net, cfg.line_beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if rank == 0:
            _save_state(state_path, net, opt, sched, epoch + 1)
            log.info(
                "epoch %d/%d: mean loss %.4f, %.0f s",
                epoch + 1,
                cfg.epochs,
                sum(losses) / max(1, len(losses)),
                time.monotonic() - t0,
            )

    if rank != 0:
        return Path(cfg.out)
    rows = accuracy_at_levels(net, data.test, spec.calc.grid(), mean, std)
    log.info("held-out accuracy:\n%s", format_table(rows, spec.family))
    meta = checkpoint.Metadata(
        arch=cfg.arch,
        family=cfg.family,
        kind=cfg.kind,
        calculator=spec.calc.to_dict(),
        num_classes=len(data.class_names),
        class_names=data.class_names,
        input_size=list(data.input_size),
        mean=mean,
        std=std,
        dataset=data.name,
        accuracy=rows,
        training=asdict(cfg) | {"world_size": world},
        norm=cfg.norm,
    )
    checkpoint.save(cfg.out, net, meta)
    return Path(cfg.out)


def _bar(batches, desc: str, show: bool):
    if not show:
        return batches
    from tqdm import tqdm

    return tqdm(batches, desc=desc, leave=False, dynamic_ncols=True)


def _save_state(path: Path, net: nn.Module, opt, sched, epoch: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": net.state_dict(),
        "opt": opt.state_dict(),
        "sched": sched.state_dict(),
        "epoch": epoch,
    }
    torch.save(state, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def _resume(path: Path, net: nn.Module, opt, sched) -> int:
    if not path.exists():
        log.info("no training state at %s; starting from scratch", path)
        return 0
    # weights_only=True: tensors and plain containers only, no arbitrary unpickling.
    state = torch.load(path, weights_only=True)
    net.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    log.info("resumed from %s after epoch %d", path, state["epoch"])
    return int(state["epoch"])
