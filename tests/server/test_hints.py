"""Per-request floors and ceilings: served from the same model at the level they ask for."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import digits, encode, reference_probabilities
from tests.server.test_core import AUTH, running

PNG = {"content-type": "image/png"}


def test_min_accuracy_rises_above_the_controllers_level_and_max_latency_lowers_it():
    arrs, _ = digits(6)
    pngs = [encode(a) for a in arrs]

    async def main() -> tuple[list[tuple[int, str, dict]], set[float]]:
        # The daemon sits at its most compressed level, where a controller would put it on a
        # busy machine (started there, no controller to move it: deterministic).
        async with running(controller_enabled=False, initial_alpha=0.0) as (d, client):
            model = d.registry.get()
            bottom = model.level.calc.alpha_min
            assert model.level.current.alpha == bottom
            best = max(p.accuracy or 0 for p in model.profile)
            reach = {p.alpha for p in model.profile if (p.accuracy or 0) >= best}
            out = []

            async def post(j: int, kind: str, params: dict) -> None:
                r = await client.post("/predict", content=pngs[j], headers=PNG, params=params)
                assert r.status_code == 200, r.text
                out.append((j, kind, r.json()))

            await asyncio.gather(  # hinted and plain requests side by side, batching
                *(post(j, "floor", {"min_accuracy": best}) for j in range(6)),
                *(post(j, "plain", {}) for j in range(6)),
            )
            r = await client.post("/predict", content=pngs[0], headers=PNG,
                                  params={"min_accuracy": min(1.0, best + 0.005)})  # fmt: skip
            assert r.status_code == 422 and f"{best:.4f}" in r.json()["error"]
            # Back to the top: a latency ceiling may lower the level of one request…
            await client.put("/level", json={"mode": "fixed", "gamma": 1.0}, headers=AUTH)
            await client.put("/level", json={"mode": "auto"}, headers=AUTH)  # stays at the top
            assert model.level.current.alpha == model.level.calc.alpha_max
            for j in range(3):
                await post(j, "ceiling", {"max_latency_ms": 0.001})
            # …but not below a fixed level, which is the bounds [γ, γ].
            await client.put("/level", json={"mode": "fixed", "gamma": 1.0}, headers=AUTH)
            r = await client.post("/predict", content=pngs[0], headers=PNG,
                                  params={"max_latency_ms": 0.001})  # fmt: skip
            assert r.status_code == 422 and "fixed" in r.json()["error"]
            return out, reach

    out, reach = asyncio.run(main())
    for j, kind, body in out:
        alpha = body["level"]["alpha"]
        if kind == "floor":
            assert alpha in reach  # a level whose held-out accuracy is the best
        elif kind == "plain":
            assert alpha == 0.0  # where the controller is
        else:
            assert alpha < 1.0  # the ceiling lowered it
        ref = reference_probabilities(arrs[j], alpha)
        top = body["predictions"][0]
        assert top["index"] == int(ref.argmax())
        assert top["probability"] == pytest.approx(float(ref.max()), abs=1e-5)
