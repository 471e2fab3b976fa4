"""What every peer server shares: the exported model, one intra-op thread, the same PNG decoding.

Imported inside each peer's own venv, so it needs only torch, numpy, Pillow and onnxruntime
(never this project's packages)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

MODEL_DIR = Path(os.environ.get("LCS_PEER_MODEL", "."))
THREADS = int(os.environ.get("LCS_PEER_THREADS", "1"))
BACKEND = os.environ.get("LCS_PEER_BACKEND", "ort")  # "ort" or "torch"


class Model:
    """The default network at γ = 1: `x` (B, C, H, W) float32 → softmax probabilities (B, K)."""

    def __init__(self, backend: str = BACKEND, folder: Path = MODEL_DIR) -> None:
        meta = json.loads((folder / "meta.json").read_text())
        self.backend = backend
        self.class_names: list[str] = meta["class_names"]
        self.c, self.h, self.w = meta["input_size"]
        self.mode = {1: "L", 3: "RGB"}[self.c]
        self.mean = np.array(meta["mean"], np.float32).reshape(-1, 1, 1)
        self.std = np.array(meta["std"], np.float32).reshape(-1, 1, 1)
        if backend == "ort":
            import onnxruntime as ort

            # lcs-serve's tier-2 settings (server/tier2.py): sequential, no spinning.
            so = ort.SessionOptions()
            so.intra_op_num_threads = THREADS
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.log_severity_level = 3
            self.session = ort.InferenceSession(
                str(folder / "model.onnx"), so, providers=["CPUExecutionProvider"]
            )
        else:
            import torch

            torch.set_num_threads(THREADS)
            self.torch = torch
            self.net = torch.jit.load(str(folder / "model.pt")).eval()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.backend == "ort":
            return self.session.run(["probabilities"], {"x": x})[0]
        with self.torch.inference_mode():
            return self.net(self.torch.from_numpy(x))[1].numpy()

    def preprocess(self, data: bytes) -> np.ndarray:
        """Image bytes → (C, H, W) normalised, as lcs-serve does: mode, bilinear resize, /255."""
        return self.array(Image.open(io.BytesIO(data)))

    def array(self, im: Image.Image) -> np.ndarray:
        im = im.convert(self.mode) if im.mode != self.mode else im
        if im.size != (self.w, self.h):
            im = im.resize((self.w, self.h), Image.Resampling.BILINEAR)
        x = np.asarray(im, dtype=np.float32).reshape(self.h, self.w, -1).transpose(2, 0, 1)
        return (x / 255 - self.mean) / self.std

    def top5(self, probs: np.ndarray) -> list[dict[str, object]]:
        order = np.argsort(-probs)[:5]
        return [
            {"label": self.class_names[k], "index": int(k), "probability": float(probs[k])}
            for k in order
        ]

    def predict_png(self, data: bytes) -> dict[str, object]:
        """The natural-API answer of every PNG peer: lcs-serve's /predict shape."""
        return {"predictions": self.top5(self(self.preprocess(data)[None])[0])}
