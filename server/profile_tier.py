"""`lcs profile --tier onnx`: each level timed as tier 2 serves it, an ONNX Runtime session."""

from __future__ import annotations

from collections.abc import Callable

import torch

from models import Level, SubspaceNet
from models.profile import Runner, torch_runner
from server.tier2 import Tier2Failure, prepare

TOLERANCE = 1e-3  # the daemon's default LCS_TIER2_TOLERANCE


def onnx_runner(threads: int | None = None) -> Runner:
    """Sessions as the daemon opens them (exported, verified against PyTorch, `threads` ORT
    intra-op threads, default torch's). A level tier 2 refuses is timed on PyTorch, the tier
    that then serves it, and its row says so."""

    def build(net: SubspaceNet, level: Level, x: torch.Tensor) -> tuple[Callable[[], object], str]:
        n = threads or torch.get_num_threads()
        c, h, w = x.shape[1:]
        try:
            prepared = prepare(net, level.detached(), (c, h, w), n, TOLERANCE)
        except Tier2Failure as e:
            if e.reason != "unsupported":
                raise
            return torch_runner(net, level, x)
        return (lambda: prepared.run(x, "probabilities")), "onnx"

    return build
