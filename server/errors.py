"""The serving core's errors, one class per outcome, mapped to HTTP (and gRPC) in one place each."""

from __future__ import annotations

from server.oip import OIPError
from server.preprocess import ImageError

# lcs_rejected_requests{reason}: every refusal before inference, whichever transport carried it.
REASONS = (
    "queue_full",
    "decode_budget",
    "deadline",
    "too_many",
    "too_large",
    "not_ready",
    "bad_image",
    "bad_input",
)


class ServingError(Exception):
    """An outcome a client is told about; `status` is its HTTP status."""

    status = 500
    retry_after: float | None = None
    reason: str | None = None  # one of REASONS when the outcome is a refusal before inference

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotReady(ServingError):
    status, retry_after, reason = 503, 1.0, "not_ready"


class QueueFull(ServingError):
    status, retry_after, reason = 429, 1.0, "queue_full"


class DeadlineExceeded(ServingError):
    status, reason = 504, "deadline"


class TooMany(ServingError):
    """More images in one request than the engine can ever serve at once: never a 429."""

    status, reason = 413, "too_many"


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


def rejection_reason(e: BaseException) -> str | None:
    """The lcs_rejected_requests reason of an error, the same over HTTP and gRPC; None: the
    error is not a refusal before inference (unknown model, unmet hint, a failed load …)."""
    from server.admission import BudgetBusy  # here: admission imports this module

    if isinstance(e, BudgetBusy):
        return "decode_budget"
    if isinstance(e, ServingError):
        return e.reason
    if isinstance(e, ImageError):
        return "bad_image"
    if isinstance(e, OIPError):
        return "too_many" if e.status == 413 else "bad_input"
    return None
