"""Tier 2: the settled level as an ONNX Runtime session, prepared off the request path."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial

import torch

from models import Level, SubspaceNet
from models.export import to_onnx
from models.profile import median_seconds
from server.exporter import Exporter, ExporterDied
from server.int8 import DISABLED_OPTIMIZERS, Calibration, Gate
from server.metrics import Metrics
from server.onnx_runtime import ort

log = logging.getLogger("lcs.server")

# A session is swapped in only if, on the warm-up batch, max |logits_onnx − logits_torch| ≤
# tolerance · max(1, max |logits_torch|). Measured on the four architectures, float32
# reassociation stays under 1e-5 of that scale; a wrong graph misses by far more.
WARMUP_BATCH = 2


class Tier2Failure(Exception):
    """Preparation refused or failed; `reason` labels lcs_tier2_failures."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class _Stale(Exception):
    """The level changed while its preparation waited for the export thread."""


def session_options(threads: int, spin: bool = False) -> ort.SessionOptions:
    """The daemon's thread settings for ORT: as many intra-op threads as torch uses."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning pool threads keep the cores busy for ~30 ms after each run (measured: 0.03
    # CPU-s after one run of the digit CNN), which the controller reads as load; but under
    # concurrency they keep the cores awake between requests (measured at c=8, γ=0.25: 752
    # and 883 req/s with spinning, 565-600 without). Off unless the operator opts in.
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.log_severity_level = 3
    return so


@dataclass(frozen=True, eq=False)
class Prepared:
    """One level's session, tied to the exact (α, γ) it was exported from."""

    alpha: float
    gamma: float
    family: str
    session: ort.InferenceSession
    nbytes: int  # the ONNX model's size: its weights dominate what the session holds
    latency_s: float | None = None  # median batch-1 run: the controller's profile of the level
    precision: str = "fp32"  # "int8": statically quantized, admitted by its Gate
    gate: Gate | None = None  # int8 only: its agreement with tier 1 and held-out accuracy

    def matches(self, level: Level) -> bool:
        return (self.alpha, self.gamma, self.family) == (level.alpha, level.gamma, level.family)

    def run(self, x: torch.Tensor, output: str = "logits") -> torch.Tensor:
        """Logits (or "probabilities") for a (B, C, H, W) float32 batch."""
        return torch.from_numpy(self.session.run([output], {"x": x.contiguous().numpy()})[0])


def warmup_batch(input_size: tuple[int, int, int]) -> torch.Tensor:
    """A fixed batch (seeded), so the same level is always checked on the same inputs."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn(WARMUP_BATCH, *input_size, generator=gen)


def refusal(level: Level) -> str | None:
    """Why this level must stay on tier 1, if it must.

    Activation fake-quantization rounds x/scale: where torch and ORT accumulate a convolution
    in a different order, a value near a rounding boundary lands one step apart, and the step
    grows through the network (measured: 0.024 in logits of ~1 on a random VGG19 at 8 bits, on
    inputs other than a warm-up batch that had matched). No warm-up batch can prove the
    absence of such flips, so these levels are refused; weight-only quantization is exact.
    """
    if any(p.act_bits is not None for p in level.params.values()):
        return "activation fake-quantization does not export faithfully"
    return None


def export(net: SubspaceNet, level: Level, x: torch.Tensor) -> tuple[bytes, torch.Tensor]:
    """The level's ONNX bytes and tier 1's logits on `x`, the reference the session must match."""
    with torch.inference_mode():
        reference = net(x, level)
    # Traced at the warm-up batch: per-instance norms of a 1×1 map refuse a batch of one.
    return to_onnx(net, level, x), reference


def open_session(
    model: bytes, threads: int, spin: bool = False, disabled: Sequence[str] = ()
) -> ort.InferenceSession:
    options = session_options(threads, spin)
    return ort.InferenceSession(
        model, options, providers=["CPUExecutionProvider"], disabled_optimizers=list(disabled)
    )


def verify(prepared: Prepared, x: torch.Tensor, reference: torch.Tensor, tolerance: float) -> None:
    """Raise Tier2Failure("mismatch") unless the session reproduces tier 1 within tolerance."""
    diff = float((prepared.run(x) - reference).abs().max())
    bound = tolerance * max(1.0, float(reference.abs().max()))
    if not diff <= bound:  # also catches NaN
        raise Tier2Failure("mismatch", f"max |Δlogits| {diff:.3g} > {bound:.3g}")


@dataclass(frozen=True)
class Int8:
    """Tier 2's int8 variants: where calibration images come from, the top-1 agreement with
    tier 1 a variant needs before it may serve, and the quantizer's format."""

    calibration: Calibration | None  # None: the checkpoint names none and has no dataset
    min_agreement: float = 0.99
    format: str = "qoperator"


