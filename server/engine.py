"""Inference engine: a bounded queue, dynamic micro-batching, one dedicated inference thread."""

from __future__ import annotations

import asyncio
import collections
import functools
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

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


class _Item:
    """One request's row on its way through the queue (slots: one is made per request)."""

    __slots__ = ("enqueued", "future", "level", "trace", "x")

    def __init__(self, x: torch.Tensor, future: asyncio.Future[Result], level: Level | None):
        self.x = x  # (C, H, W)
        self.future = future
        self.level = level  # a request's own level (a hint); None: the current one
        self.enqueued = time.perf_counter()
        self.trace = tracing.capture()  # its span context; None: tracing off


@dataclass(frozen=True)
class _Traced:
    """What tracing.batch_done reads of a request that ran inline."""

    trace: Any
    enqueued: float


def _expire(future: asyncio.Future[Result]) -> None:
    if not future.done():
        future.set_exception(DeadlineExceeded("no result within the request's deadline"))


# (batch, the level asked for or None for the current one) -> (probs, level run, tier) or
# (probs, level run, tier, precision)
Forward = Callable[[torch.Tensor, Level | None], tuple[torch.Tensor, Level, str, *tuple[str, ...]]]
Observer = Callable[[int, float, str], None]  # (batch size, forward seconds, tier)
Inline = Callable[[], bool]  # whether a pass at the current point is short enough to run inline


def inference_executor(threads: int) -> InferenceThread:
    """The one thread every forward pass runs on, with torch's intra-op threads set on it:
    two models never run at once and oversubscribe the cores."""
    return InferenceThread(threads)


class InferenceThread(Executor):
    """One worker thread fed by a SimpleQueue. call(fn) queues work with no Future: the
    engines' batches, which hand their results back themselves (a ThreadPoolExecutor's
    submit makes a Future, a Condition and a work item per batch, and wakes its worker
    through a semaphore). submit() is there for run_in_executor (warm-up, profiling)."""

    def __init__(self, threads: int) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[], object], Future[object] | None] | None]
        self._queue = queue.SimpleQueue()
        self._cancel = False
        # Jobs queued and finished: equal when the thread has nothing to do. Only the worker
        # counts finished ones; jobs are queued by the event loop and by the worker itself
        # (an engine's drain queues its next batch), so that count takes a lock.
        self._queued = 0
        self._finished = 0
        self._count = threading.Lock()
        self._thread = threading.Thread(
            target=self._work, args=(threads,), name="lcs-inference", daemon=True
        )
        self._thread.start()

    @property
    def idle(self) -> bool:
        """Nothing queued or running."""
        return self._queued == self._finished

    def call(self, fn: Callable[[], object]) -> None:
        with self._count:
            self._queued += 1
        self._queue.put((fn, None))

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._count:
            self._queued += 1
        self._queue.put((functools.partial(fn, *args, **kwargs), future))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._cancel = self._cancel or cancel_futures
        self._queue.put(None)
        if wait:
            self._thread.join()

    def _work(self, threads: int) -> None:
        torch.set_num_threads(threads)
        while (job := self._queue.get()) is not None:
            try:
                self._run(*job)
            finally:
                self._finished += 1

    def _run(self, fn: Callable[[], object], future: Future[object] | None) -> None:
        if future is None:
            if not self._cancel:
                fn()  # an engine's drain: it reports its own errors to its requests
            return
        if self._cancel:
            future.cancel()
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn())
        except BaseException as e:
            future.set_exception(e)


