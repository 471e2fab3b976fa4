"""ModelRegistry: the models one daemon serves, loaded, replaced and unloaded at run time."""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models import checkpoint
from models.checkpoint import CheckpointError
from models.compression import LEVEL_CACHE
from server.errors import LoadError, UnknownModel
from server.served import ServedModel, Shared, open_model
from server.settings import NAME

log = logging.getLogger("lcs.server")

# Resident growth of a load before it is measured: tensors, the compressor's caches, the
# profile's levels and thread stacks. Measured on the digit CNN (1.1 MB file): 10-20 MB.
ESTIMATE_FACTOR, ESTIMATE_BASE = 4, 32 * 2**20


@dataclass
class _State:
    state: str  # Triton's words: READY, LOADING, UNLOADING, UNAVAILABLE
    reason: str = ""


class ModelRegistry:
    """name → ServedModel. A replacement is loaded, verified, warmed and profiled while the old
    version keeps serving, swapped in with one assignment, and the old one is freed once the
    requests that reached it have their answers. A failed load leaves what was serving."""

    def __init__(
        self,
        shared: Shared,
        sources: dict[str, Path | None],
        *,
        repository: Path | None,
        default: str | None,
        budget_bytes: int | None,
        on_added: Callable[[ServedModel], None] = lambda m: None,
        on_removed: Callable[[str], None] = lambda name: None,
    ) -> None:
        self.shared, self.sources, self.repository = shared, dict(sources), repository
        self.budget_bytes = budget_bytes
        self.default = default or next(iter(sources), None)
        self.models: dict[str, ServedModel] = {}
        self.on_added, self.on_removed = on_added, on_removed
        self._versions: dict[str, int] = {}
        self._states: dict[str, _State] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        # Level-cache bytes of each model when its load growth was measured (already in it).
        self._cached_at_load: weakref.WeakKeyDictionary[ServedModel, int] = (
            weakref.WeakKeyDictionary()
        )
        LEVEL_CACHE.set_bound(int(shared.settings.level_cache_mb * 2**20))

    def get(self, name: str | None = None) -> ServedModel:
        name = self.default if name is None else name
        model = self.models.get(name) if name is not None else None
        if model is None:
            raise UnknownModel(str(name), self.names())
        return model

    def names(self) -> list[str]:
        return list(self.models)

    async def start(self) -> None:
        """Load every configured model; any failure stops the start with its message."""
        if self.default is not None and self.default not in self.sources:
            raise CheckpointError(f"default model {self.default!r} is not among the models")
        for name in self.sources:
            await self.load(name, who="startup", why="configured")

    async def load(
        self, name: str, file: str | None = None, who: str = "", why: str = ""
    ) -> ServedModel:
        """Load `name` (or replace it): from `file` inside the repository, else NAME.safetensors
        in the repository, else the path it was configured with."""
        if not NAME.match(name):
            raise LoadError(400, f"model name {name!r}: use letters, digits, '_', '.', '-'")
        path = self._resolve(name, file)
        async with self._locks.setdefault(name, asyncio.Lock()):
            old = self.models.get(name)
            self._check_budget(path, old)
            version = self._versions.get(name, 0) + 1
            self._states[name] = _State("LOADING")
            try:
                model = await open_model(name, path, version, self.shared)
            except CheckpointError as e:
                self._failed(name, old, str(e))
                raise LoadError(400, str(e)) from None
            except Exception as e:
                log.exception("model load failed", extra={"model": name})
                self._failed(name, old, f"{type(e).__name__}: {e}")
                raise LoadError(500, f"loading {name!r} failed: {type(e).__name__}") from None
            self._cached_at_load[model] = LEVEL_CACHE.held_for(model.net)
            self._versions[name] = version
            self.models[name] = model  # the atomic swap: new requests reach the new version
            self._states[name] = _State("READY")
            self.on_added(model)
            action = "replace" if old is not None else "load"
            self.shared.metrics.model_loads.labels(action, "ok").inc()
            _audit(action, model, who, why)
        if old is not None:
            self._retire(old, forget=False)
        return model

    async def unload(self, name: str, who: str = "", why: str = "") -> None:
        async with self._locks.setdefault(name, asyncio.Lock()):
            model = self.models.pop(name, None)
            if model is None:
                raise UnknownModel(name, self.names())
            self._states[name] = _State("UNAVAILABLE", "unloaded")
            self.on_removed(name)
            self.shared.metrics.model_loads.labels("unload", "ok").inc()
            _audit("unload", model, who, why)
        await self._drain_and_close(model, forget=True)

    def index(self) -> list[dict[str, Any]]:
        """Triton's repository index: every model loaded or known, with its state."""
        rows = {}
        for name in [*self.sources, *self._repository_names(), *self._states]:
            st = self._states.get(name, _State("UNAVAILABLE", "unloaded"))
            model = self.models.get(name)
            row = {"name": name, "state": st.state, "reason": st.reason}
            if model is not None:  # LOADING while a replacement loads, READY otherwise
                row["version"] = str(model.version)
            rows[name] = row
        return list(rows.values())

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        for model in list(self.models.values()):
            await model.close()
        self.models.clear()

    def resident_bytes(self) -> int:
        return sum(self.held_bytes(m) for m in self.models.values())

    def held_bytes(self, model: ServedModel) -> int:
        """What `model` holds now: its measured load growth and tier-2 sessions, with its share
        of the level cache as it is now rather than as it was at load (evictions, new levels)."""
        at_load = self._cached_at_load.get(model, 0)
        return max(0, model.resident_bytes - at_load) + LEVEL_CACHE.held_for(model.net)

    # Helpers.

    def _resolve(self, name: str, file: str | None) -> Path:
        repo = self.repository
        if file is not None:
            if repo is None:
                raise LoadError(403, "no model repository is configured: files cannot be named")
            root = repo.resolve()
            path = (root / file).resolve()  # follows symlinks: an escape shows here
            if not path.is_relative_to(root):
                raise LoadError(403, f"{file!r} is outside the model repository")
            if not path.is_file():
                raise LoadError(400, f"{file!r} is not a file in the model repository")
            return path
        if repo is not None and (repo / f"{name}.safetensors").is_file():
            path = (repo / f"{name}.safetensors").resolve()
            if not path.is_relative_to(repo.resolve()):
                raise LoadError(403, f"{name}.safetensors points outside the model repository")
            return path
        if name in self.sources:
            return self.sources[name] or checkpoint.DEFAULT_CHECKPOINT
        raise LoadError(400, f"no model {name!r} in the model repository")

    def _check_budget(self, path: Path, old: ServedModel | None) -> None:
        if self.budget_bytes is None:
            return
        size = path.stat().st_size
        if old is not None:  # the same model again: its measured cost is the best estimate
            estimate = self.held_bytes(old) * max(1.0, size / max(1, old.path.stat().st_size))
        else:
            estimate = ESTIMATE_FACTOR * size + ESTIMATE_BASE
        used = self.resident_bytes()  # the old version keeps serving while the new one loads
        if used + estimate > self.budget_bytes:
            mb = 2**20
            raise LoadError(
                507,
                f"not enough memory: loaded models hold {used / mb:.0f} MB, this load needs "
                f"about {estimate / mb:.0f} MB, the budget is {self.budget_bytes / mb:.0f} MB",
            )

    def _failed(self, name: str, old: ServedModel | None, reason: str) -> None:
        self.shared.metrics.model_loads.labels("load", "failed").inc()
        self._states[name] = (
            _State("READY", "") if old is not None else _State("UNAVAILABLE", reason)
        )
        log.warning("model load refused", extra={"model": name, "reason": reason})

    def _repository_names(self) -> list[str]:
        if self.repository is None or not self.repository.is_dir():
            return []
        return sorted(f.stem for f in self.repository.glob("*.safetensors") if NAME.match(f.stem))

    def _retire(self, model: ServedModel, forget: bool) -> None:
        task = asyncio.get_running_loop().create_task(self._drain_and_close(model, forget))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _drain_and_close(self, model: ServedModel, forget: bool) -> None:
        """Free a model once every request that reached it has its answer (bounded)."""
        deadline = time.monotonic() + self.shared.settings.request_timeout_s + 1
        while model.service.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await model.close()
        metrics = self.shared.metrics
        if forget:
            metrics.forget_model(model.name)
        else:
            m = model.meta
            metrics.model.remove(
                model.name, str(model.version), m.arch, m.family, m.kind, model.checksum[:16],
                m.dataset,
            )  # fmt: skip
        log.info("model freed", extra={"model": model.name, "version": model.version})


def _audit(action: str, model: ServedModel, who: str, why: str) -> None:
    log.info(
        f"model {action}",
        extra={"model": model.name, "version": model.version, "checksum": model.checksum[:16],
               "who": who, "why": why, "resident_mb": round(model.load_bytes / 2**20, 1)},
    )  # fmt: skip