def int8_refusal(level: Level) -> str | None:
    """Why a level gets no int8 variant: only a structured level is a plain fp32 network of
    its width; quantization levels already round their weights, and unstructured ones keep
    zeros the quantizer would not keep."""
    if level.family != "structured":
        return f"int8 is offered for structured levels only, not {level.family}"
    return None


def ensure_supported(level: Level) -> None:
    why = refusal(level)
    if why is not None:
        raise Tier2Failure("unsupported", why)


def verified(
    level: Level,
    session: ort.InferenceSession,
    model: bytes,
    x: torch.Tensor,
    reference: torch.Tensor,
    tol: float,
) -> Prepared:
    """The session wrapped for `level`, once it reproduces tier 1's `reference` on `x`."""
    p = Prepared(level.alpha, level.gamma, level.family, session, len(model))
    verify(p, x, reference, tol)
    one = x[:1]
    # Timed here, on the session thread, like tier 1's profile at start-up (≤ 0.2 s).
    return replace(p, latency_s=median_seconds(lambda: p.run(one, "probabilities"), 0.2))


def prepare(
    net: SubspaceNet, level: Level, input_size: tuple[int, int, int], threads: int, tol: float
) -> Prepared:
    """Export, open and verify in one call (tests and benchmarks; the daemon splits it up)."""
    ensure_supported(level)
    x = warmup_batch(input_size)
    model, reference = export(net, level, x)
    return verified(level, open_session(model, threads), model, x, reference, tol)


