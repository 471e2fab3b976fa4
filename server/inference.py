"""InferenceService: request → decode (off the loop) → batch → forward on its tier → result."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch

from controller.hints import HintError as ControllerHintError
from controller.hints import hinted_point
from controller.policy import LevelPoint, Profile
from controller.readings import ModelFeedback
from models import Level, SubspaceNet
from server import tracing
from server.admission import DecodeBudget, decode_admitted, decode_now
from server.engine import Engine, Result
from server.errors import HintError, NotReady, TooMany
from server.levels import LevelState
from server.metrics import ModelMetrics
from server.preprocess import Preprocessor
from server.tier2 import Prepared, Tier2

__all__ = ["Hints", "InferenceService", "Result"]

FEEDBACK_WINDOW_S = 5.0  # request rate and latency quantiles over the last few seconds


@dataclass(frozen=True)
class Hints:
    """Per-request requirements (issue 16): served from the same model at another level."""

    min_accuracy: float | None = None
    max_latency_ms: float | None = None

    @property
    def any(self) -> bool:
        return self.min_accuracy is not None or self.max_latency_ms is not None


# A request may run its pass inline only if none has overlapped another for this long, and
# every PROBE-th lone request takes the inference thread anyway (DaemonLoad.alone).
OVERLAP_HOLD_S = 0.5
PROBE = 16


@dataclass
class DaemonLoad:
    """Requests inside any model's service now (counted on the event loop), and when two
    last overlapped: whether a request may run its pass inline (Engine.infer)."""

    requests: int = 0
    overlapped_at: float = -math.inf
    lone: int = 0
    owed: bool = False  # a probe drawn by a request handed on (alone(handing_on=True))

    def enter(self) -> None:
        self.requests += 1
        if self.requests > 1:
            self.overlapped_at = time.monotonic()

    def leave(self) -> None:
        self.requests -= 1

    def quiet(self) -> bool:
        """No request inside and none overlapping lately: one arriving now could be alone
        (a check that changes nothing, before alone() counts it)."""
        return self.requests == 0 and time.monotonic() - self.overlapped_at >= OVERLAP_HOLD_S

    def alone(self, handing_on: bool = False) -> bool:
        """The request is the only one, and none has overlapped another lately: one client
        at a time. A pass run inline keeps the loop from reading anything else, so requests
        waiting in sockets (or in gRPC's queue) would never show as overlap; hence every
        PROBE-th lone request takes the inference thread, and while its pass runs there the
        loop reads what waits: under concurrency that is overlap, which stops inline passes
        for OVERLAP_HOLD_S (measured: with neither, gRPC at c=32 ran ~20 % slower).
        `handing_on`: a caller that cannot take the thread hands the request to the app's
        path (server.inplace), so a probe it draws is owed to the next lone request."""
        if self.requests != 1 or time.monotonic() - self.overlapped_at < OVERLAP_HOLD_S:
            return False
        if self.owed:
            self.owed = False
            return False
        self.lone += 1
        probe = self.lone % PROBE == 0
        self.owed = probe and handing_on
        return not probe


class InferenceService:
    """One model's request path, the same for /predict, /v2 and gRPC. It counts what it has
    accepted (`in_flight`), so a model being replaced or unloaded is freed only once every
    request that reached it has its answer."""

    def __init__(
        self,
        net: SubspaceNet,
        level: LevelState,
        preprocess: Preprocessor,
        decode_pool: Executor,
        large_pool: Executor,
        budget: DecodeBudget,
        metrics: ModelMetrics,
        *,
        max_images: int,
        tier2: Tier2 | None = None,
        load: DaemonLoad | None = None,
    ) -> None:
        self.net, self.level, self.preprocess = net, level, preprocess
        self.decode_pool, self.large_pool, self.budget = decode_pool, large_pool, budget
        self.metrics, self.tier2 = metrics, tier2
        self.max_images = max_images
        self.engine: Engine | None = None  # set by the model's start-up, which owns the engine
        # For hints: the profile (set once measured) and the controller's latency prediction.
        self.profile = Profile([LevelPoint(1.0, 1.0, 0.0)])
        self.predict: Callable[[float], float | None] = self._profiled
        self.in_flight = 0
        self.load = DaemonLoad() if load is None else load  # shared by the daemon's models
        self.closed = False
        self._precision_shown = "fp32"
        # (α, tier, precision) → smoothed seconds of a pass of one there (Engine's inline gate)
        self._pass_s: dict[tuple[float, str, str], float] = {}
        # (monotonic time, α, request seconds, forward seconds) of recent requests: feedback.
        self._recent: deque[tuple[float, float, float, float]] = deque(maxlen=1024)

    # The request flow, top to bottom.

    async def predict_images(
        self, images: list[bytes], hints: Hints, deadline: float, received: float | None = None
    ) -> list[Result]:
        """Encoded images → one Result each; ImageError for an image that will not decode."""
        alpha = self._admit(len(images), hints)
        with self._accepted():
            lone = len(images) == 1 and self.load.alone()  # may skip the inference hop
            start = time.perf_counter()
            with tracing.span("decode", {"lcs.images": len(images)}):
                # Every wait inside is bounded by the deadline (admission.decode_admitted).
                if len(images) == 1:  # gather would wrap the one decode in a task of its own
                    xs = [await self._decode(images[0], deadline, inline=True)]
                else:
                    xs = await asyncio.gather(*(self._decode(d, deadline) for d in images))
            decode_s = time.perf_counter() - start
            results = await self._infer(xs, deadline, alpha, lone)
            return self._done([replace(r, decode_s=decode_s) for r in results], received)

    async def predict_tensor(
        self, x: torch.Tensor, hints: Hints, deadline: float, received: float | None = None
    ) -> list[Result]:
        """x (N, C, H, W) float32 in the network's input space (already normalised)."""
        alpha = self._admit(x.shape[0], hints)
        with self._accepted():
            lone = x.shape[0] == 1 and self.load.alone()
            rows = list(x.unbind(0))
            return self._done(await self._infer(rows, deadline, alpha, lone), received)

    async def predict_pixels(
        self, x: torch.Tensor, hints: Hints, deadline: float, received: float | None = None
    ) -> list[Result]:
        """x (N, C, H, W) uint8 raw pixels at the model's input size: the checkpoint's
        normalisation is applied here, as for a decoded image."""
        return await self.predict_tensor(self._normalised(x), hints, deadline, received)

    def _normalised(self, x: torch.Tensor) -> torch.Tensor:
        p = self.preprocess
        mean = torch.tensor(p.mean).view(1, -1, 1, 1)
        std = torch.tensor(p.std).view(1, -1, 1, 1)
        return (x.to(torch.float32) / 255 - mean) / std

    # Answers in place (server.inplace): the same flow when nothing in it has to wait.

    def predict_image_now(self, data: bytes, deadline: float, received: float) -> Result | None:
        """predict_images for one image and no hints, if it can be answered right now: its
        pass inline (the daemon otherwise idle, Engine.inline_ready) and its decode inline
        (admission.decode_now). Else None, having changed nothing a second try would see.
        Raises what predict_images raises."""
        if not self._now_possible(deadline):
            return None
        start = time.perf_counter()
        x = decode_now(self.preprocess, self.budget, data)
        if x is None:
            return None
        decode_s = time.perf_counter() - start
        result = self._infer_now(x, received)
        return None if result is None else replace(result, decode_s=decode_s)

    def predict_tensor_now(
        self, x: torch.Tensor, deadline: float, received: float
    ) -> Result | None:
        """predict_tensor for one row and no hints, if its pass can run inline right now."""
        if x.shape[0] != 1 or not self._now_possible(deadline):
            return None
        return self._infer_now(x[0], received)

    def predict_pixels_now(
        self, x: torch.Tensor, deadline: float, received: float
    ) -> Result | None:
        """predict_pixels for one row and no hints, if its pass can run inline right now."""
        if x.shape[0] != 1 or not self._now_possible(deadline):
            return None
        return self._infer_now(self._normalised(x)[0], received)

    def _now_possible(self, deadline: float) -> bool:
        engine = self.engine
        return (
            not self.closed
            and engine is not None
            and self.load.quiet()
            and engine.inline_ready(deadline)
        )

    def _infer_now(self, x: torch.Tensor, received: float) -> Result | None:
        assert self.engine is not None
        with self._accepted():
            if not self.load.alone(handing_on=True):
                return None
            result = self.engine.run_inline(x)
            self.metrics.queue_wait.observe(result.queue_s)
            return self._done([result], received)[0]

    @contextmanager
    def _accepted(self) -> Iterator[None]:
        """A request inside this service: counted here (unloading waits for it) and in the
        daemon's load (the inline gate)."""
        self.in_flight += 1
        self.load.enter()
        try:
            yield
        finally:
            self.in_flight -= 1
            self.load.leave()

    def _admit(self, n: int, hints: Hints) -> float | None:
        """Checks a request before any work; returns the α its hints ask for (None: current)."""
        if self.closed or self.engine is None:
            raise NotReady("not ready: the model is being unloaded")
        if n > self.max_images:
            # The queue could never hold them all: a 429 would be retried forever.
            raise TooMany(f"at most {self.max_images} images per request; got {n}")
        if not hints.any:
            return None
        current, served = self.level.current.alpha, self.precision()
        try:
            alpha, precision = hinted_point(
                self.profile,
                self.level.policy,
                current,
                served,
                min_accuracy=hints.min_accuracy,
                max_latency_s=None if hints.max_latency_ms is None else hints.max_latency_ms / 1e3,
                predict=self.predict,
            )
        except ControllerHintError as e:
            raise HintError(str(e)) from None
        if precision != "fp32" or (served == "fp32" and abs(alpha - current) < 1e-9):
            return None  # the current point meets the hints
        return alpha  # pinned, so in fp32: perhaps the current level's own fp32 point

    async def _decode(self, data: bytes, deadline: float, inline: bool = False) -> torch.Tensor:
        """One image: header check, its decoded bytes reserved from the daemon's decode budget,
        then decoded in the pool (on the event loop if `inline` and small). Per-image tasks, so
        one request of many large images cannot hold the pool for everyone else."""
        return await decode_admitted(
            self.decode_pool, self.preprocess, self.budget, data, deadline, self.large_pool, inline
        )

    async def _infer(
        self, xs: list[torch.Tensor], deadline: float, alpha: float | None, lone: bool
    ) -> list[Result]:
        assert self.engine is not None
        engine = self.engine
        level = None if alpha is None else await self.level.level_at(alpha)
        with tracing.model(self.metrics.name):  # queued requests carry it to their spans
            if len(xs) == 1:  # gather would wrap the lone call in a task of its own
                results = [await engine.infer(xs[0], deadline, level, lone)]
            else:
                results = await asyncio.gather(*(engine.infer(x, deadline, level) for x in xs))
        for r in results:
            self.metrics.queue_wait.observe(r.queue_s)
        return list(results)

    def _done(self, results: list[Result], received: float | None) -> list[Result]:
        now = time.perf_counter()
        seconds = now - received if received is not None else None
        if seconds is not None:
            forward = sum(r.forward_s for r in results) / len(results)
            self._recent.append((time.monotonic(), results[-1].level.alpha, seconds, forward))
        return results

    # On the inference thread.

    def forward(
        self, x: torch.Tensor, level: Level | None = None
    ) -> tuple[torch.Tensor, Level, str, str]:
        """One Level for the whole pass (the current one, unless the requests asked for their
        own), run by tier 2 only if its session was built from that very level, else by
        PyTorch (tier 1). The current point's precision applies to unpinned requests; a
        request pinned by its hints runs in fp32 (hints choose among fp32 points)."""
        precision = self.level.precision if level is None else "fp32"
        level = self.level.current if level is None else level
        prepared = self.tier2.serving(level, precision) if self.tier2 is not None else None
        start = time.perf_counter()
        if prepared is not None:
            try:
                probs = prepared.run(x, "probabilities")
                self._shown(prepared.precision)
                self._timed(x, (level.alpha, "onnx", prepared.precision), start)
                return probs, level, "onnx", prepared.precision
            except Exception as e:  # tier 2 never fails a request: tier 1 answers
                assert self.tier2 is not None
                self.tier2.run_failed(prepared, e)
        with torch.inference_mode():
            probs = torch.softmax(self.net(x, level), dim=1)
        self._shown("fp32")
        self._timed(x, (level.alpha, "torch", "fp32"), start)
        return probs, level, "torch", "fp32"

    def _timed(self, x: torch.Tensor, key: tuple[float, str, str], start: float) -> None:
        """A pass of one: its seconds join that point's running figure (a dict item is
        replaced whole, so the loop's reads never see half of one)."""
        if x.shape[0] != 1:
            return
        seconds = time.perf_counter() - start
        old = self._pass_s.get(key)
        self._pass_s[key] = seconds if old is None else old + 0.2 * (seconds - old)

    def _shown(self, precision: str) -> None:
        """lcs_int8 follows what the last pass ran in (set only when it changes: cheap)."""
        if precision != self._precision_shown:
            self._precision_shown = precision
            self.metrics.int8.set(precision == "int8")

    def pass_short(self, max_s: float) -> bool:
        """Whether a pass of one at the point a request would run now (α, tier, precision)
        has been seen to take at most `max_s` lately (Engine's inline gate). Seen, not
        predicted: the latency timed when a session is built varies by 2× with what ran
        beside it, and a point never run yet (just swapped in) goes through the thread."""
        p = self._served()
        tier, precision = ("torch", "fp32") if p is None else ("onnx", p.precision)
        key = (self.level.current.alpha, tier, precision)
        seen = self._pass_s.get(key)
        return seen is not None and seen <= max_s

    def tier(self) -> str:
        """The tier a request arriving now would run on."""
        return "torch" if self._served() is None else "onnx"

    def precision(self) -> str:
        """The precision a request arriving now would run in: the point actually served."""
        p = self._served()
        return "fp32" if p is None else p.precision

    def _served(self) -> Prepared | None:
        """Tier 2's session for the current point, if it serves it."""
        t2, level = self.tier2, self.level
        return None if t2 is None else t2.serving(level.current, level.precision)

    def _profiled(self, alpha: float) -> float | None:
        """Without a controller: the non-forward part seen lately plus the profiled forward."""
        fb = self.feedback()
        return (fb.overhead_s or 0.0) + self.profile.expected_latency(alpha)

    # The controller's view.

    def feedback(self) -> ModelFeedback:
        """This model's recent traffic: the rate over every request; latency quantiles, the
        non-forward part and the forward pass over those served at the current level only,
        so the figures describe the level the controller is deciding from."""
        now, alpha = time.monotonic(), self.level.current.alpha
        recent = [r for r in self._recent if now - r[0] <= FEEDBACK_WINDOW_S]
        depth = self.engine.depth if self.engine is not None else 0
        rate = len(recent) / FEEDBACK_WINDOW_S
        in_flight = sum(r[2] for r in recent) / FEEDBACK_WINDOW_S
        here = [r for r in recent if r[1] == alpha]
        if not here:
            return ModelFeedback(request_rate=rate, queue_depth=depth, concurrency=in_flight)
        forward = statistics.median(r[3] for r in here)
        overhead = statistics.median(r[2] - r[3] for r in here)
        if len(here) < 5:
            return ModelFeedback(overhead_s=overhead, forward_s=forward, request_rate=rate,
                                 queue_depth=depth, concurrency=in_flight)  # fmt: skip
        q = statistics.quantiles([r[2] for r in here], n=100, method="inclusive")
        return ModelFeedback(
            latency_p50_s=q[49],
            latency_p95_s=q[94],
            latency_p99_s=q[98],
            overhead_s=overhead,
            forward_s=forward,
            request_rate=rate,
            queue_depth=depth,
            concurrency=in_flight,
        )
