"""OutputBuffers: a compressor's output tensors, reused once no live Level holds them."""

from __future__ import annotations

import sys
import threading
import weakref
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from models.compression import Level


def _storage_uses(t: Tensor) -> int:
    return int(torch._C._storage_Use_Count(t.untyped_storage()._cdata))


def _refs(tensors: dict[str, Tensor]) -> list[int]:
    return [sys.getrefcount(t) for t in tensors.values()]


_PROBE = {"": torch.empty(0)}  # a tensor only a dict holds: the baseline of _refs


class BufferSet:
    """One level's worth of output tensors, by layer key. Created on first use outside
    inference mode, so a level built in inference mode (serving) and one built under no_grad
    (a benchmark, a test) may both write into them."""

    def __init__(self) -> None:
        self.tensors: dict[str, Tensor] = {}
        self._uses: dict[str, int] = {}  # storage use count of an unshared tensor
        self.owner: weakref.ref[Level] | None = None
        self.building = False

    def like(self, key: str, t: Tensor) -> Tensor:
        buf = self.tensors.get(key)
        if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
            with torch.inference_mode(False):
                buf = torch.empty_like(t, memory_format=torch.contiguous_format)
            self.tensors[key] = buf
            self._uses[key] = _storage_uses(buf)
        return buf

    def free(self) -> bool:
        """No Level that was built into this set is alive, and nothing else kept one of its
        tensors (a reference to the tensor or a view of its storage)."""
        if self.building or (self.owner is not None and self.owner() is not None):
            return False
        base = _refs(_PROBE)[0]
        refs = _refs(self.tensors)
        return all(
            r <= base and _storage_uses(t) == self._uses[k]
            for r, (k, t) in zip(refs, self.tensors.items(), strict=True)
        )

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


class OutputBuffers:
    """The output tensors of the levels one compressor builds while serving. A fresh tensor of
    a ResNet18's size costs page faults on every write (glibc maps large blocks anew); where it
    comes from depended on what the process had freed before, which made the same switch take
    4 to 80 ms. Reusing a set whose level is gone makes it one in-cache pass every time. At
    most `spare` unused sets are kept beyond the ones live levels hold."""

    def __init__(self, spare: int = 1) -> None:
        self.spare = spare
        self.sets: list[BufferSet] = []
        self._lock = threading.Lock()

    def take(self) -> BufferSet:
        with self._lock:
            free = [s for s in self.sets if s.free()]
            chosen = free[0] if free else BufferSet()
            for s in free[1 + self.spare :]:
                self.sets.remove(s)
            if not free:
                self.sets.append(chosen)
            chosen.owner, chosen.building = None, True
            return chosen

    def bind(self, buffers: BufferSet, level: Level | None) -> None:
        """`level` now owns `buffers` (None: the build failed, the set is free again)."""
        buffers.owner = None if level is None else weakref.ref(level)
        buffers.building = False

    def nbytes(self) -> int:
        return sum(s.nbytes() for s in self.sets)
