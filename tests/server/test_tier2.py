"""Tier 2: ONNX Runtime sessions of settled levels match PyTorch, swap in without losing or mixing
requests, and any failure leaves the daemon answering from tier 1."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
import torch

from models import LevelCompressor, checkpoint
from models.levels import SubspaceSpec
from models.networks import create_model
from server.exporter import Exporter
from server.metrics import Metrics
from server.served import ServedModel
from server.settings import Settings, add_arguments, from_args
from server.tier2 import Prepared, Tier2, Tier2Failure, prepare
from tests.helpers import digits, encode, in_process

TOLERANCE = 1e-3  # max |Δlogits| ≤ TOLERANCE · max(1, max |logits|), as the daemon checks
# Small inputs and ten classes keep the ImageNet architectures to a second or so per export.
INPUT = {"small_cnn": (1, 28, 28), "cpreresnet20": (3, 32, 32), "resnet18": (3, 32, 32)}
INPUT["vgg19"] = (3, 32, 32)


def _net(arch: str, family: str, act_quant: bool = False, kind: str = "point"):
    torch.manual_seed(0)
    net = create_model(arch, SubspaceSpec(family, kind), num_classes=10).eval()
    if act_quant:  # activation fake-quant on, as after quantization training
        for m in net.modules():
            if getattr(m, "act_range", None) is not None:
                m.act_range.copy_(torch.tensor([-2.0, 3.0, 1.0]))
        net.act_quant_enabled.fill_(True)
    return net


CASES = [
    (arch, family, "point")
    for arch in ("small_cnn", "cpreresnet20", "resnet18", "vgg19")
    for family in ("structured", "unstructured", "quantization")
] + [("small_cnn", family, "line") for family in ("structured", "unstructured", "quantization")]


@pytest.mark.parametrize(("arch", "family", "kind"), CASES)
def test_tier2_reproduces_tier1(arch: str, family: str, kind: str):
    net = _net(arch, family, kind=kind)
    levels = LevelCompressor(net, cache=True)
    grid = net.spec.calc.grid(5)
    x = torch.randn(3, *INPUT[arch], generator=torch.Generator().manual_seed(1))
    for alpha in (grid[0], grid[len(grid) // 2], grid[-1]):  # most compressed, middle, full
        with torch.inference_mode():
            level = levels(alpha)
            reference = net(x, level)
        prepared = prepare(net, level, INPUT[arch], threads=1, tol=TOLERANCE)  # checks, too
        assert prepared.matches(level)
        diff = float((prepared.run(x) - reference).abs().max())
        assert diff <= TOLERANCE * max(1.0, float(reference.abs().max())), (alpha, diff)


def test_activation_fake_quant_is_refused_for_tier2():
    """Rounding activations turns float reassociation into whole quantization steps: such a
    level stays on tier 1 (counted as "unsupported") rather than ship a mismatch."""
    net = _net("small_cnn", "quantization", act_quant=True)
    level = LevelCompressor(net, cache=True)(1.0)
    with pytest.raises(Tier2Failure) as e:
        prepare(net, level, INPUT["small_cnn"], threads=1, tol=TOLERANCE)
    assert e.value.reason == "unsupported"

    async def main() -> tuple[float, Prepared | None]:
        metrics = Metrics()
        tier2 = Tier2(
            net,
            INPUT["small_cnn"],
            1,
            metrics.for_model("m"),  # type: ignore[arg-type]
            lambda: level,
            settle_s=0,
            budget_bytes=2**30,
            tolerance=TOLERANCE,
            exporter=Exporter(),
        )
        for _ in range(2):  # refused once, not retried on return
            tier2.level_changed(level)
            await asyncio.gather(*tier2._tasks)
        await tier2.close()
        value = metrics.registry.get_sample_value(
            "lcs_tier2_failures_total", {"model": "m", "reason": "unsupported"}
        )
        return value or 0.0, tier2.serving(level)

    failures, serving = asyncio.run(main())
    assert failures == 1 and serving is None


@asynccontextmanager
async def daemon(**overrides) -> AsyncIterator[tuple[ServedModel, httpx.AsyncClient]]:
    tier2 = {"max_queue": 512, "tier2_enabled": True, "tier2_settle_s": 0.05}
    async with in_process(**tier2 | overrides) as (_, rt, client):
        yield rt, client


async def until(condition: Callable[[], bool], timeout_s: float = 60) -> None:
    """Wait for background preparation (a bound on waiting, not an assertion on time)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.01)