class Tier2:
    """Prepares the settled level in the background and keeps sessions in an LRU by bytes.

    `active` is the one session requests may use; the inference thread runs it only if it
    matches the Level it captured, so a response always reports the level it ran at.
    With `int8`, a width's fp32 session is followed by its int8 variant (quantized in the
    export process, admitted by its Gate), served when the level's precision asks for it.
    """

    def __init__(
        self,
        net: SubspaceNet,
        input_size: tuple[int, int, int],
        threads: int,
        metrics: Metrics,
        current: Callable[[], Level],
        *,
        settle_s: float,
        budget_bytes: int,
        tolerance: float,
        exporter: Exporter,
        spin: bool = False,
        int8: Int8 | None = None,
    ) -> None:
        self.net, self.input_size, self.threads, self.metrics = net, input_size, threads, metrics
        self.current = current
        self.settle_s, self.budget_bytes, self.tolerance = settle_s, budget_bytes, tolerance
        self.active: Prepared | None = None
        self.cache: OrderedDict[float, Prepared] = OrderedDict()  # α → session, oldest first
        # α → its int8 session, admitted by the gate; evicted with its fp32 width.
        self.int8 = int8
        self.int8_cache: dict[float, Prepared] = {}
        self.int8_refused: dict[float, str] = {}  # α → why its int8 variant does not serve
        self.on_int8: Callable[[Prepared], None] | None = None  # a variant was admitted
        self.on_int8_gone: Callable[[float], None] | None = None  # and evicted since
        # Export (tracing, the heavy part) runs in a child process at nice 10; this thread only
        # waits for it. The session opens on a thread of normal priority, since ORT's pool
        # threads inherit the nice value of their creator.
        self.exporter = exporter  # shared by every model's tier 2
        self._export_pool = ThreadPoolExecutor(1, thread_name_prefix="lcs-tier2-export")
        self._session_pool = ThreadPoolExecutor(1, thread_name_prefix="lcs-tier2-session")
        self._tasks: set[asyncio.Task[None]] = set()
        self._pending: set[float] = set()  # α being prepared now
        # α whose preparation failed for a reason that would recur (weights never change while
        # serving): not tried again, so a refused level costs one export, not one per visit.
        self._refused: set[float] = set()
        self._generation = 0  # bumped by every level change: a settle timer knows if it is stale
        # The fastest preparation so far (export, session, check), in seconds: what a move to a
        # level not held costs the controller. The fastest, since under contention a build
        # waits for the CPU (the export runs at nice 10) far longer than it uses it.
        self.fastest_build_s: float | None = None
        self._logged: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Seams for failure injection in tests.
        self.export_fn: Callable[[SubspaceNet, Level, torch.Tensor], tuple[bytes, torch.Tensor]]
        self.export_fn = self.exporter
        self.session_fn: Callable[[bytes, int], ort.InferenceSession]
        self.session_fn = partial(open_session, spin=spin)
        self.int8_fn: Callable[[SubspaceNet, Level, bytes, Calibration, str], tuple[bytes, Gate]]
        self.int8_fn = self.exporter.int8
        self.int8_session_fn: Callable[[bytes, int], ort.InferenceSession]
        self.int8_session_fn = partial(open_session, spin=spin, disabled=DISABLED_OPTIMIZERS)

    def serving(self, level: Level, precision: str = "fp32") -> Prepared | None:
        """The session for exactly `level`, if tier 2 holds it (called on the inference thread):
        its int8 variant when asked for and admitted, else the active one, or a cached one for
        a request pinned to a level of its own."""
        if precision == "int8":
            q = self.int8_cache.get(level.alpha)
            if q is not None and q.matches(level):
                return q
        p = self.active
        if p is not None and p.matches(level):
            return p
        cached = self.cache.get(level.alpha)
        return cached if cached is not None and cached.matches(level) else None

    def level_changed(self, level: Level) -> None:
        """On the event loop, right after the slot's swap: a cached level is served at once;
        any other is prepared if the level is still current after the settle delay."""
        self._loop = asyncio.get_running_loop()
        self._generation += 1
        hit = self.cache.get(level.alpha)
        if hit is not None and hit.matches(level):
            self.cache.move_to_end(level.alpha)
            self.active = hit
            self.metrics.tier2_cache_hits.inc()
            return
        if level.alpha in self._refused:
            return
        # The export process (if it is not running) starts during the settle delay: its
        # torch import is then not added to the preparation's time.
        self._export_pool.submit(self.exporter.start)
        task = self._loop.create_task(self._settle_then_prepare(level, self._generation))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def run_failed(self, prepared: Prepared, e: Exception) -> None:
        """A session raised on a request (which tier 1 then answers): stop using it."""
        if self.active is prepared:
            self.active = None
        if self._loop is not None:  # the cache belongs to the event loop's thread
            if prepared.precision == "int8":
                self._loop.call_soon_threadsafe(self._drop_int8, prepared.alpha)
            else:
                self._loop.call_soon_threadsafe(self.cache.pop, prepared.alpha, None)
        self._fail("run", e)

    async def _settle_then_prepare(self, level: Level, generation: int) -> None:
        await asyncio.sleep(self.settle_s)
        if generation != self._generation or not self._is_current(level):
            return  # passed through: not current for the whole settle delay
        if level.alpha in self._pending:
            return  # an earlier visit's preparation is still running; it installs itself
        self._pending.add(level.alpha)
        try:
            await self._prepare_and_swap(level)
        finally:
            self._pending.discard(level.alpha)

    async def _prepare_and_swap(self, level: Level) -> None:
        try:
            prepared, model = await self._prepare(level)
        except _Stale:
            return
        except Tier2Failure as e:
            if e.reason in ("unsupported", "export", "budget", "mismatch"):
                self._refused.add(level.alpha)
            self._fail(e.reason, e)
            return
        except Exception as e:  # a bug in tier 2 must never reach a request
            self._fail("internal", e)
            return
        self._store(prepared)
        if self._is_current(level):
            self.active = prepared  # the atomic swap
            log.info(
                "tier 2 serving",
                extra={"alpha": level.alpha, "gamma": level.gamma, "onnx_bytes": prepared.nbytes},
            )
        if self.int8 is None or level.alpha in self.int8_refused:
            return
        try:  # then its int8 variant: fp32 already serves meanwhile
            await self._prepare_int8(level, model, self.int8)
        except Exception as e:  # a bug in tier 2 must never reach a request
            self._fail("internal", e)

    async def _prepare(self, level: Level) -> tuple[Prepared, bytes]:
        ensure_supported(level)
        loop = asyncio.get_running_loop()
        x = warmup_batch(self.input_size)

        def export_if_current() -> tuple[float, bytes, torch.Tensor]:
            # Checked when the export thread is free, not when queued: under contention a
            # backlog of levels the controller has already left would keep the CPU busy.
            if not self._is_current(level):
                raise _Stale
            self.metrics.tier2_cache_misses.inc()
            return time.perf_counter(), *self.export_fn(self.net, level, x)

        try:
            start, model, reference = await loop.run_in_executor(
                self._export_pool, export_if_current
            )
        except _Stale:
            raise
        except ExporterDied as e:  # not the level's fault: tried again on its next visit
            raise Tier2Failure("exporter", str(e)) from e
        except Exception as e:
            raise Tier2Failure("export", f"{type(e).__name__}: {e}") from e
        if len(model) > self.budget_bytes:
            raise Tier2Failure("budget", f"{len(model)} bytes > budget {self.budget_bytes}")

        def open_and_verify() -> Prepared:
            try:
                session = self.session_fn(model, self.threads)
            except Exception as e:
                raise Tier2Failure("session", f"{type(e).__name__}: {e}") from e
            return verified(level, session, model, x, reference, self.tolerance)

        prepared = await loop.run_in_executor(self._session_pool, open_and_verify)
        seconds = time.perf_counter() - start
        self.metrics.tier2_prepare.observe(seconds)
        if self.fastest_build_s is None or seconds < self.fastest_build_s:
            self.fastest_build_s = seconds
        return prepared, model

    async def _prepare_int8(self, level: Level, model: bytes, cfg: Int8) -> None:
        """Quantize `level` (its fp32 ONNX `model`) in the export process and admit the
        variant only if its top-1 agreement with tier 1 reaches `cfg.min_agreement`; else
        record why (describe(), lcs_tier2_failures{reason="int8"}, one log line)."""
        why = int8_refusal(level)
        if why is None and cfg.calibration is None:
            why = "no calibration images: the checkpoint names none and its dataset is unknown"
        if why is not None:  # not offered, rather than failed: no failure counted
            self._refuse_int8(level, why, failed=False)
            return
        assert cfg.calibration is not None
        calibration = cfg.calibration
        loop = asyncio.get_running_loop()

        def quantize_if_current() -> tuple[bytes, Gate]:
            if not self._is_current(level):
                raise _Stale  # left already: tried again once its fp32 width is prepared anew
            return self.int8_fn(self.net, level, model, calibration, cfg.format)

        try:
            q, gate = await loop.run_in_executor(self._export_pool, quantize_if_current)
        except _Stale:
            return
        except ExporterDied as e:
            self._fail("exporter", e)
            return
        except Exception as e:
            self._refuse_int8(level, f"quantization failed: {type(e).__name__}: {e}")
            return
        if not gate.passes(cfg.min_agreement):
            self._refuse_int8(
                level,
                f"top-1 agreement with tier 1 {gate.agreement:.4f} on {gate.images} "
                f"calibration images < {cfg.min_agreement:g}",
            )
            return

        def open_and_time() -> Prepared:
            session = self.int8_session_fn(q, self.threads)
            p = Prepared(
                level.alpha, level.gamma, level.family, session, len(q), None, "int8", gate
            )
            one = warmup_batch(self.input_size)[:1]
            return replace(p, latency_s=median_seconds(lambda: p.run(one, "probabilities"), 0.2))

        try:
            prepared = await loop.run_in_executor(self._session_pool, open_and_time)
        except Exception as e:
            self._refuse_int8(level, f"session: {type(e).__name__}: {e}")
            return
        if self.cache.get(level.alpha) is None:
            return  # its fp32 width was evicted meanwhile: the pair goes together
        self.int8_cache[level.alpha] = prepared
        self._fit(level.alpha)
        log.info(
            "tier 2 int8 ready",
            extra={
                "alpha": level.alpha,
                "agreement": gate.agreement,
                "accuracy": gate.accuracy,
                "fp32_accuracy": gate.fp32_accuracy,
                "onnx_bytes": len(q),
            },
        )
        if self.on_int8 is not None and level.alpha in self.int8_cache:
            self.on_int8(prepared)

    def _refuse_int8(self, level: Level, why: str, failed: bool = True) -> None:
        """The fp32 width stays; the refusal is kept (the weights never change while serving)."""
        self.int8_refused[level.alpha] = why
        extra = {"alpha": level.alpha, "reason": why}
        if not failed:
            log.info("tier 2 int8 not offered", extra=extra)
            return
        self.metrics.tier2_failures.labels("int8").inc()
        log.warning("tier 2 int8 refused, fp32 stays", extra=extra)

    def _store(self, prepared: Prepared) -> None:
        """Insert, then evict least recently used sessions until the budget holds: others first,
        then whichever of the new and the active session is not serving the current level."""
        self.cache[prepared.alpha] = prepared
        self.cache.move_to_end(prepared.alpha)
        keep = {id(prepared), id(self.active)}
        for alpha, p in list(self.cache.items()):
            if self.cached_bytes <= self.budget_bytes:
                break
            if id(p) not in keep:
                del self.cache[alpha]
                self._drop_int8(alpha)
        if self.cached_bytes > self.budget_bytes and self.active is not None:
            loser = self.active if self._is_current(prepared) else prepared
            self.cache.pop(loser.alpha, None)
            self._drop_int8(loser.alpha)
            if loser is self.active:
                self.active = None
        if self.cached_bytes > self.budget_bytes:  # the pair alone is over: drop the variant
            self._drop_int8(prepared.alpha)
        self.metrics.tier2_cache_bytes.set(self.cached_bytes)

    def _fit(self, alpha: float) -> None:
        """After α's int8 variant joined: evict least recently used other widths (never the
        active one) until the budget holds; if α's pair alone is over it, drop the variant."""
        keep = {alpha, None if self.active is None else self.active.alpha}
        for a in list(self.cache):
            if self.cached_bytes <= self.budget_bytes:
                break
            if a not in keep:
                del self.cache[a]
                self._drop_int8(a)
        if self.cached_bytes > self.budget_bytes:
            self._drop_int8(alpha)
        self.metrics.tier2_cache_bytes.set(self.cached_bytes)

    def _drop_int8(self, alpha: float) -> None:
        """α's int8 variant is no longer held: it leaves the profile too (on the event loop)."""
        if self.int8_cache.pop(alpha, None) is not None and self.on_int8_gone is not None:
            self.on_int8_gone(alpha)

    def latency(self, alpha: float, precision: str = "fp32") -> float | None:
        """How fast α is served now, if tier 2 holds it: a switch to it is a cache hit."""
        p = (self.int8_cache if precision == "int8" else self.cache).get(alpha)
        return None if p is None else p.latency_s

    def build_seconds(self, alpha: float) -> float | None:
        """CPU seconds a move to α would spend building its session (the controller weighs a
        move by it): none when it is held, being prepared or refused for good, else the
        fastest build so far; None before the first (the controller then assumes a figure)."""
        if alpha in self.cache or alpha in self._pending or alpha in self._refused:
            return 0.0
        return self.fastest_build_s

    @property
    def cached_bytes(self) -> int:
        held = (*self.cache.values(), *self.int8_cache.values())
        return sum(p.nbytes for p in held)

    def _is_current(self, level: Level | Prepared) -> bool:
        now = self.current()
        return (now.alpha, now.gamma) == (level.alpha, level.gamma)

    def _fail(self, reason: str, e: Exception) -> None:
        self.metrics.tier2_failures.labels(reason).inc()
        if reason not in self._logged:  # once per reason: a failing level retries on return
            self._logged.add(reason)
            log.warning("tier 2 unavailable, serving on tier 1", extra={"reason": str(e)})

    def describe(self) -> dict[str, object]:
        return {
            "cached_alphas": list(self.cache),
            "cached_bytes": self.cached_bytes,
            "budget_bytes": self.budget_bytes,
            "settle_s": self.settle_s,
            "int8": None if self.int8 is None else self._describe_int8(self.int8),
        }

    def _describe_int8(self, cfg: Int8) -> dict[str, object]:
        def point(p: Prepared) -> dict[str, object]:
            g = p.gate
            return {
                "alpha": p.alpha,
                "latency_ms": None if p.latency_s is None else 1e3 * p.latency_s,
                "agreement": None if g is None else g.agreement,
                "accuracy": None if g is None else g.accuracy,
                "fp32_accuracy": None if g is None else g.fp32_accuracy,
                "onnx_bytes": p.nbytes,
            }

        return {
            "min_agreement": cfg.min_agreement,
            "format": cfg.format,
            "calibration": cfg.calibration is not None,
            "points": [point(p) for p in self.int8_cache.values()],
            "refused": [{"alpha": a, "reason": r} for a, r in self.int8_refused.items()],
        }

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.active = None
        self.int8_cache.clear()
        self._export_pool.shutdown(wait=False, cancel_futures=True)
        # Waits for an export in progress (another model's, perhaps): off the request path.
        await asyncio.to_thread(self.exporter.forget, self.net)
        self._session_pool.shutdown(wait=False, cancel_futures=True)
