"""create_app: the FastAPI application, whose lifespan starts the daemon (models, controller)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import torch
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response

from models import checkpoint
from server import daemon, tracing
from server.grpc_server import start_grpc
from server.middleware import BodyLimit, Ledger, RequestLog
from server.routes import health, level, predict, v2
from server.routes.errors import HANDLED, error_response
from server.routes.fast import HotPath
from server.settings import Settings

log = logging.getLogger("lcs.server")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    tracing.setup(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        d = await daemon.start(settings, app.state.metrics)
        app.state.daemon = d
        try:
            # gRPC on this same loop, sharing the daemon's models (SIGTERM: draining refuses
            # new calls there too; calls in flight finish within the grace).
            grpc = await start_grpc(d, settings.grpc_port)
        except BaseException:
            await daemon.stop(d)
            raise
        try:
            yield
        finally:
            if grpc is not None:
                await grpc.stop(settings.drain_timeout_s)
            await daemon.stop(d)

    app = FastAPI(
        title="lcs-serve",
        version="0.1.0",
        description="Adaptive model serving on a Learning Compressible Subspace: one network, "
        "recompressed in real time to the level γ the machine can afford.",
        lifespan=lifespan,
    )
    from server.metrics import Metrics

    app.state.metrics = Metrics()
    app.state.ledger = Ledger(app.state.metrics)  # RequestLog's, and in-place answers' too
    app.state.daemon = None
    for router in (predict.router, level.router, health.router, v2.router):
        app.include_router(router)
    _add_error_handlers(app)
    app.add_middleware(HotPath, fastapi=app)  # innermost: inside CORS, the cap and the log
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT"],
            allow_headers=["*"],
        )
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestLog, metrics=app.state.metrics, ledger=app.state.ledger)
    tracing.instrument(app)  # a no-op unless tracing is on
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error is JSON {"error": "..."}; no stack traces or paths reach a client."""
    rejected = app.state.metrics.rejected  # by errors.rejection_reason, as gRPC counts them

    async def handle(request: Request, e: Exception) -> Response:
        response = error_response(e, rejected, request.url.path)
        assert response is not None  # registered below only for the classes it answers
        return response

    for cls in HANDLED:
        app.add_exception_handler(cls, handle)

    @app.exception_handler(Exception)
    async def crash(_: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse({"error": "internal error"}, 500)


def check_checkpoints(settings: Settings) -> None:
    """Load every configured checkpoint once before serving, so a bad file (or model list)
    fails the start with one message naming it."""
    torch.set_num_threads(1)
    try:
        sources = settings.model_sources()
    except ValueError as e:
        raise checkpoint.CheckpointError(str(e)) from None
    for path in sources.values():
        checkpoint.load(path)
