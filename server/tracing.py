"""OpenTelemetry tracing (issue 17): off by default; every hook costs one check when off."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.util.types import AttributeValue
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from fastapi import FastAPI

    from models import Level
    from server.settings import Settings

log = logging.getLogger("lcs.server")

SERVICE_NAME = "lcs-serve"
MODEL_KEY = otel_context.create_key("lcs.model")  # the model a request's queue/forward spans name
_OFF = contextlib.nullcontext()

# None: tracing is off. Module state, not app state: the engine's batcher and LevelState have
# no app at hand, and one process exports to one collector.
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None


def wanted(settings: Settings) -> bool:
    """On when LCS_OTEL_ENDPOINT is set, or the standard variables name an OTLP endpoint or
    exporter (OTEL_TRACES_EXPORTER=none or OTEL_SDK_DISABLED=true keep it off)."""
    env = os.environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    endpoint = (
        settings.otel_endpoint
        or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )
    return bool(endpoint) or exporter in ("otlp", "console")


def setup(settings: Settings) -> None:
    """Install the OTLP/HTTP exporter behind a BatchSpanProcessor if tracing is wanted; a
    provider already installed (a test's, an earlier app's) is kept."""
    if _provider is not None or not wanted(settings):
        return
    exporter: SpanExporter
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # LCS_OTEL_ENDPOINT is the collector's base URL (as OTEL_EXPORTER_OTLP_ENDPOINT);
        # without it the exporter reads the OTEL_EXPORTER_OTLP_* variables itself.
        base = settings.otel_endpoint
        url = None if not base else base.rstrip("/").removesuffix("/v1/traces") + "/v1/traces"
        exporter = OTLPSpanExporter(endpoint=url)
    name = os.environ.get("OTEL_SERVICE_NAME") or SERVICE_NAME
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))  # export off the request path
    install(provider)
    log.info("tracing on", extra={"service": name, "endpoint": getattr(exporter, "_endpoint", "")})


def install(provider: TracerProvider) -> None:
    """Test seam (and setup's last step): spans from here on go to `provider`. Not the global
    provider, which OpenTelemetry lets a process set only once."""
    global _provider, _tracer
    _provider, _tracer = provider, provider.get_tracer("lcs-serve")


def uninstall() -> None:
    """Test seam: tracing off again (apps instrumented meanwhile keep their middleware)."""
    global _provider, _tracer
    _provider = _tracer = None


def enabled() -> bool:
    return _tracer is not None


# HTTP and gRPC: the request span.


def instrument(app: FastAPI) -> None:
    """A server span per HTTP request (FastAPI's instrumentation, outermost) carrying the
    request's X-Request-ID; nothing is added when tracing is off."""
    if _provider is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    app.add_middleware(RequestIdSpan)  # outside RequestLog, inside the server span
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=_provider, exclude_spans=["receive", "send"]
    )


class RequestIdSpan:
    """Puts the request ID RequestLog settled on (scope state) on the current server span."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        span = trace.get_current_span()  # the server span, still open while the app runs

        async def tagged(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                rid = scope.get("state", {}).get("request_id")
                if rid is not None:
                    span.set_attribute("lcs.request_id", rid)
            await send(msg)

        await self.app(scope, receive, tagged)


def tag_request(request_id: str) -> None:
    """The request ID on the current (request) span; for gRPC, call it where the ID is known."""
    if _tracer is not None and request_id:
        trace.get_current_span().set_attribute("lcs.request_id", request_id)


def grpc_interceptors() -> list[Any]:
    """Interceptors to put first on grpc.aio.server: a server span per call ([] when off)."""
    if _provider is None:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor(tracer_provider=_provider)]


# Child spans of the request.


def span(
    name: str, attributes: dict[str, AttributeValue]
) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one around a block (a shared no-op when off)."""
    if _tracer is None:
        return _OFF
    return _tracer.start_as_current_span(name, attributes=attributes)


@contextlib.contextmanager
def _model(name: str) -> Iterator[None]:
    token = otel_context.attach(otel_context.set_value(MODEL_KEY, name))
    try:
        yield
    finally:
        otel_context.detach(token)


def model(name: str) -> contextlib.AbstractContextManager[Any]:
    """Within it, requests enqueued carry `name` for their forward spans."""
    return _OFF if _tracer is None else _model(name)


def capture() -> otel_context.Context | None:
    """The current context, for a request queued now (the engine's _Item); None when off."""
    return None if _tracer is None else otel_context.get_current()


def _wall_ns(perf: float, now_perf: float, now_ns: int) -> int:
    """A time.perf_counter() instant as the epoch nanoseconds spans are stamped with."""
    return now_ns - int((now_perf - perf) * 1e9)


def batch_done(batch: Sequence[Any], level: Level, tier: str, start: float, seconds: float) -> None:
    """After a batch ran: each request's own queue-wait and forward spans, with the batch's
    timing (one forward pass served them all; batch_size says how many shared it). Per
    request rather than one batch span with links, so each trace reads alone, top to bottom,
    in any backend. Each item has .trace (a captured context or None) and .enqueued."""
    tracer = _tracer
    if tracer is None:
        return
    items = [i for i in batch if i.trace is not None]
    if not items:
        return
    now_perf, now_ns = time.perf_counter(), time.time_ns()
    t_start = _wall_ns(start, now_perf, now_ns)
    t_end = _wall_ns(start + seconds, now_perf, now_ns)
    for i in items:
        ctx: otel_context.Context = i.trace
        queue = tracer.start_span(
            "queue wait", context=ctx, start_time=_wall_ns(i.enqueued, now_perf, now_ns)
        )
        queue.end(end_time=t_start)
        attributes: dict[str, AttributeValue] = {
            "lcs.model": str(otel_context.get_value(MODEL_KEY, ctx) or ""),
            "lcs.tier": tier,
            "lcs.alpha": level.alpha,
            "lcs.gamma": level.gamma,
            "lcs.batch_size": len(batch),
        }
        forward = tracer.start_span(
            "forward", context=ctx, start_time=t_start, attributes=attributes
        )
        forward.end(end_time=t_end)


def level_switch(model_name: str, old: Level, new: Level, reason: str, recompress_s: float) -> None:
    """A span per level switch, covering the recompression just done (a child of the
    request that asked for it, e.g. PUT /level; a root span for the controller's)."""
    tracer = _tracer
    if tracer is None:
        return
    end = time.time_ns()
    s = tracer.start_span(
        "level switch",
        start_time=end - int(recompress_s * 1e9),
        attributes={
            "lcs.model": model_name,
            "lcs.from.alpha": old.alpha,
            "lcs.from.gamma": old.gamma,
            "lcs.to.alpha": new.alpha,
            "lcs.to.gamma": new.gamma,
            "lcs.reason": reason,
            "lcs.recompress_s": recompress_s,
        },
    )
    s.end(end_time=end)
