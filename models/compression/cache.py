"""LevelCache: compressed levels kept for reuse, least recently used first out, bounded in bytes."""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from models.compression import Level

# What one process keeps by default (the daemon's LCS_LEVEL_CACHE_MB): ResNet18's six LCS+P
# bit widths (42.6 MB each, float32 fake-quantized), five of its LCS+L ones (44.6 MB).
DEFAULT_BOUND_BYTES = 256 * 2**20


@dataclass(frozen=True)
class _Entry:
    level: Level
    nbytes: int
    net: int  # id() of the network the level was compressed from


def level_bytes(level: Level, shared: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the storage `level` holds of its own: every distinct tensor storage, except
    the ones it shares with `shared` (the network's own parameters, which a point subspace's
    uncompressed layers reuse as they are)."""
    seen = {t.untyped_storage().data_ptr() for t in shared}
    total = 0
    for p in level.params.values():
        for t in (p.weight, p.bias):
            if t is None:
                continue
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


class LevelCache:
    """One process-wide LRU of levels over every network that caches them, bounded in bytes,
    so the memory the daemon keeps for fast switches is one number the budget can count.
    A level larger than the bound is not kept. Thread-safe: switches build levels on their own
    thread while the event loop reads the byte count."""

    def __init__(self, bound_bytes: int = DEFAULT_BOUND_BYTES) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[int, float], _Entry] = OrderedDict()
        self.bound_bytes = bound_bytes
        self._nbytes = 0
        self.evictions = 0
        self._owners: set[int] = set()
        # Owners gone, by id: a finalizer only appends here (it may run inside a locked
        # section, whenever the garbage collector does); every call drops their entries first.
        self._dead: list[int] = []

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        with self._lock:
            self._purge()
            return self._nbytes

    def get(self, owner: object, alpha: float) -> Level | None:
        with self._lock:
            self._purge()
            entry = self._entries.get((id(owner), alpha))
            if entry is None:
                return None
            self._entries.move_to_end((id(owner), alpha))
            return entry.level

    def put(self, owner: object, net: object, alpha: float, level: Level, nbytes: int) -> None:
        key = (id(owner), alpha)
        with self._lock:
            self._purge()
            if key[0] not in self._owners:
                # the owner's entries go when it does (an unloaded model's levels are freed)
                self._owners.add(key[0])
                weakref.finalize(owner, self._dead.append, key[0])
            old = self._entries.pop(key, None)
            if old is not None:
                self._nbytes -= old.nbytes
            if nbytes > self.bound_bytes:
                return
            self._entries[key] = _Entry(level, nbytes, id(net))
            self._nbytes += nbytes
            self._evict()

    def set_bound(self, bound_bytes: int) -> None:
        with self._lock:
            self._purge()
            self.bound_bytes = bound_bytes
            self._evict()

    def held_for(self, net: object) -> int:
        """Bytes held for the levels of one network."""
        with self._lock:
            self._purge()
            return sum(e.nbytes for e in self._entries.values() if e.net == id(net))

    def alphas(self, owner: object) -> list[float]:
        """The owner's cached α, least recently used first."""
        with self._lock:
            self._purge()
            return [a for (o, a) in self._entries if o == id(owner)]

    def _purge(self) -> None:
        while self._dead:
            owner_id = self._dead.pop()
            self._owners.discard(owner_id)
            for key in [k for k in self._entries if k[0] == owner_id]:
                self._nbytes -= self._entries.pop(key).nbytes

    def _evict(self) -> None:
        while self._nbytes > self.bound_bytes and self._entries:
            _, entry = self._entries.popitem(last=False)
            self._nbytes -= entry.nbytes
            self.evictions += 1


LEVEL_CACHE = LevelCache()