class Engine:
    """Requests wait in a bounded queue; whatever is waiting when the inference thread frees up
    (up to `max_batch`; half of it under light load, see batch_size) runs as one batch at one
    Level.

    The inference thread takes its batch from the queue itself and hands the results back with
    one call_soon_threadsafe per batch: no batcher task on the event loop, so a request costs
    the loop one wake-up (its own), not three (measured: the asyncio queue, batcher task and
    run_in_executor hop were ~160 µs of a request's CPU). One drain job per batch in the shared
    executor, so engines of several models take turns batch by batch."""

    def __init__(
        self,
        forward: Forward,
        *,
        max_batch: int,
        max_wait_s: float,
        max_queue: int,
        executor: InferenceThread,
        on_batch: Observer | None = None,
        inline: Inline | None = None,
        inside: Callable[[], int] | None = None,
    ) -> None:
        self._forward = forward
        self._inside = inside  # requests inside the daemon now, of every model (batch_size)
        self._inline = inline
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self._pending: collections.deque[_Item] = collections.deque()
        # Guards _pending against the inference thread and _scheduled: a drain job is queued
        # or running (at most one per engine), so a request never waits unseen.
        self._lock = threading.Lock()
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None  # the batch window (max_wait_s > 0)
        self._executor = executor  # shared by every model: one forward pass at a time
        self._on_batch = on_batch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False

    @property
    def depth(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        self._stopped = True  # queued drain jobs return at once
        if self._timer is not None:
            self._timer.cancel()

    async def run_sync(self, fn: Callable[[], object]) -> object:
        """Run `fn` on the inference thread (warm-up, profiling): never beside a forward pass."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def infer(
        self, x: torch.Tensor, deadline: float, level: Level | None = None, lone: bool = False
    ) -> Result:
        """x (C, H, W) through the queue; `deadline` is a time.monotonic() instant; `level`
        pins the request to a level of its own (else it runs at the one current then).
        `lone`: x is the only row of the only request in the daemon (DaemonLoad.alone), so
        it has nothing to batch with; with the inference thread idle and `inline` saying its
        pass is short, it runs right here on the event loop."""
        if lone and level is None and self._inline_now():
            if time.monotonic() >= deadline:
                raise DeadlineExceeded("no result within the request's deadline")
            return self.run_inline(x)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        if len(self._pending) >= self.max_queue:
            raise QueueFull(f"queue full ({self.max_queue} waiting); retry shortly")
        item = _Item(x, loop.create_future(), level)
        with self._lock:
            self._pending.append(item)
            first, self._scheduled = not self._scheduled, True
        if first:
            if self.max_wait_s > 0 and len(self._pending) < self.max_batch:
                # A batch window opens with its first request: more may join it meanwhile.
                self._timer = loop.call_later(self.max_wait_s, self._submit)
            else:
                self._submit()
        elif self._timer is not None and len(self._pending) >= self.max_batch:
            self._timer.cancel()  # the window's batch is full: no need to wait it out
            self._submit()
        # One timer on the item's own future, not wait_for(shield(...)): that pair costs two
        # more futures and a task wake-up per request. An expired or abandoned item is done,
        # and a batch not yet started skips it.
        timer = loop.call_later(max(deadline - time.monotonic(), 0.0), _expire, item.future)
        try:
            return await item.future
        finally:
            timer.cancel()

    def inline_ready(self, deadline: float) -> bool:
        """Whether a lone request may run its pass inline now (run_inline) within `deadline`."""
        return self._inline_now() and time.monotonic() < deadline

    def _inline_now(self) -> bool:
        """Nothing of any model waits or runs on the inference thread, no batch window is
        open or asked for, and the model says its pass is short."""
        return (
            self._inline is not None
            and self.max_wait_s == 0
            and not self._pending
            and not self._stopped
            and self._executor.idle
            and self._inline()
        )

    def run_inline(self, x: torch.Tensor) -> Result:
        """One pass at the current level on the calling thread, reported as a batch of one
        that waited for nothing: the same Result, metrics and spans as through the queue."""
        rows, ran, tier, precision, start, seconds = self._pass(x.unsqueeze(0), None)
        trace = tracing.capture()
        if trace is not None:
            tracing.batch_done([_Traced(trace, start)], ran, tier, start, seconds)
        return Result(rows[0], ran, tier, 0.0, seconds, 1, 0.0, precision)

    def _pass(
        self, x: torch.Tensor, level: Level | None
    ) -> tuple[tuple[torch.Tensor, ...], Level, str, str, float, float]:
        """One forward pass, timed and reported to `on_batch`: (rows, level run, tier,
        precision, start, seconds)."""
        start = time.perf_counter()
        probs, ran, tier, *precision = self._forward(x, level)
        seconds = time.perf_counter() - start
        if self._on_batch:
            self._on_batch(len(x), seconds, tier)
        return probs.unbind(0), ran, tier, precision[0] if precision else "fp32", start, seconds

    def _submit(self) -> None:
        self._timer = None
        self._queue_drain()

    def _queue_drain(self) -> None:
        self._executor.call(self._drain)

    # On the inference thread.

    def _drain(self) -> None:
        """One batch: what is waiting now (or half of it: batch_size), requests at the same level
        together. What is left queues the next batch, behind any other engine's; requests
        arriving meanwhile queue their own. Settled before the forward pass, so the thread's
        last act is to hand the results over and it lets go of the GIL at once for the loop
        it has just woken."""
        batch: list[_Item] = []
        with self._lock:
            inside = None if self._inside is None else self._inside()
            size = batch_size(len(self._pending), self.max_batch, self.max_wait_s > 0, inside)
            while self._pending and len(batch) < size:
                item = self._pending.popleft()
                if not item.future.done():  # expired or abandoned: never computed
                    batch.append(item)
            if self._pending and not self._stopped:
                self._queue_drain()
            else:
                self._scheduled = False
        groups: dict[int, list[_Item]] = {}
        for item in batch:
            groups.setdefault(id(item.level), []).append(item)
        for group in groups.values():
            if self._stopped:
                break
            self._run_group(group)

    def _run_group(self, batch: list[_Item]) -> None:
        """Everything a batch costs besides resolving its futures, so the event loop (what
        limits throughput under concurrency) does the least per batch. Measured: a faster
        forward pass (tier 2) forms smaller batches, and per-batch work left on the loop then
        cost more than the forward pass saved."""
        assert self._loop is not None
        try:
            done = self._pass(torch.stack([i.x for i in batch]), batch[0].level)  # (B, C, H, W)
        except Exception as e:
            self._loop.call_soon_threadsafe(_fail, batch, e)
            return
        self._loop.call_soon_threadsafe(_resolve, batch, *done)


def batch_size(waiting: int, max_batch: int, window: bool, inside: int | None = None) -> int:
    """How many of the `waiting` requests the next pass takes.

    Under light load (at most half a full batch of requests `inside` the daemon, or waiting
    when that is not known) it takes half, rounded up: the first half's answers go back one
    pass sooner, and those clients' next requests arrive while the second half runs, so the
    inference thread is not left idle through the whole batch's round trip. Otherwise it
    takes all it may: with more clients than that, a pass costs a loop wake-up and GIL
    hand-offs whatever its size. A batch window (`window`) means the operator asked for full
    batches: those are never split. Measured (A/B, h2load gRPC, digits on tier 2, max batch
    16, 3 rounds): c = 8 1379/1274/1637 → 1693/1692/1672 req/s; c = 16 and 32 unchanged
    within noise. Halving by the queue alone cost 10-15 % at c = 16, at every load 6-9 % at
    c = 32."""
    light = 2 * (waiting if inside is None else inside) <= max_batch
    if window or not light:
        return min(waiting, max_batch)
    return (waiting + 1) // 2


def _fail(batch: list[_Item], e: Exception) -> None:
    for i in batch:
        if not i.future.done():
            i.future.set_exception(e)


def _resolve(
    batch: list[_Item],
    rows: tuple[torch.Tensor, ...],
    level: Level,
    tier: str,
    precision: str,
    start: float,
    seconds: float,
) -> None:
    """On the event loop: each request's result, from its row of the batch."""
    n = len(batch)
    for row, i in zip(rows, batch, strict=True):
        if not i.future.done():
            i.future.set_result(Result(row, level, tier, start - i.enqueued, seconds, n, 0.0,
                                       precision))  # fmt: skip
    tracing.batch_done(batch, level, tier, start, seconds)
