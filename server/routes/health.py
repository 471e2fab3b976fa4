"""Liveness, readiness and the Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Alive: the process answers (the model may still be loading)."""
    return {"status": "alive"}


@router.get("/readyz", responses={503: {"description": "not ready, with the reason"}})
async def readyz(request: Request) -> JSONResponse:
    """Ready: model loaded, warmed and profiled, and not draining for shutdown."""
    rt = request.app.state.runtime
    if rt is None:
        return JSONResponse({"ready": False, "reason": "starting"}, 503)
    if rt.draining or not rt.ready:
        reason = "draining for shutdown" if rt.draining else rt.not_ready_reason
        return JSONResponse({"ready": False, "reason": reason}, 503)
    return JSONResponse({"ready": True, "level": rt.slot.current.describe()})


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    m = request.app.state.metrics
    rt = request.app.state.runtime
    if rt is not None:
        m.queue_depth.set(rt.engine.depth)
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
