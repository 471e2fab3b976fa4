"""Liveness, readiness and the Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive: the process answers (the models may still be loading)."""
    return {"status": "alive"}


@router.get("/readyz", responses={503: {"description": "not ready, with the reason"}})
async def readyz(request: Request) -> JSONResponse:
    """Ready: every configured model loaded, warmed and profiled, and not draining."""
    d = request.app.state.daemon
    if d is None:
        return JSONResponse({"ready": False, "reason": "starting"}, 503)
    if d.draining or not d.ready:
        reason = "draining for shutdown" if d.draining else d.not_ready_reason
        return JSONResponse({"ready": False, "reason": reason}, 503)
    models = {name: m.level.current.describe() for name, m in d.registry.models.items()}
    default = models.get(d.registry.default or "")
    return JSONResponse({"ready": True, "level": default, "models": models})


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    m = request.app.state.metrics
    d = request.app.state.daemon
    if d is not None:
        for model in d.registry.models.values():
            model.metrics.queue_depth.set(model.engine.depth)
            model.metrics.resident.set(d.registry.held_bytes(model))  # level cache as it is now
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