def sample(rt: ServedModel, name: str, **labels: str) -> float:
    return rt.metrics.registry.get_sample_value(name, {"model": rt.name, **labels}) or 0.0


ARRS, _ = digits(8)
PNGS = [encode(a) for a in ARRS]


async def predict(client: httpx.AsyncClient, j: int) -> dict:
    r = await client.post("/predict", content=PNGS[j], headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    return r.json()


def check_levels(results: list[tuple[int, dict]]) -> None:
    """Each response's answer is the model's own output at the level it reports."""
    net, meta, _ = checkpoint.load()
    levels = LevelCompressor(net, cache=True)
    for j, body in results:
        x = torch.from_numpy(ARRS[j]).float().view(1, 1, 28, 28) / 255
        x = (x - meta.mean[0]) / meta.std[0]
        with torch.inference_mode():
            ref = torch.softmax(net(x, levels(body["level"]["alpha"])), 1)[0]
        top = body["predictions"][0]
        assert top["index"] == int(ref.argmax())
        assert abs(top["probability"] - float(ref.max())) <= 1e-4


def test_swap_in_under_load_loses_nothing_and_never_mixes_levels():
    async def main() -> tuple[list[tuple[int, dict]], int]:
        async with daemon() as (rt, client):
            await until(lambda: rt.service.tier() == "onnx")  # the start-up level settles
            assert (await predict(client, 0))["level"]["tier"] == "onnx"
            grid = rt.level.calc.grid(7)
            results: list[tuple[int, dict]] = []
            sent = 0
            stop = asyncio.Event()

            async def client_loop(k: int) -> None:  # requests in flight throughout
                nonlocal sent
                while not stop.is_set():
                    j = (k + sent) % len(PNGS)
                    sent += 1
                    results.append((j, await predict(client, j)))

            load = [asyncio.create_task(client_loop(k)) for k in range(8)]
            # Each new level: tier 1 at once, then tier 2 swapped in behind the load; the
            # revisited grid[2] comes back from the cache.
            for alpha in [grid[2], grid[4], grid[2], grid[-1], grid[4]]:
                await rt.level.switch(alpha, "test")
                await until(lambda: rt.service.tier() == "onnx")
                served = len(results)
                await until(lambda n=served: len(results) >= n + 8)  # served on tier 2
            stop.set()
            await asyncio.gather(*load)
            # Moves faster than the settle delay: passed-through levels are never prepared.
            assert rt.tier2 is not None
            rt.tier2.settle_s = 1.0  # far longer than a small CNN's switch
            misses = sample(rt, "lcs_tier2_cache_misses_total")
            for alpha in grid[:2]:
                await rt.level.switch(alpha, "test")
                assert rt.service.tier() == "torch"
            await rt.level.switch(grid[4], "test")
            assert rt.service.tier() == "onnx"  # a cached level is served at once
            await asyncio.gather(*rt.tier2._tasks)  # the settle timers of grid[0] and grid[1]
            assert sample(rt, "lcs_tier2_cache_misses_total") == misses
            assert sample(rt, "lcs_tier2_cache_hits_total") >= 2
            assert sample(rt, "lcs_tier2_failures_total", reason="mismatch") == 0
            metrics = (await client.get("/metrics")).text
            assert 'lcs_inference_duration_seconds_count{model="digits",tier="onnx"}' in metrics
            assert 'lcs_inference_duration_seconds_count{model="digits",tier="torch"}' in metrics
            assert "lcs_tier2_prepare_duration_seconds_count" in metrics
            return results, sent

    results, sent = asyncio.run(main())
    assert len(results) == sent  # every request answered (predict asserts each was a 200)
    tiers = {(body["level"]["alpha"], body["level"]["tier"]) for _, body in results}
    assert {tier for _, tier in tiers} == {"torch", "onnx"}
    assert len({alpha for alpha, _ in tiers}) >= 3
    check_levels(results)


def _raise(*_args: object) -> object:
    raise RuntimeError("injected")


class BrokenSession:
    def run(self, *_args: object) -> object:
        raise RuntimeError("injected")


@pytest.mark.parametrize("where", ["export", "session", "budget"])
def test_a_failed_preparation_leaves_tier1_serving(where: str):
    async def main() -> list[tuple[int, dict]]:
        budget = {"tier2_cache_mb": 0.01} if where == "budget" else {}
        # The start-up level waits out a long settle, so the injection lands before any export.
        async with daemon(tier2_settle_s=600, **budget) as (rt, client):
            assert rt.tier2 is not None
            if where == "export":
                rt.tier2.export_fn = _raise  # type: ignore[assignment]
            elif where == "session":
                rt.tier2.session_fn = _raise  # type: ignore[assignment]
            rt.tier2.settle_s = 0.05
            results = []
            for alpha in rt.level.calc.grid(7)[2:5]:
                await rt.level.switch(alpha, "test")
                results.append((1, await predict(client, 1)))
                await until(lambda: sample(rt, "lcs_tier2_failures_total", reason=where) >= 1)
                await asyncio.sleep(0.1)
                results.append((2, await predict(client, 2)))
            assert rt.service.tier() == "torch" and rt.tier2.cached_bytes == 0
            return results

    results = asyncio.run(main())
    assert {body["level"]["tier"] for _, body in results} == {"torch"}
    check_levels(results)


def test_a_session_that_fails_on_a_request_falls_back_to_tier1():
    async def main() -> tuple[dict, dict, float]:
        async with daemon() as (rt, client):
            assert rt.tier2 is not None
            await until(lambda: rt.service.tier() == "onnx")
            good = rt.tier2.active
            assert good is not None
            broken = Prepared(good.alpha, good.gamma, good.family, BrokenSession(), good.nbytes)  # type: ignore[arg-type]
            rt.tier2.active = broken
            first = await predict(client, 3)  # runs into the broken session, answered by torch
            second = await predict(client, 3)
            return first, second, sample(rt, "lcs_tier2_failures_total", reason="run")

    first, second, failures = asyncio.run(main())
    assert first["level"]["tier"] == second["level"]["tier"] == "torch"
    assert failures == 1
    check_levels([(3, first), (3, second)])


def test_tier2_off_serves_torch_only():
    assert Settings.model_fields["tier2_enabled"].default is True  # on unless turned off

    async def main() -> dict:
        async with daemon(tier2_enabled=False) as (rt, client):
            assert rt.tier2 is None
            await asyncio.sleep(0.2)
            level = (await client.get("/level")).json()
            assert level["tier"] == "torch" and level["tier2"] is None
            return await predict(client, 4)

    body = asyncio.run(main())
    assert body["level"]["tier"] == "torch"
    check_levels([(4, body)])


def test_the_cache_evicts_least_recently_used_sessions_to_fit_its_budget():
    net = _net("small_cnn", "structured")
    levels = LevelCompressor(net, cache=True)
    current = {"level": levels(1.0)}
    tier2 = Tier2(
        net,
        INPUT["small_cnn"],
        1,
        Metrics().for_model("m"),  # type: ignore[arg-type]
        lambda: current["level"],
        settle_s=0,
        budget_bytes=250,
        tolerance=TOLERANCE,
        exporter=Exporter(),
    )

    def fake(alpha: float) -> Prepared:
        level = levels(alpha)
        return Prepared(level.alpha, level.gamma, level.family, None, 100)  # type: ignore[arg-type]

    a, b, c = fake(1.0), fake(0.5), fake(0.0)
    tier2._store(a)
    tier2.active = a  # serving α = 1
    tier2._store(b)
    tier2._store(c)  # over budget: b is the oldest that is neither active nor new
    assert list(tier2.cache) == [1.0, 0.0] and tier2.active is a
    tier2._store(fake(0.5))  # c goes: the oldest other than the active one
    assert list(tier2.cache) == [1.0, 0.5] and tier2.active is a
    tier2.budget_bytes = 150  # room for one: the current level's session wins
    current["level"] = levels(0.5)
    tier2._store(fake(0.5))
    assert list(tier2.cache) == [0.5] and tier2.active is None
    tier2.active = tier2.cache[0.5]
    tier2._store(fake(0.0))  # not current: it yields to the active session
    assert list(tier2.cache) == [0.5] and tier2.active is not None
    assert tier2.cached_bytes == 100


def test_tier2_is_turned_off_by_flag_or_environment(monkeypatch: pytest.MonkeyPatch):
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert from_args(p.parse_args([])).tier2_enabled is True
    assert from_args(p.parse_args(["--no-tier2"])).tier2_enabled is False
    monkeypatch.setenv("LCS_TIER2_ENABLED", "0")
    assert from_args(p.parse_args([])).tier2_enabled is False


@pytest.mark.parametrize(
    ("threads", "spin", "expected"), [(None, False, (2, "0")), (1, True, (1, "1"))]
)
def test_tier2_sessions_take_the_daemons_threads_unless_set(
    threads: int | None, spin: bool, expected: tuple[int, str]
):
    async def main() -> tuple[int, str]:
        async with daemon(torch_threads=2, tier2_threads=threads, tier2_spin=spin) as (rt, _c):
            assert rt.tier2 is not None
            await until(lambda: rt.service.tier() == "onnx")
            p = rt.tier2.active
            assert p is not None
            options = p.session.get_session_options()
            assert options.intra_op_num_threads == rt.tier2.threads
            return rt.tier2.threads, options.get_session_config_entry(
                "session.intra_op.allow_spinning"
            )

    assert asyncio.run(main()) == expected


def test_a_prepared_level_carries_its_measured_latency_into_the_profile():
    async def main() -> tuple[float | None, float | None, dict]:
        async with daemon() as (rt, client):
            assert rt.tier2 is not None
            await until(lambda: rt.service.tier() == "onnx")
            top, other = rt.level.current.alpha, rt.level.calc.grid(7)[0]
            level = (await client.get("/level")).json()
            # What a move costs the controller: nothing to a held level; the one build so
            # far (the metric's only observation) to any other.
            built = sample(rt, "lcs_tier2_prepare_duration_seconds_sum")
            assert sample(rt, "lcs_tier2_prepare_duration_seconds_count") == 1
            assert rt.tier2.build_seconds(top) == 0.0
            assert rt.tier2.build_seconds(other) == pytest.approx(built) and built > 0
            build_s = rt.service.profile.build_s
            assert build_s is not None and build_s(other) == rt.tier2.build_seconds(other)
            return rt.tier2.latency(top), rt.tier2.latency(other), level

    held, not_held, level = asyncio.run(main())
    assert held is not None and 0 < held < 1 and not_held is None
    by_alpha = {p["alpha"]: p for p in level["profile"]}
    assert by_alpha[level["alpha"]]["tier2_latency_ms"] == pytest.approx(1e3 * held)
    others = [p["tier2_latency_ms"] for a, p in by_alpha.items() if a != level["alpha"]]
    assert others and all(ms is None for ms in others)
