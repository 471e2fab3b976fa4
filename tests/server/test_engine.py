"""The engine: micro-batches at one level, bounded queue, deadlines."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from server.engine import Engine, inference_executor
from server.errors import DeadlineExceeded, QueueFull


def soon(seconds: float) -> float:
    """A deadline `seconds` from now (Engine.infer takes a time.monotonic() instant)."""
    return time.monotonic() + seconds


class FakeLevel:
    def __init__(self, alpha: float) -> None:
        self.alpha = alpha


def make_engine(delay: float, **kw):
    calls: list[int] = []
    level = {"current": FakeLevel(1.0)}

    def forward(x: torch.Tensor, _level=None):
        calls.append(len(x))
        captured = level["current"]
        time.sleep(delay)
        return x.flatten(1) * captured.alpha, captured, "torch"  # each row stays its own

    opts = {
        "max_batch": 8,
        "max_wait_s": 0.0,
        "max_queue": 64,
        "executor": inference_executor(1),
    } | kw
    return Engine(forward, **opts), calls, level


async def held(forward, requests, **engine_kw):
    """Every (x, level) request queued while the inference thread is held, then released:
    the passes are formed from all of them at once. Their results, in order."""
    gate = threading.Event()
    pool = inference_executor(1)
    engine = Engine(forward, max_queue=64, executor=pool, **engine_kw)
    engine.start()
    pool.submit(gate.wait)
    tasks = [asyncio.create_task(engine.infer(x, soon(5), lv)) for x, lv in requests]
    await asyncio.sleep(0.05)
    gate.set()
    results = await asyncio.gather(*tasks)
    await engine.stop()
    pool.shutdown()
    return results


def test_concurrent_requests_are_batched_and_answered_in_order():
    async def main():
        engine, calls, _ = make_engine(0.02)
        engine.start()
        xs = [torch.full((1, 2, 2), float(i)) for i in range(20)]
        results = await asyncio.gather(*(engine.infer(x, soon(5)) for x in xs))
        await engine.stop()
        return results, calls

    results, calls = asyncio.run(main())
    assert sum(calls) == 20 and max(calls) > 1 and max(calls) <= 8
    for i, r in enumerate(results):
        assert torch.equal(r.probabilities, torch.full((4,), float(i)))
        assert r.batch_size >= 1


def test_a_batch_runs_at_one_level_even_if_it_changes_meanwhile():
    async def main():
        engine, _, level = make_engine(0.05)
        engine.start()
        tasks = [asyncio.create_task(engine.infer(torch.ones(1, 1, 1), soon(5))) for _ in range(6)]
        await asyncio.sleep(0.01)
        level["current"] = FakeLevel(0.5)  # the switch lands while a batch is running
        results = await asyncio.gather(*tasks)
        await engine.stop()
        return results

    for r in asyncio.run(main()):
        assert float(r.probabilities[0]) == r.level.alpha  # output and reported level agree


def test_queue_full_is_refused():
    async def main():
        engine, _, _ = make_engine(0.2, max_queue=2, max_batch=1)
        engine.start()
        first = asyncio.create_task(engine.infer(torch.ones(1), soon(5)))
        await asyncio.sleep(0.05)  # first is running; the queue is empty again
        queued = [asyncio.create_task(engine.infer(torch.ones(1), soon(5))) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await engine.infer(torch.ones(1), soon(5))
        done = await asyncio.gather(first, *queued)
        await engine.stop()
        return done

    assert len(asyncio.run(main())) == 3  # everything accepted was answered


def test_deadline():
    async def main():
        engine, calls, _ = make_engine(0.3, max_batch=1)
        engine.start()
        slow = asyncio.create_task(engine.infer(torch.ones(1), soon(5)))
        await asyncio.sleep(0.01)
        with pytest.raises(DeadlineExceeded):
            await engine.infer(torch.ones(1), soon(0.05))  # waits behind `slow`
        await slow
        await asyncio.sleep(0.05)
        await engine.stop()
        return calls

    assert asyncio.run(main()) == [1]  # the expired request was never computed


def test_forward_runs_on_one_dedicated_thread():
    names = set()

    def forward(x, _level=None):
        names.add(threading.current_thread().name)
        return x, FakeLevel(1.0), "torch"

    async def main():
        engine = Engine(
            forward, max_batch=2, max_wait_s=0, max_queue=16, executor=inference_executor(1)
        )
        engine.start()
        await asyncio.gather(*(engine.infer(torch.ones(1), soon(5)) for _ in range(10)))
        await engine.stop()

    asyncio.run(main())
    assert len(names) == 1 and next(iter(names)).startswith("lcs-inference")


def test_engines_of_several_models_share_one_inference_thread():
    """Two models never run a forward pass at the same time (they would oversubscribe)."""
    running, overlaps = [0], [0]

    def forward(x, _level=None):
        running[0] += 1
        overlaps[0] += running[0] > 1
        time.sleep(0.002)
        running[0] -= 1
        return x, FakeLevel(1.0), "torch"

    async def main():
        pool = inference_executor(1)
        engines = [
            Engine(forward, max_batch=1, max_wait_s=0, max_queue=64, executor=pool)
            for _ in range(2)
        ]
        for e in engines:
            e.start()
        await asyncio.gather(*(e.infer(torch.ones(1), soon(5)) for e in engines for _ in range(20)))
        for e in engines:
            await e.stop()
        pool.shutdown()

    asyncio.run(main())
    assert overlaps[0] == 0 and running[0] == 0


def test_requests_pinned_to_their_own_level_batch_with_their_level_only():
    def forward(x, level=None):
        ran = level or FakeLevel(1.0)
        return x.flatten(1) * ran.alpha, ran, "torch"

    low, high = FakeLevel(0.25), FakeLevel(0.5)
    asked = [None, low, high, low, None, high]
    # 6 waiting of at most 8: a backlog, taken whole (not halved: batch_size)
    results = asyncio.run(
        held(forward, [(torch.ones(1), lv) for lv in asked], max_batch=8, max_wait_s=0)
    )
    for lv, r in zip(asked, results, strict=True):
        want = 1.0 if lv is None else lv.alpha
        assert r.level.alpha == want and float(r.probabilities[0]) == want
        assert r.batch_size == 2  # the two requests of its level, not all six


@pytest.mark.parametrize(
    ("waiting", "inside", "max_batch", "window_s", "passes"),
    [
        (6, None, 16, 0.0, [3, 2, 1]),  # light load: each pass takes half of what waits
        (9, None, 16, 0.0, [9]),  # more than half a batch waits: a backlog, taken whole
        (20, None, 16, 0.0, [16, 2, 1, 1]),  # a full batch, then the 4 left are halved
        (6, None, 16, 0.01, [6]),  # a batch window: the operator asked for full batches
        (1, None, 16, 0.0, [1]),
        (6, 8, 16, 0.0, [3, 2, 1]),  # 8 requests in the daemon: still light
        (6, 9, 16, 0.0, [6]),  # 9 in the daemon (3 decoding or answering): taken whole
    ],
)
def test_passes_take_half_under_light_load_and_all_otherwise(
    waiting, inside, max_batch, window_s, passes
):
    calls: list[int] = []

    def forward(x, level=None):
        calls.append(len(x))
        return x.flatten(1), FakeLevel(1.0), "torch"

    xs = [(torch.full((1,), float(i)), None) for i in range(waiting)]
    count = None if inside is None else (lambda: inside)
    results = asyncio.run(held(forward, xs, max_batch=max_batch, max_wait_s=window_s, inside=count))
    assert calls == passes
    assert [float(r.probabilities[0]) for r in results] == [float(i) for i in range(waiting)]
    assert sorted(r.batch_size for r in results) == sorted(n for n in passes for _ in range(n))


def test_inference_thread_runs_submitted_work_in_order_and_cancels_on_shutdown():
    pool = inference_executor(1)
    gate, order = threading.Event(), []
    pool.call(gate.wait)  # holds the thread: what follows is queued
    done = pool.submit(lambda: order.append("a") or threading.current_thread().name)
    failed = pool.submit(lambda: 1 / 0)
    pool.call(lambda: order.append("b"))
    gate.set()
    assert done.result(5).startswith("lcs-inference")
    with pytest.raises(ZeroDivisionError):
        failed.result(5)
    held = threading.Event()
    pool.call(held.wait)
    late = pool.submit(lambda: order.append("late"))
    pool.shutdown(wait=False, cancel_futures=True)
    held.set()
    pool._thread.join(5)
    assert late.cancelled() and order == ["a", "b"]


def forward_on(threads: list[str]):
    """A forward pass that records which thread ran it; each row becomes its own sum."""
    level = FakeLevel(1.0)

    def forward(x: torch.Tensor, _level=None):
        threads.append(threading.current_thread().name)
        return x.flatten(1).sum(1, keepdim=True), level, "onnx"

    return forward


def test_a_lone_short_pass_runs_on_the_event_loop_only_when_allowed():
    async def main():
        threads: list[str] = []
        allow = {"inline": True}
        engine = Engine(
            forward_on(threads), max_batch=8, max_wait_s=0.0, max_queue=8,
            executor=inference_executor(1), inline=lambda: allow["inline"],
        )  # fmt: skip
        engine.start()
        x = torch.full((1, 2, 2), 3.0)
        inline = await engine.infer(x, soon(5), lone=True)
        queued = await engine.infer(x, soon(5))  # not its request's only row: queued
        allow["inline"] = False
        refused = await engine.infer(x, soon(5), lone=True)
        allow["inline"] = True
        pinned = await engine.infer(x, soon(5), FakeLevel(0.5), lone=True)  # a level of its own
        await engine.stop()
        return threads, [inline, queued, refused, pinned]

    threads, results = asyncio.run(main())
    assert threads == ["MainThread", "lcs-inference", "lcs-inference", "lcs-inference"]
    for r in results:
        assert float(r.probabilities[0]) == 12.0 and r.batch_size == 1 and r.tier == "onnx"
    assert results[0].queue_s == 0.0


def test_no_pass_runs_inline_while_the_inference_thread_is_busy():
    """Two passes never run at once: a lone request waits its turn behind a running batch."""

    async def main():
        threads: list[str] = []
        started, release = threading.Event(), threading.Event()
        engine = Engine(
            forward_on(threads), max_batch=8, max_wait_s=0.0, max_queue=8,
            executor=inference_executor(1), inline=lambda: True,
        )  # fmt: skip
        engine.start()
        loop = asyncio.get_running_loop()
        other = loop.run_in_executor(engine._executor, lambda: (started.set(), release.wait(5)))
        await asyncio.to_thread(started.wait, 5)
        lone = asyncio.create_task(engine.infer(torch.ones(1, 1, 1), soon(5), lone=True))
        await asyncio.sleep(0.05)
        assert not lone.done()  # queued behind the busy thread, not run beside it
        release.set()
        await other
        result = await lone
        await engine.stop()
        return threads, result

    threads, result = asyncio.run(main())
    assert threads == ["lcs-inference"] and float(result.probabilities[0]) == 1.0


def test_daemon_load_allows_inline_passes_only_to_one_client_at_a_time(monkeypatch):
    from server import inference
    from server.inference import PROBE, DaemonLoad

    clock = {"t": 100.0}
    monkeypatch.setattr(inference.time, "monotonic", lambda: clock["t"])
    load = DaemonLoad()
    load.enter()
    lone = [load.alone() for _ in range(2 * PROBE)]
    # every PROBE-th lone request takes the inference thread: the probe for hidden overlap
    assert lone.count(False) == 2 and not lone[PROBE - 1] and not lone[2 * PROBE - 1]
    load.enter()  # a second request arrives while the first is inside: overlap
    assert not load.alone()
    load.leave()
    clock["t"] += inference.OVERLAP_HOLD_S - 0.01
    assert not any(load.alone() for _ in range(PROBE))  # held off for a while after overlap
    clock["t"] += 0.02
    assert load.alone()


def test_a_probe_drawn_by_a_request_handed_on_is_owed_to_the_next_lone_request(monkeypatch):
    """The in-place path hands a request that drew the probe to the app, where the same
    request asks again: the probe must not be lost (nor taken twice)."""
    from server import inference
    from server.inference import PROBE, DaemonLoad

    monkeypatch.setattr(inference.time, "monotonic", lambda: 100.0)
    load = DaemonLoad()
    assert load.quiet()
    load.enter()
    assert not load.quiet()
    drawn = [load.alone(handing_on=True) for _ in range(PROBE)]
    assert drawn.count(False) == 1 and not drawn[-1] and load.owed
    assert not load.alone()  # the request handed on: it takes the inference thread
    assert not load.owed
    assert all(load.alone() for _ in range(PROBE - 1))  # and the count goes on as before
    assert not load.alone()  # the next probe, taken by the app's path itself: nothing owed
    assert not load.owed
