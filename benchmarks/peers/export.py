"""The default model frozen at γ = 1, exported once for every peer: TorchScript and ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models import LevelCompressor, checkpoint
from models.export import StaticNet, to_onnx


def export(folder: Path) -> Path:
    """model.pt (TorchScript), model.onnx and meta.json in `folder`, made by the project's own
    export (models/export.py): the network lcs-serve's tier 2 serves at full width."""
    folder.mkdir(parents=True, exist_ok=True)
    net, meta, _ = checkpoint.load()
    level = LevelCompressor(net, cache=True)(meta.spec.calc.alpha(1.0))
    # Two images: per-instance norms of a 1×1 map refuse a batch of one when traced.
    example = torch.randn(2, *meta.input_size, generator=torch.Generator().manual_seed(0))
    (folder / "model.onnx").write_bytes(to_onnx(net, level, example))
    with torch.no_grad():
        traced = torch.jit.trace(StaticNet(net, level).eval(), example, check_trace=False)
    traced.save(str(folder / "model.pt"))
    meta_out = {
        "input_size": list(meta.input_size),
        "mean": list(meta.mean),
        "std": list(meta.std),
        "class_names": list(meta.class_names),
        "gamma": level.gamma,
        "alpha": level.alpha,
    }
    (folder / "meta.json").write_text(json.dumps(meta_out))
    return folder
