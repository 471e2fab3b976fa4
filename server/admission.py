"""Admission by cost: an image's decoded bytes are reserved from a global budget before decoding."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, Future
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import torch

from server.errors import DeadlineExceeded, ServingError
from server.preprocess import ImageError, Inspected, Preprocessor

# Reading the header walks every marker/chunk before the pixels in Python: adversarial 8 MB
# files took up to 2 s (a JPEG of tiny APP markers), so only bodies this small are inspected on
# the event loop (≤ 4 ms worst case, measured; SECURITY.md), larger ones in the decode pool.
INLINE_INSPECT_BYTES = 16 * 1024
# A request's only image of at most this many pixels (and a body small enough to inspect
# inline) is decoded on the event loop too: a 28×28 digit decodes in ~50 µs, less than the
# pool's round trip, and the loop parses an OIP JSON body of the same digit for as long. At
# c = 8 (PNG, hey, 6 alternated daemon starts) 910 against 778 req/s, median.
INLINE_DECODE_PIXELS = 64 * 64
T = TypeVar("T")


class BudgetBusy(ServingError):
    """The decode budget stayed full until the request's deadline: HTTP 429 + Retry-After."""

    status = 429

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"busy decoding other images; retry in {retry_after_s} s")
        self.retry_after_s = self.retry_after = retry_after_s


class DecodeDeadline(DeadlineExceeded):
    """The deadline passed while the image was being decoded: HTTP 504."""


def default_budget_bytes() -> int:
    """A quarter of the cgroup memory limit, else 512 MB. The rest of a limit is the model,
    torch and ONNX Runtime (~300 MB for the bundled model), request bodies (8 MiB each) and
    the allocator's slack; a quarter leaves that room even at `--memory 1g`. Without a limit
    there is no number to derive from, and 512 MB still admits one 40 Mpx RGBA PNG (360 MB)."""
    from controller.cgroup import locate, memory_limit_bytes

    try:
        limit = memory_limit_bytes(locate())
    except (OSError, ValueError):  # unreadable: as if there were no limit
        limit = None
    return limit // 4 if limit else 512 << 20


class DecodeBudget:
    """Bytes being decoded at once, bounded. Waiting is first come, first served, except that
    an image of at most 1/32 of the budget that fits in what is free goes at once: ordinary
    images are not queued behind a line of large ones (those are bounded by the budget)."""

    def __init__(self, budget_bytes: int) -> None:
        self.total = budget_bytes
        self.free = budget_bytes
        self.small = budget_bytes // 32
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    @property
    def used(self) -> int:
        return self.total - self.free

    @asynccontextmanager
    async def reserve(self, nbytes: int, deadline: float) -> AsyncIterator[None]:
        await self.acquire(nbytes, deadline)
        try:
            yield
        finally:
            self.release(nbytes)

    async def acquire(self, nbytes: int, deadline: float) -> None:
        """Wait (until `deadline`, a time.monotonic() instant) for `nbytes` of the budget."""
        if nbytes > self.total:
            raise ImageError(
                f"decoding this image needs {math.ceil(nbytes / 2**20)} MB, larger than the "
                f"decode budget of {self.total // 2**20} MB",
                413,
            )
        if self.take(nbytes):
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (nbytes, fut)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(fut), max(0.0, deadline - time.monotonic()))
        except (TimeoutError, asyncio.CancelledError) as e:
            if fut.done() and not fut.cancelled():  # granted as we gave up: hand it back
                self.release(nbytes)
            else:
                fut.cancel()
                self._waiters.remove(entry)
                self._wake()  # the head may have been what blocked the others
            if isinstance(e, TimeoutError):
                raise BudgetBusy(1) from None
            raise

    def take(self, nbytes: int) -> bool:
        """`nbytes` now if acquire() would grant them without waiting; else False."""
        if nbytes <= self.free and (not self._waiters or nbytes <= self.small):
            self.free -= nbytes
            return True
        return False

    def release(self, nbytes: int) -> None:
        self.free += nbytes
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.free:
            nbytes, fut = self._waiters.popleft()
            self.free -= nbytes
            fut.set_result(None)


