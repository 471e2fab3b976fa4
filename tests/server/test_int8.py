"""Tier 2's int8 variant: gated on its agreement with tier 1, profiled, chosen, served."""

from __future__ import annotations

import asyncio

import numpy as np
import torch

from controller.policy import LevelPoint
from models import LevelCompressor, checkpoint
from models.data import load_dataset
from tests.helpers import in_process
from tests.server.test_tier2 import PNGS, daemon, sample, until


def held_out() -> tuple[np.ndarray, np.ndarray]:
    """The default model's held-out digits in its input space, computed here independently."""
    _, meta, _ = checkpoint.load()
    test = load_dataset(meta.dataset).test
    x = (test.images.float() / 255 - meta.mean[0]) / meta.std[0]
    return x.numpy(), test.labels.numpy()


async def post(client, hint: str = "") -> dict:
    r = await client.post("/predict" + hint, content=PNGS[0], headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    return r.json()


def with_daemon(**overrides):
    """test_tier2's daemon with int8 variants on, and the Daemon itself (its controller)."""
    return in_process(**{"tier2_settle_s": 0.05, "tier2_int8": True} | overrides)


def test_an_admitted_int8_variant_agrees_with_tier1_is_profiled_and_serves_when_chosen():
    async def main() -> None:
        async with with_daemon() as (d, rt, client):
            t2 = rt.tier2
            assert t2 is not None
            alpha = rt.level.current.alpha
            # quantizing and gating in the export process: a bound for a loaded machine
            await until(lambda: alpha in t2.int8_cache or alpha in t2.int8_refused, 240)
            assert alpha not in t2.int8_refused, t2.int8_refused
            q = t2.int8_cache[alpha]
            assert q.precision == "int8" and q.gate is not None

            # Its agreement with tier 1 on real digits, recomputed here: ≥ the threshold,
            # and the recorded held-out accuracy is the one this session really has.
            x, labels = held_out()
            net, _, _ = checkpoint.load()
            with torch.inference_mode():
                tier1 = net(torch.from_numpy(x), LevelCompressor(net)(alpha)).numpy()
            out = q.run(torch.from_numpy(x)).numpy()
            agree = float(np.mean(out.argmax(1) == tier1.argmax(1)))
            assert agree >= 0.99 and abs(agree - q.gate.agreement) < 1e-9
            assert abs(float(np.mean(out.argmax(1) == labels)) - q.gate.accuracy) < 1e-9

            # The profile gained the (width, int8) point with its latency and accuracy.
            point = rt.service.profile.variant(alpha, "int8")
            assert point is not None and point.latency_s == q.latency_s > 0
            assert point.accuracy == q.gate.accuracy
            level = (await client.get("/level")).json()
            assert level["precision"] == "fp32"  # offered, not chosen yet
            assert [p["alpha"] for p in level["profile_int8"]] == [alpha]
            assert len(level["profile"]) == len(rt.service.profile.points)  # fp32 rows only
            assert level["tier2"]["int8"]["points"][0]["agreement"] == q.gate.agreement

            # Chosen through the controller's wiring: the int8 session answers.
            plant = d._plant(rt)
            assert plant.points().variant(alpha, "int8") == point
            plant.on_point(alpha, "int8", "test")
            await until(lambda: plant.current_precision() == "int8")
            body = await post(client)
            assert (body["level"]["tier"], body["level"]["precision"]) == ("onnx", "int8")
            img = rt.service.preprocess(PNGS[0]).unsqueeze(0)  # what the daemon feeds it
            want = q.run(img, "probabilities")[0]
            fp32 = t2.cache[alpha].run(img, "probabilities")[0]
            top = body["predictions"][0]
            assert abs(top["probability"] - float(want.max())) <= 1e-6
            assert float((want - fp32).abs().max()) > 1e-6  # it is not the fp32 answer
            assert (await client.get("/level")).json()["precision"] == "int8"
            assert sample(rt, "lcs_int8") == 1.0

            # A floor above int8's recorded accuracy is served by the width's fp32 point;
            # one it meets stays on int8.
            fp32_acc = rt.service.profile.point(alpha).accuracy
            assert fp32_acc is not None
            low = LevelPoint(alpha, q.gamma, q.latency_s or 0.0, fp32_acc - 0.01, "int8")
            rt.service.profile = rt.service.profile.with_points([low])
            above = await post(client, f"?min_accuracy={fp32_acc - 0.005}")
            assert above["level"]["precision"] == "fp32" and above["level"]["alpha"] == alpha
            below = await post(client, f"?min_accuracy={fp32_acc - 0.02}")
            assert below["level"]["precision"] == "int8"

            await rt.level.switch(alpha, "test", "fp32")
            assert (await post(client))["level"]["precision"] == "fp32"
            assert sample(rt, "lcs_int8") == 0.0

            # Over the cache budget with the pair: the variant goes, and leaves the profile.
            t2.budget_bytes = t2.cache[alpha].nbytes
            t2._fit(alpha)
            assert alpha not in t2.int8_cache and alpha in t2.cache
            assert rt.service.profile.variants == ()

    asyncio.run(main())


def test_a_variant_below_the_agreement_threshold_is_refused_and_fp32_stays():
    async def main() -> None:
        async with with_daemon(tier2_int8_min_agreement=1.01) as (_, rt, client):
            t2 = rt.tier2
            assert t2 is not None
            alpha = rt.level.current.alpha
            await until(lambda: alpha in t2.int8_refused, 240)
            assert "agreement" in t2.int8_refused[alpha] and alpha not in t2.int8_cache
            assert rt.service.profile.variants == ()
            assert sample(rt, "lcs_tier2_failures_total", reason="int8") == 1.0
            level = (await client.get("/level")).json()
            assert level["tier2"]["int8"]["refused"][0]["alpha"] == alpha
            # asked for int8 anyway: the fp32 width keeps serving
            await rt.level.switch(alpha, "test", "int8")
            body = await post(client)
            assert (body["level"]["tier"], body["level"]["precision"]) == ("onnx", "fp32")

    asyncio.run(main())


def test_int8_off_prepares_no_variant():
    async def main() -> None:
        async with daemon(tier2_int8=False) as (rt, _client):
            assert rt.tier2 is not None and rt.tier2.int8 is None
            await until(lambda: rt.service.tier() == "onnx")
            assert rt.tier2.int8_cache == {} and rt.service.profile.variants == ()

    asyncio.run(main())


def test_an_operator_fixes_the_precision_with_put_level():
    async def main() -> None:
        # int8 variants on, but none prepared (the settle delay outlasts the test)
        async with with_daemon(tier2_settle_s=600.0) as (_, rt, client):
            alpha = rt.level.current.alpha
            body = {"mode": "fixed", "alpha": alpha, "precision": "int8"}
            r = await client.put("/level", json=body)
            assert r.status_code == 200, r.text
            assert r.json()["policy"]["precision"] == "int8" and rt.level.precision == "int8"
            # asked for, not admitted yet: fp32 serves until tier 2 holds the variant
            assert r.json()["precision"] == "fp32"
            assert (await post(client))["level"]["precision"] == "fp32"
            # a fixed policy without a precision means fp32 again
            r = await client.put("/level", json={"mode": "fixed", "alpha": alpha})
            assert r.json()["policy"]["precision"] == "fp32" and rt.level.precision == "fp32"
            auto = await client.put("/level", json={"mode": "auto", "precision": "int8"})
            assert auto.status_code == 422 and "chooses the precision" in auto.text
            bad = await client.put("/level", json={**body, "precision": "int4"})
            assert bad.status_code == 422

        async with with_daemon(tier2_int8=False, tier2_settle_s=600.0) as (_, rt, client):
            body = {"mode": "fixed", "alpha": rt.level.current.alpha, "precision": "int8"}
            r = await client.put("/level", json=body)
            assert r.status_code == 422 and "LCS_TIER2_INT8=1" in r.text
            assert rt.level.precision == "fp32"

    asyncio.run(main())
