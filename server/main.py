"""`lcs serve`: check the checkpoint, then run uvicorn with a draining SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from types import FrameType

import uvicorn
from fastapi import FastAPI

from models.checkpoint import CheckpointError
from server import logs
from server.app import check_checkpoints, create_app
from server.settings import Settings, add_arguments, from_args

__all__ = ["add_arguments", "run"]
log = logging.getLogger("lcs.server")


class DrainingServer(uvicorn.Server):
    """SIGTERM/SIGINT: readiness goes false, new requests are refused, accepted ones finish
    (bounded by the drain timeout), then uvicorn shuts down and the process exits 0."""

    def __init__(self, config: uvicorn.Config, settings: Settings, app: FastAPI) -> None:
        super().__init__(config)
        self.settings, self.app = settings, app
        self._drain: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in _captured_signals: uvicorn would re-raise it after shutdown and the
        # process would die by the signal instead of exiting 0.
        if self._drain is not None:  # a second signal: stop waiting
            self.force_exit = sig == signal.SIGINT
            self.should_exit = True
            return
        rt = self.app.state.runtime
        log.info("draining", extra={"signal": signal.Signals(sig).name})
        if rt is None:
            self.should_exit = True
            return
        rt.draining = True
        rt.metrics.ready.set(0)
        self._drain = asyncio.get_event_loop().create_task(self._finish(rt))

    async def _finish(self, rt) -> None:
        await rt.wait_idle(self.settings.drain_timeout_s)
        self.should_exit = True


def run(args: argparse.Namespace) -> int:
    try:
        settings = from_args(args)
    except ValueError as e:
        print(f"lcs serve: invalid settings: {e}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    try:
        check_checkpoints(settings)
    except CheckpointError as e:
        print(f"lcs serve: {e}", file=sys.stderr)
        return 1
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
        access_log=False,
        server_header=False,
    )
    server = DrainingServer(config, settings, app)
    server.run()
    return 0 if server.started else 1
