"""int8 variants of tier 2's width: ONNX Runtime static quantization, calibrated and gated."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from models import Level, SubspaceNet
from server.onnx_runtime import ort

# The quantizer (onnxruntime.quantization, onnx: 0.2 s to import) is imported where it runs,
# in the export process: the serving process never needs it.
FORMATS = ("qdq", "qoperator")
# ORT graph rewrites an int8 session runs without. QDQPropagation moves each QuantizeLinear
# ahead of the MaxPool that follows it, so the pool runs on ORT's scalar uint8 kernel instead
# of its vectorized float one (measured, thread CPU time, ResNet18 shape at width 0.25: a
# third of the graph; 3.2 → 2.2 ms without it, fp32 3.15 ms). The NHWC rewrite adds two
# Transposes per convolution and gained nothing (2.18 → 2.11 ms; full width 12.8 → 12.5 ms).
DISABLED_OPTIMIZERS = ("QDQPropagationTransformer", "NhwcTransformer")
CALIBRATION_BATCH = 16


@dataclass(frozen=True, eq=False)
class Calibration:
    """Where a model's calibration images come from (picklable: loaded in the export process).

    `dataset` (and `root`): the held-out split of a dataset models/data.py loads, with its
    labels ("folder": every image of the folder a checkpoint names); or `images` (N, C, H, W)
    float32 already in input space (tests, benchmarks). The first `calibrate` images set the
    activation ranges; the gate's agreement and accuracy are measured on the whole split (at
    most `check` images), those included."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str | None = None
    root: str | None = None
    images: np.ndarray | None = field(default=None, repr=False)
    labels: np.ndarray | None = field(default=None, repr=False)
    size: tuple[int, int] = (32, 32)  # (H, W) of images a folder holds
    calibrate: int = 256
    check: int = 2000

    def load(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(images float32 in input space, labels or None), at most `check` of them."""
        if self.images is not None:
            x, y = self.images, self.labels
        else:
            from models.data import load_dataset

            assert self.dataset is not None
            data = load_dataset(self.dataset, self.root, self.size)
            test = data.test
            if self.dataset == "folder":  # named by the checkpoint: every image calibrates
                test = type(test)(
                    torch.cat([data.test.images, data.train.images]),
                    torch.cat([data.test.labels, data.train.labels]),
                )
            mean = torch.tensor(self.mean).view(1, -1, 1, 1)
            std = torch.tensor(self.std).view(1, -1, 1, 1)
            x = ((test.images.float() / 255 - mean) / std).numpy()
            y = test.labels.numpy()
        x = np.ascontiguousarray(x[: self.check], dtype=np.float32)
        return x, None if y is None else np.asarray(y[: self.check])


def quantize(model: bytes, calibration: np.ndarray, fmt: str = "qdq") -> bytes:
    """`model` (fp32 ONNX bytes) with int8 weights (per output channel) and int8 activations
    whose ranges are the min/max seen on `calibration`. Runs for seconds on one core: the
    caller runs it in tier 2's export process, never on the serving process's threads."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        """The calibration images (N, C, H, W) in input space, in batches."""

        def __init__(self) -> None:
            n = max(1, -(-len(calibration) // CALIBRATION_BATCH))
            self._batches: Iterator[np.ndarray] = iter(np.array_split(calibration, n))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {"x": np.ascontiguousarray(batch, np.float32)}

    with tempfile.TemporaryDirectory(prefix="lcs-int8-") as tmp:
        src, pre, out = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(model)
        # Shape inference (and ORT's basic fusions) first, as the quantizer's docs advise:
        # without shapes, some ops keep float inputs and add Q/DQ pairs around them.
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre),
            str(out),
            Reader(),
            quant_format={"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}[fmt],
            per_channel=True,
            activation_type=QuantType.QUInt8,  # u8 activations × s8 weights: the fast VNNI path
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=_first_conv(onnx.load(str(pre))),
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        return out.read_bytes()


def _first_conv(model: object) -> list[str]:
    """The stem convolution stays fp32: with 1-3 input channels int8 GEMMs are short and
    slow (measured, thread CPU, ResNet18 shape at width 0.25: 1.99 → 1.71 ms with it in fp32;
    full width 12.4 → 12.8 ms), and a first layer is where quantization error starts."""
    for n in model.graph.node:  # type: ignore[attr-defined]
        if n.op_type == "Conv":
            return [n.name]
    return []


def logits(session: ort.InferenceSession, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """A session's logits on (N, C, H, W), in batches (bounded memory on large sets)."""
    out = [
        session.run(["logits"], {"x": np.ascontiguousarray(x[i : i + batch])})[0]
        for i in range(0, len(x), batch)
    ]
    return np.concatenate(out)


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """The fraction of rows whose top-1 class is the same in both (N, classes) arrays."""
    return float(np.mean(a.argmax(1) == b.argmax(1)))


@dataclass(frozen=True)
class Gate:
    """How an int8 variant fared: top-1 agreement with tier 1 on the check images, and the
    held-out accuracy of it and of its fp32 width (None without labels)."""

    agreement: float
    accuracy: float | None
    fp32_accuracy: float | None
    images: int  # how many agreement was measured on

    def passes(self, threshold: float) -> bool:
        return self.agreement >= threshold


def open_session(model: bytes) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1  # the export process's one core, at its low priority
    so.log_severity_level = 3
    return ort.InferenceSession(
        model, so, providers=["CPUExecutionProvider"], disabled_optimizers=DISABLED_OPTIMIZERS
    )


def quantize_and_check(
    net: SubspaceNet, level: Level, model: bytes, calibration: Calibration, fmt: str
) -> tuple[bytes, Gate]:
    """In the export process: the int8 model of `level` (whose fp32 ONNX is `model`) and how
    it agrees with tier 1 (`net` at `level`, in torch) on the calibration split."""
    x, labels = calibration.load()
    if len(x) == 0:
        raise ValueError("no calibration images")
    q = quantize(model, x[: calibration.calibrate], fmt)
    with torch.inference_mode():
        ref = torch.cat([net(torch.from_numpy(x[i : i + 64]), level) for i in range(0, len(x), 64)])
    tier1 = ref.numpy()
    out = logits(open_session(q), x)

    def acc(a: np.ndarray) -> float | None:
        return None if labels is None else float(np.mean(a.argmax(1) == labels))

    return q, Gate(agreement(out, tier1), acc(out), acc(tier1), len(x))
