"""Inference engine: a bounded queue, dynamic micro-batching, one dedicated inference thread."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from models import Level
from server import tracing
from server.errors import DeadlineExceeded, QueueFull


@dataclass
class Result:
    probabilities: torch.Tensor  # (classes,)
    level: Level  # the level the whole forward pass ran at
    tier: str  # what ran it: "torch" (tier 1) or "onnx" (tier 2)
    queue_s: float
    forward_s: float
    batch_size: int
    decode_s: float = 0.0  # set by the inference service for images it decoded
    precision: str = "fp32"  # what the forward pass computed in: "int8" on tier 2's variant


@dataclass
class _Item:
    x: torch.Tensor  # (C, H, W)
    future: asyncio.Future[Result]
    level: Level | None = None  # a request's own level (a hint); None: the current one
    enqueued: float = field(default_factory=time.perf_counter)
    trace: object = field(default_factory=tracing.capture)  # its span context; None: off


def _expire(future: asyncio.Future[Result]) -> None:
    if not future.done():
        future.set_exception(DeadlineExceeded("no result within the request's deadline"))


# (batch, the level asked for or None for the current one) -> (probs, level run, tier) or
# (probs, level run, tier, precision)
Forward = Callable[[torch.Tensor, Level | None], tuple[torch.Tensor, Level, str, *tuple[str, ...]]]
Observer = Callable[[int, float, str], None]  # (batch size, forward seconds, tier)


def inference_executor(threads: int) -> ThreadPoolExecutor:
    """The one thread every forward pass runs on, with torch's intra-op threads set on it:
    two models never run at once and oversubscribe the cores."""
    return ThreadPoolExecutor(
        1,
        thread_name_prefix="lcs-inference",
        initializer=torch.set_num_threads,
        initargs=(threads,),
    )


class Engine:
    """Requests wait in a bounded queue; whatever is waiting when the inference thread frees up
    (up to `max_batch`) runs as one batch at one Level."""

    def __init__(
        self,
        forward: Forward,
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        executor: Executor,
        on_batch: Observer | None = None,
    ) -> None:
        self._forward = forward
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(max_queue)
        self._executor = executor  # shared by every model: one forward pass at a time
        self._on_batch = on_batch
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="lcs-batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def run_sync(self, fn: Callable[[], object]) -> object:
        """Run `fn` on the inference thread (warm-up, profiling): never beside a forward pass."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def infer(self, x: torch.Tensor, deadline: float, level: Level | None = None) -> Result:
        """x (C, H, W) through the queue; `deadline` is a time.monotonic() instant; `level`
        pins the request to a level of its own (else it runs at the one current then)."""
        loop = asyncio.get_running_loop()
        item = _Item(x, loop.create_future(), level)
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            raise QueueFull(f"queue full ({self.max_queue} waiting); retry shortly") from None
        # One timer on the item's own future, not wait_for(shield(...)): that pair costs two
        # more futures and a task wake-up per request. An expired or abandoned item is done,
        # and a batch not yet started skips it.
        timer = loop.call_later(max(deadline - time.monotonic(), 0.0), _expire, item.future)
        try:
            return await item.future
        finally:
            timer.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            groups: dict[int, list[_Item]] = {}  # requests at the same level batch together
            for item in batch:
                groups.setdefault(id(item.level), []).append(item)
            for group in groups.values():
                await self._run_group(loop, group)

    async def _run_group(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        try:
            rows, level, tier, precision, start, seconds = await loop.run_in_executor(
                self._executor, self._run_batch, [i.x for i in batch], batch[0].level
            )
        except Exception as e:
            for i in batch:
                if not i.future.done():
                    i.future.set_exception(e)
            return
        for row, i in zip(rows, batch, strict=True):
            if not i.future.done():
                i.future.set_result(
                    Result(
                        row, level, tier, start - i.enqueued, seconds, len(batch), 0.0, precision
                    )
                )
        tracing.batch_done(batch, level, tier, start, seconds)

    def _run_batch(
        self, xs: list[torch.Tensor], level: Level | None
    ) -> tuple[tuple[torch.Tensor, ...], Level, str, str, float, float]:
        """On the inference thread: everything a batch costs besides resolving its futures, so
        the event loop (what limits throughput under concurrency) does the least per batch.
        Measured: a faster forward pass (tier 2) forms smaller batches, and per-batch work
        left on the loop then cost more than the forward pass saved."""
        x = torch.stack(xs)  # (B, C, H, W)
        start = time.perf_counter()
        probs, ran, tier, *precision = self._forward(x, level)
        seconds = time.perf_counter() - start
        if self._on_batch:
            self._on_batch(len(xs), seconds, tier)
        return probs.unbind(0), ran, tier, precision[0] if precision else "fp32", start, seconds

    async def _collect(self) -> list[_Item]:
        batch = [await self._queue.get()]
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except TimeoutError:
                break
        return [i for i in batch if not i.future.done()]
