"""The serving core's errors, one class per outcome, mapped to HTTP (and gRPC) in one place each."""

from __future__ import annotations


class ServingError(Exception):
    """An outcome a client is told about; `status` is its HTTP status."""

    status = 500
    retry_after: float | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotReady(ServingError):
    status, retry_after = 503, 1.0


class QueueFull(ServingError):
    status, retry_after = 429, 1.0


class DeadlineExceeded(ServingError):
    status = 504


class TooMany(ServingError):
    """More images in one request than the engine can ever serve at once: never a 429."""

    status = 413


class HintError(ServingError):
    """A per-request floor or ceiling no level within the operator's bounds can meet."""

    status = 422


class UnknownModel(ServingError):
    status = 404

    def __init__(self, name: str, known: list[str]) -> None:
        listed = ", ".join(repr(k) for k in known) or "none"
        super().__init__(f"unknown model {name!r}; this server serves {listed}")
        self.name = name


class LoadError(ServingError):
    """A model load, replacement or unload that was refused; what was serving keeps serving."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
