"""f(ω*(α), γ) of an unstructured line in one sweep of memory: interpolation and pruning fused."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

_kernel: Any = None  # compiled on first use: importing numba costs ~0.3 s a process
_NO_INDEX = np.empty(0, dtype=np.int64)
_HALF, _ONE = np.float32(0.5), np.float32(1.0)


class PrunedLine:
    """One line layer's ends (frozen while serving), ready for `at`: their flat arrays are
    made once, not on each of a ResNet18's 19 calls a switch (~10 µs each)."""

    def __init__(self, start: Tensor, end: Tensor) -> None:
        self.start, self.end = start, end
        self.fused = _fusable(start) and _fusable(end) and start.shape == end.shape
        self._start = _flat(start) if self.fused else None
        self._end = _flat(end) if self.fused else None
        if self.fused:
            _compiled()  # now, as the first level at an α is made, not in a later switch

    def at(self, alpha: float, threshold: float, out: Tensor, keep: Tensor | None) -> Tensor:
        """torch.lerp(start, end, alpha) with every |w| ≤ threshold zeroed except at the flat
        indices in keep, written into out: bit for bit what lerp then hardshrink give, in one
        pass. The switch is memory-bound (ResNet18: 45 MB read twice, written once), and the
        second torch pass reads and writes the 45 MB of out again: 1.3 ms of a 7.2 ms switch."""
        if not (self.fused and _fusable(out) and out.shape == self.start.shape):
            return _unfused(self.start, self.end, alpha, threshold, out, keep)
        w = np.float32(alpha)
        # ATen's vectorised lerp: fma(α, end − start, start) for |α| < 0.5, else
        # fma(α − 1, end − start, end), so each end is exact; the kernel repeats it to the bit.
        coeff, base = (w, self._start) if abs(w) < _HALF else (w - _ONE, self._end)
        kept = _NO_INDEX if keep is None else keep.numpy()
        kernel = _kernel or _compiled()
        kernel(self._start, self._end, base, coeff, np.float32(threshold), kept, _flat(out))
        return out


def _fusable(t: Tensor) -> bool:
    return t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous()


def prune(w: Tensor, threshold: float, keep: Tensor | None, out: Tensor) -> Tensor:
    """w with every |w| ≤ threshold zeroed except at the flat indices in keep, into out (which
    may be w itself): the pruning pass at a known boundary, as torch does it."""
    saved = None if keep is None else w.view(-1)[keep]  # a copy, taken before the pruning
    torch.ops.aten.hardshrink.out(w, threshold, out=out)
    if keep is not None and saved is not None:
        out.view(-1)[keep] = saved
    return out


def _unfused(
    start: Tensor, end: Tensor, alpha: float, threshold: float, out: Tensor, keep: Tensor | None
) -> Tensor:
    return prune(torch.lerp(start, end, alpha, out=out), threshold, keep, out)


def _flat(t: Tensor) -> np.ndarray:
    return t.detach().view(-1).numpy()


def _compiled() -> Any:
    global _kernel
    if _kernel is None:
        _kernel = _compile()
    return _kernel


def _compile() -> Any:
    from numba import njit

    def lerp_prune(start, end, base, coeff, threshold, keep, out):
        zero = np.float32(0.0)
        for i in range(out.size):
            v = coeff * (end[i] - start[i]) + base[i]
            out[i] = zero if abs(v) <= threshold else v
        for j in range(keep.size):  # tied at τ, yet kept: the stable sort's later indices
            i = keep[j]
            out[i] = coeff * (end[i] - start[i]) + base[i]

    # contract: a·b + c may become one fma, as ATen's kernel computes it; nothing else of
    # fastmath (no reassociation), so every value is the IEEE one torch gives.
    try:  # the machine code kept beside the module (or in NUMBA_CACHE_DIR): ~0.5 s saved
        return njit(lerp_prune, cache=True, fastmath={"contract"}, boundscheck=False, nogil=True)
    except RuntimeError:  # nowhere writable (a read-only container): compiled per process
        return njit(lerp_prune, fastmath={"contract"}, boundscheck=False, nogil=True)