async def decode_admitted(
    pool: Executor,
    preprocess: Preprocessor,
    budget: DecodeBudget,
    data: bytes,
    deadline: float,
    large_pool: Executor | None = None,
    inline: bool = False,
) -> torch.Tensor:
    """Header check → reserve the decoded bytes → decode in `pool` → release; `inline` (the
    request's only image) and small: decoded right here. Raises ImageError
    (400 not an image, 413 over the pixel cap or the whole budget, 415 not an allowed format),
    BudgetBusy (429: the budget stayed full until `deadline`), DecodeDeadline (504).

    An image costing more than the budget's small share decodes in `large_pool`, when given:
    under attack, two 3000² decodes holding both threads of one pool made ordinary images
    wait behind them (benchmarks/soak.py --attack: ordinary p50 18 ms → 1.1 s)."""
    if len(data) <= INLINE_INSPECT_BYTES:
        ins = preprocess.inspect(data)
    else:
        ins = await _wait(pool.submit(preprocess.inspect, data), deadline)
    nbytes = ins.cost_bytes
    await budget.acquire(nbytes, deadline)
    if inline and _small(ins, data):
        try:
            return _decode(preprocess, ins, nbytes)
        finally:
            budget.release(nbytes)
    lane = large_pool if large_pool is not None and nbytes > budget.small else pool
    try:
        cf = lane.submit(_decode, preprocess, ins, nbytes)
    except BaseException:
        budget.release(nbytes)
        raise
    del ins  # the pool task holds the only reference to the opened image
    # The bytes are in use until the decode really ends, even after we stopped waiting.
    return await _wait(cf, deadline, functools.partial(budget.release, nbytes))


def decode_now(preprocess: Preprocessor, budget: DecodeBudget, data: bytes) -> torch.Tensor | None:
    """decode_admitted for an image it would decode on the event loop, when its bytes are
    free in the budget now: the tensor, decoded right here; None otherwise, with nothing
    reserved (decode_admitted then waits for them). Raises ImageError as decode_admitted."""
    if len(data) > INLINE_INSPECT_BYTES:
        return None
    ins = preprocess.inspect(data)
    nbytes = ins.cost_bytes
    if not _small(ins, data) or not budget.take(nbytes):
        return None
    try:
        return _decode(preprocess, ins, nbytes)
    finally:
        budget.release(nbytes)


def _small(ins: Inspected, data: bytes) -> bool:
    """An image small enough to decode on the event loop (its body inspected there too)."""
    return ins.width * ins.height <= INLINE_DECODE_PIXELS and len(data) <= INLINE_INSPECT_BYTES


async def _wait(cf: Future[T], deadline: float, finished: Callable[[], None] | None = None) -> T:
    """The pool's result, back on the loop in one wake-up: when the work really ends, its done
    callback hands the outcome and `finished` (the budget's release) over in a single
    call_soon_threadsafe, where asyncio.wait_for over wrap_future made a task, two futures
    and a wake-up for each. A timer keeps the deadline; work not started by then never is."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[T] = loop.create_future()

    def settle(f: Future[T]) -> None:  # on the loop
        if finished is not None:
            finished()
        if waiter.done() or f.cancelled():
            return
        error = f.exception()
        if error is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(f.result())

    def done(f: Future[T]) -> None:  # on the pool's thread (or here, if cancelled or done)
        with contextlib.suppress(RuntimeError):  # a closed loop: nothing is left to admit
            loop.call_soon_threadsafe(settle, f)

    cf.add_done_callback(done)
    timer = loop.call_later(max(0.0, deadline - time.monotonic()), _expire, waiter, cf)
    try:
        return await waiter
    finally:
        timer.cancel()
        if waiter.cancelled():  # the request went away: a decode not started never starts
            cf.cancel()


def _expire(waiter: asyncio.Future[Any], cf: Future[Any]) -> None:
    if not waiter.done():
        cf.cancel()  # if it has not started, it never will
        waiter.set_exception(
            DecodeDeadline("the image was not decoded before the request's deadline")
        )


# Large decodes free big blocks; glibc keeps freed heap memory resident (the issue saw ~1 GB
# stay after an attack), so after one the heap is trimmed. Measured in SECURITY.md.
TRIM_AFTER_BYTES = 64 << 20
_libc: ctypes.CDLL | None = None
_libc_looked = False


def _decode(preprocess: Preprocessor, ins: Inspected, nbytes: int) -> torch.Tensor:
    try:
        return preprocess.decode_inspected(ins)
    finally:
        del ins
        if nbytes >= TRIM_AFTER_BYTES:
            trim()


def trim() -> None:
    """Return free heap memory to the OS (glibc malloc_trim); a no-op elsewhere."""
    global _libc, _libc_looked
    if not _libc_looked:
        _libc_looked = True
        name = ctypes.util.find_library("c")
        _libc = ctypes.CDLL(name) if name else None
    if _libc is not None and hasattr(_libc, "malloc_trim"):
        _libc.malloc_trim(0)
