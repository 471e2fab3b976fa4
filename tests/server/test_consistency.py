"""Thousands of concurrent requests while the controller's callback moves the level every 20
requests: each response's prediction is the model's own output at the level it reports."""

from __future__ import annotations

import asyncio
import random

import httpx
import torch

from models import LevelCompressor, checkpoint
from server import daemon as serving
from server.app import create_app
from server.settings import Settings
from tests.helpers import digits, encode

REQUESTS = 2000
MOVE_EVERY = 20  # requests between two level moves


async def scenario() -> tuple[list[tuple[int, dict]], int]:
    settings = Settings(controller_enabled=False, torch_threads=1, max_queue=REQUESTS)
    app = create_app(settings)
    d = await serving.start(settings, app.state.metrics)
    app.state.daemon = d
    model = d.registry.get()
    arrs, _ = digits(16)
    pngs = [encode(a) for a in arrs]
    grid = model.level.calc.grid(7)
    rng = random.Random(0)
    moves = 0

    def controller_moves() -> None:  # what the controller does on a decision
        nonlocal moves
        d._on_level(model, rng.choice(grid), "test")
        moves += 1

    async def one(client: httpx.AsyncClient, i: int) -> tuple[int, dict]:
        # A move every MOVE_EVERY requests, with up to 64 in flight: as many moves however
        # fast the machine is (a mover on a 2 ms timer made 39 on a loaded one, 100+ idle).
        if i % MOVE_EVERY == 0:
            controller_moves()
        j = i % len(pngs)
        r = await client.post("/predict", content=pngs[j], headers={"content-type": "image/png"})
        assert r.status_code == 200, r.text
        return j, r.json()

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://lcs") as client:
        sem = asyncio.Semaphore(64)

        async def bounded(i: int) -> tuple[int, dict]:
            async with sem:
                return await one(client, i)

        results = await asyncio.gather(*(bounded(i) for i in range(REQUESTS)))
    await serving.stop(d)
    return results, moves


def test_no_response_mixes_levels():
    results, moves = asyncio.run(scenario())
    arrs, _ = digits(16)
    net, meta, _ = checkpoint.load()
    levels = LevelCompressor(net, cache=True)
    refs: dict[tuple[int, float], torch.Tensor] = {}
    mismatches, seen = 0, set()
    for j, body in results:
        alpha = body["level"]["alpha"]
        seen.add(alpha)
        if (j, alpha) not in refs:
            x = torch.from_numpy(arrs[j]).float().view(1, 1, 28, 28) / 255 - meta.mean[0]
            x = x / meta.std[0]
            with torch.inference_mode():
                refs[(j, alpha)] = torch.softmax(net(x, levels(alpha)), 1)[0]
        ref = refs[(j, alpha)]
        top = body["predictions"][0]
        mismatches += (
            top["index"] != int(ref.argmax()) or abs(top["probability"] - float(ref.max())) > 1e-4
        )
    assert len(results) == REQUESTS and moves == REQUESTS // MOVE_EVERY and len(seen) >= 5
    assert mismatches == 0
