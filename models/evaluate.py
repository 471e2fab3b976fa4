"""Accuracy of a subspace network at a grid of levels, as a table, JSON or PNG plot."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from models import families
from models.compression import LevelCompressor
from models.data import Split
from models.networks import SubspaceNet


def normalise(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 (B, C, H, W) → float, scaled to [0, 1] and standardised per channel."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (images.float() / 255 - m) / s


@torch.no_grad()
def accuracy_at_levels(
    net: SubspaceNet,
    split: Split,
    alphas: Sequence[float],
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 500,
) -> list[dict[str, float]]:
    """One row per α: {alpha, gamma, accuracy} with accuracy in [0, 1]."""
    was_training = net.training
    net.eval()
    levels = LevelCompressor(net, cache=True)
    rows = []
    for alpha in alphas:
        level = levels(alpha)
        correct = 0
        for i in range(0, len(split), batch_size):
            x = normalise(split.images[i : i + batch_size], mean, std)
            correct += int((net(x, level).argmax(1) == split.labels[i : i + batch_size]).sum())
        rows.append({"alpha": level.alpha, "gamma": level.gamma, "accuracy": correct / len(split)})
    net.train(was_training)
    return rows


def format_table(rows: Sequence[dict[str, float]], family: str) -> str:
    lines = [f"{'α':>7}  {families.get(family).gamma_label:>9}  {'accuracy':>8}"]
    lines += [f"{r['alpha']:7.3f}  {r['gamma']:9.3f}  {100 * r['accuracy']:7.2f}%" for r in rows]
    return "\n".join(lines)


def plot(curves: dict[str, Sequence[dict[str, float]]], path: str, title: str, xlabel: str) -> None:
    """Accuracy against γ, one line per curve (matplotlib, written as PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, rows in curves.items():
        ax.plot([r["gamma"] for r in rows], [100 * r["accuracy"] for r in rows], "o-", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
