"""Errors a route raised → the JSON answer a client gets (app handlers and the hot path alike)."""

from __future__ import annotations

import logging
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from server.errors import ServingError, rejection_reason
from server.preprocess import ImageError

log = logging.getLogger("lcs.server")
# What error_response answers (Starlette's HTTPException: body-parsing errors raise the base).
HANDLED = (HTTPException, ServingError, ImageError, RequestValidationError, ClientDisconnect)


def error_response(e: Exception, rejected: Any, path: str) -> Response | None:
    """The answer to an error a route raised (None: not one a client is told about), for the
    app's handlers and server.routes.fast alike; refusals count in `rejected` (a Counter)."""
    if isinstance(e, HTTPException):
        return JSONResponse({"error": str(e.detail)}, e.status_code, headers=e.headers)
    if isinstance(e, ServingError):
        reason = rejection_reason(e)
        if reason is not None:
            rejected.labels(reason).inc()
        headers = {"Retry-After": f"{e.retry_after:.0f}"} if e.retry_after else None
        return JSONResponse({"error": e.message}, e.status, headers=headers)
    if isinstance(e, ImageError):
        rejected.labels(rejection_reason(e) or "bad_image").inc()
        return JSONResponse({"error": str(e)}, e.status)
    if isinstance(e, RequestValidationError):
        parts = []
        for err in e.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return JSONResponse({"error": "; ".join(parts) or "invalid request"}, 422)
    if isinstance(e, ClientDisconnect):
        # Nobody is left to answer; 499 (as nginx) keeps it apart from server errors in metrics.
        log.info("client disconnected", extra={"path": path})
        return Response(status_code=499)
    return None
