"""`lcs serve` freezes start-up's objects once uvicorn has started (and only when asked)."""

from __future__ import annotations

import asyncio
import gc

import pytest
import uvicorn

from server.app import create_app
from server.main import DrainingServer
from server.settings import Settings


@pytest.mark.parametrize("freeze", [True, False])
def test_startup_freezes_what_it_made(monkeypatch, freeze):
    async def started(self, sockets=None):  # uvicorn's own start-up, lifespan and sockets
        self.started = True

    monkeypatch.setattr(uvicorn.Server, "startup", started)
    settings = Settings(gc_freeze=freeze, controller_enabled=False)
    app = create_app(settings)
    server = DrainingServer(uvicorn.Config(app), settings, app)
    gc.unfreeze()
    thresholds = gc.get_threshold()
    try:
        asyncio.run(server.startup())
        assert server.started
        assert (gc.get_freeze_count() > 0) is freeze
        assert (gc.get_threshold() == (20_000, 50, 1000)) is freeze
    finally:
        gc.unfreeze()  # the test process keeps collecting as before
        gc.set_threshold(*thresholds)
