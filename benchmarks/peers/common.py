"""What every peer server shares: the bundled model at full width and the same preprocessing."""

from __future__ import annotations

import torch

from models import LevelCompressor, checkpoint
from server.preprocess import Preprocessor


class Model:
    """The default checkpoint, compressed once to width 1.0: one plain forward per call."""

    def __init__(self) -> None:
        self.net, self.meta, _ = checkpoint.load()
        self.level = LevelCompressor(self.net, cache=True)(self.meta.spec.calc.alpha_max)
        c, h, w = self.meta.input_size
        self.preprocess = Preprocessor(
            c, h, w, tuple(self.meta.mean), tuple(self.meta.std), 40_000_000
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, classes)
        with torch.inference_mode():
            return torch.softmax(self.net(x, self.level), 1)

    def top5(self, probs: torch.Tensor) -> list[dict[str, object]]:
        p, i = torch.topk(probs, 5)
        return [
            {"label": self.meta.class_names[k], "index": k, "probability": v}
            for v, k in zip(p.tolist(), i.tolist(), strict=True)
        ]
