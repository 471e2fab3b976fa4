"""Checkpoints: safetensors tensors + JSON metadata in one file, verified, never unpickled."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError as SafetensorsError
from safetensors.torch import load_file, save_file

from models.levels import Calculator, SubspaceSpec
from models.networks import SubspaceNet, create_model

FORMAT = "lcs-serve/1"
DEFAULT_CHECKPOINT = Path(__file__).parent / "weights" / "digits_structured_point.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that cannot be served; the message names the file and the problem."""


@dataclass
class Metadata:
    arch: str
    family: str
    kind: str
    calculator: dict[str, Any]
    num_classes: int
    class_names: list[str]
    input_size: list[int]  # (C, H, W)
    mean: list[float]
    std: list[float]
    dataset: str = ""
    accuracy: list[dict[str, float]] = field(default_factory=list)  # {alpha, gamma, accuracy}
    training: dict[str, Any] = field(default_factory=dict)
    norm: str = "group"  # "batch" only in baseline checkpoints (benchmarks/accuracy)

    @property
    def spec(self) -> SubspaceSpec:
        return SubspaceSpec(self.family, self.kind, Calculator(**self.calculator), self.norm)


def content_hash(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save(path: str | Path, net: SubspaceNet, meta: Metadata) -> str:
    """Write `net` and `meta`; returns the content hash that loading verifies."""
    tensors = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    digest = content_hash(tensors)
    header = {"format": FORMAT, "lcs": json.dumps(meta.__dict__), "sha256": digest}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    tmp.replace(path)  # never leave a half-written checkpoint under the real name
    return digest


def _check_length(path: Path) -> None:
    """Name truncation plainly: the safetensors header says how long the file must be."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 0 or n > 100_000_000:
            return  # not a safetensors header at all; safe_open names that
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if size < 8 + n + end:
        raise CheckpointError(f"checkpoint {path} is truncated: {size} of {8 + n + end} bytes")


def read_metadata(path: str | Path) -> tuple[Metadata, str]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    _check_length(path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
    except (SafetensorsError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is not a readable safetensors file: {e}") from e
    if header.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not an {FORMAT} checkpoint")
    try:
        return Metadata(**json.loads(header["lcs"])), header["sha256"]
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} has unreadable metadata: {e}") from e


def load(path: str | Path | None = None) -> tuple[SubspaceNet, Metadata, str]:
    """Load and verify a checkpoint (the bundled default model when `path` is None)."""
    path = Path(path) if path is not None else DEFAULT_CHECKPOINT
    meta, digest = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorsError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupted: {e}") from e
    if content_hash(tensors) != digest:
        raise CheckpointError(f"checkpoint {path} is corrupted: its tensors fail the sha256 check")
    try:
        net = create_model(meta.arch, meta.spec, meta.num_classes, meta.input_size[0])
        net.load_state_dict(tensors, strict=True)
    except (ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {path} does not fit {meta.arch}: {first}") from e
    return net.eval().requires_grad_(False), meta, digest
