"""Tier 2's exporter process: the same ONNX as an in-process export, at low priority, and a
dead child costs one preparation, never a request."""

from __future__ import annotations

import asyncio
import os
import signal
import threading

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models import LevelCompressor
from models.export import to_onnx
from server.exporter import Exporter, ExporterDied
from server.tier2 import warmup_batch
from tests.server.test_tier2 import (
    INPUT,
    _net,
    check_levels,
    daemon,
    predict,
    sample,
    until,
)


def _logits(model: bytes, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.numpy()})[0]


def test_the_child_exports_what_an_in_process_export_does_at_nice_10():
    net = _net("small_cnn", "structured")
    level = LevelCompressor(net)(0.5)
    x = warmup_batch(INPUT["small_cnn"])
    exporter = Exporter()
    try:
        model, reference = exporter(net, level, x)
        assert exporter.pid is not None and exporter.pid != os.getpid()
        child_nice = os.getpriority(os.PRIO_PROCESS, exporter.pid)
        assert child_nice == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
    finally:
        exporter.close()
    with torch.inference_mode():
        assert torch.equal(reference, net(x, level))  # tier 1's logits, computed here
    here = to_onnx(net, level, x)
    np.testing.assert_allclose(_logits(model, x), _logits(here, x), rtol=0, atol=1e-6)


def test_portable_copies_only_the_sliced_channels():
    net = _net("small_cnn", "structured")
    with torch.inference_mode():  # as the daemon builds levels
        level = LevelCompressor(net)(0.0)
    copy = level.detached()
    for key, p in level.params.items():
        q = copy.params[key]
        assert torch.equal(p.weight, q.weight) and q.weight.is_contiguous()
        assert q.weight.untyped_storage().nbytes() == q.weight.numel() * 4
        assert not q.weight.is_inference()


def test_a_killed_child_raises_once_then_a_new_one_exports():
    net = _net("resnet18", "structured")  # an export long enough to kill the child inside it
    level = LevelCompressor(net)(1.0)
    x = warmup_batch(INPUT["resnet18"])
    exporter = Exporter()
    try:
        exporter.start()
        first_pid = exporter.pid
        assert first_pid is not None
        outcome: list[BaseException | None] = []

        def export() -> None:
            try:
                exporter(net, level, x)
                outcome.append(None)
            except BaseException as e:
                outcome.append(e)

        t = threading.Thread(target=export)
        t.start()
        # The parent computes tier 1's reference first, then sends; kill once the level is
        # in the child's hands (or about to be: a dead pipe raises the same way).
        threading.Event().wait(0.3)
        os.kill(first_pid, signal.SIGKILL)
        t.join(60)
        assert len(outcome) == 1 and isinstance(outcome[0], ExporterDied)
        model, _ = exporter(net, level, x)  # a fresh child
        assert exporter.pid not in (None, first_pid)
        assert len(model) > 0
    finally:
        exporter.close()


def test_a_dead_exporter_fails_one_preparation_and_the_level_is_retried():
    async def main() -> list[tuple[int, dict]]:
        async with daemon(tier2_settle_s=600) as (rt, client):
            assert rt.tier2 is not None
            exporter = rt.tier2.exporter
            real = rt.tier2.export_fn

            def dies_once(*args: object) -> object:
                rt.tier2.export_fn = real  # type: ignore[union-attr]
                raise ExporterDied("injected")

            rt.tier2.export_fn = dies_once  # type: ignore[assignment]
            rt.tier2.settle_s = 0.05
            grid = rt.level.calc.grid(7)
            results = []
            await rt.level.switch(grid[3], "test")
            await until(lambda: sample(rt, "lcs_tier2_failures_total", reason="exporter") == 1)
            results.append((1, await predict(client, 1)))
            assert rt.service.tier() == "torch"
            await rt.level.switch(grid[4], "test")  # away, then back: the level is not refused
            await rt.level.switch(grid[3], "test")
            await until(lambda: rt.service.tier() == "onnx")
            results.append((2, await predict(client, 2)))
            assert exporter.pid is not None and exporter.pid != os.getpid()
            return results

    results = asyncio.run(main())
    assert [body["level"]["tier"] for _, body in results] == ["torch", "onnx"]
    check_levels(results)


@pytest.mark.parametrize("exporting", [False, True])
def test_close_stops_the_child(exporting: bool):
    net = _net("small_cnn", "structured")
    exporter = Exporter()
    exporter.start()
    pid = exporter.pid
    assert pid is not None
    outcome: list[object] = []
    if exporting:  # closed mid-export, or just after: the caller gets ONNX or ExporterDied
        level = LevelCompressor(net)(1.0)

        def export() -> None:
            try:
                outcome.append(exporter(net, level, warmup_batch(INPUT["small_cnn"]))[0])
            except ExporterDied as e:
                outcome.append(e)

        t = threading.Thread(target=export)
        t.start()
    exporter.close()
    if exporting:
        t.join(30)
        assert len(outcome) == 1 and isinstance(outcome[0], bytes | ExporterDied)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: no such process
    with pytest.raises(ExporterDied):
        exporter.start()


def test_an_idle_child_exits_and_the_next_export_starts_another():
    net = _net("small_cnn", "structured")
    level = LevelCompressor(net)(1.0)
    x = warmup_batch(INPUT["small_cnn"])
    exporter = Exporter(idle_s=0.5)
    try:
        exporter(net, level, x)
        first = exporter.pid
        assert first is not None
        for _ in range(600):  # bounded wait for the idle timer
            if exporter.pid is None:
                break
            threading.Event().wait(0.05)
        assert exporter.pid is None
        with pytest.raises(ProcessLookupError):
            os.kill(first, 0)
        model, _ = exporter(net, level, x)
        assert exporter.pid not in (None, first) and len(model) > 0
    finally:
        exporter.close()


def test_one_child_exports_every_model_and_forgets_an_unloaded_one():
    """Several models share one export process: each network is sent to it once, and each
    export is of its own network (the logits match that network's, not the other's)."""
    nets = [_net("small_cnn", "structured"), _net("small_cnn", "unstructured")]
    x = warmup_batch(INPUT["small_cnn"])
    exporter = Exporter()
    try:
        pids = set()
        for _ in range(2):
            for net in nets:
                level = LevelCompressor(net)(0.5)
                model, reference = exporter(net, level, x)
                pids.add(exporter.pid)
                assert np.allclose(_logits(model, x), reference.numpy(), atol=1e-4)
        assert len(pids) == 1
        exporter.forget(nets[0])
        model, reference = exporter(nets[0], LevelCompressor(nets[0])(1.0), x)  # sent again
        assert np.allclose(_logits(model, x), reference.numpy(), atol=1e-4)
        assert exporter.pid in pids
    finally:
        exporter.close()
