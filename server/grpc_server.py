"""OIP v2 over gRPC: `inference.GRPCInferenceService` and grpc.health.v1 on uvicorn's loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio

from server import oip, tracing
from server.errors import NotReady, rejection_reason
from server.protocol import inference_pb2 as pb
from server.protocol import inference_pb2_grpc as pb_grpc

log = logging.getLogger("lcs.grpc")
access = logging.getLogger("lcs.access")  # the same log as HTTP's one line per request
SERVICE = "inference.GRPCInferenceService"
T = TypeVar("T")

# One HTTP status → one gRPC code, so every error class the core raises maps the same way over
# both transports (by its `status`).
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.INVALID_ARGUMENT,  # too many items in one request: never retried
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.UNAVAILABLE,  # queue full: clients retry UNAVAILABLE with backoff
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
    507: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
# Typed `contents` field per datatype (FP16 has none: it must come raw).
CONTENTS = {
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "BYTES": "bytes_contents",
}
OFFLOAD_ITEMS = 16_384  # typed contents at least this long are converted off the loop
# grpc's own receive limit, in body caps: a message between the cap and this is read whole and
# refused (counted) by Observe; one beyond is refused by grpc before Python sees the call.
RECEIVE_CEILING = 2


class Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


async def _answer(
    context: grpc.aio.ServicerContext, work: Awaitable[T], metrics: Any | None = None
) -> T:
    """Run one call; every refusal becomes a status code and a message, never a traceback,
    and is counted in lcs_rejected_requests with the reason HTTP gives the same error."""
    try:
        return await work
    except Abort as e:
        code, message = e.code, e.message
    except asyncio.CancelledError:
        raise
    except Exception as e:
        status = getattr(e, "status", None)
        if isinstance(status, int) and status in CODES:
            code, message = CODES[status], str(getattr(e, "message", None) or e)
            reason = rejection_reason(e)
            if reason is not None and metrics is not None:
                metrics.rejected.labels(reason).inc()
        else:
            log.exception("unhandled error in a gRPC call")
            code, message = grpc.StatusCode.INTERNAL, "internal error"
    await context.abort(code, message)
    raise AssertionError("unreachable")  # abort raises


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """The daemon's models behind OIP's gRPC calls; the same InferenceService as HTTP."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon

    def _answer(self, context: Any, work: Awaitable[T]) -> Awaitable[T]:
        return _answer(context, work, getattr(self.daemon, "metrics", None))

    # Health and metadata

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=_ready(self.daemon))

    async def ModelReady(self, request: Any, context: Any) -> Any:
        async def run() -> Any:
            indexed = {r["name"] for r in self.daemon.registry.index()}
            if request.name and request.name in indexed - set(self.daemon.registry.names()):
                return pb.ModelReadyResponse(ready=False)  # in the repository, not loaded
            self._model(request.name, request.version)
            return pb.ModelReadyResponse(ready=_ready(self.daemon))

        return await self._answer(context, run())

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(
            name=oip.SERVER_NAME, version=oip.SERVER_VERSION, extensions=oip.EXTENSIONS
        )

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        async def run() -> Any:
            m = self._model(request.name, request.version)
            meta = oip.model_metadata(m.name, str(m.version), m.meta.input_size, m.meta.num_classes)
            resp = pb.ModelMetadataResponse(
                name=meta["name"], versions=meta["versions"], platform=meta["platform"]
            )
            for key in ("inputs", "outputs"):
                for t in meta[key]:
                    getattr(resp, key).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
            return resp

        return await self._answer(context, run())

    # Inference

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        return await self._answer(context, self._infer(request, context))

    async def _infer(self, request: Any, context: Any) -> Any:
        received = time.perf_counter()
        model = self._model(request.model_name, request.model_version)
        if not _ready(self.daemon):
            raise NotReady(_not_ready(self.daemon))  # UNAVAILABLE: clients retry elsewhere
        limits = oip.Limits(tuple(model.meta.input_size), self.daemon.settings.max_batch_images)
        if _size(request) >= OFFLOAD_ITEMS:
            loop = asyncio.get_running_loop()
            call = await loop.run_in_executor(
                self.daemon.decode_pool, parse_grpc, request, limits, model.name
            )
        else:
            call = parse_grpc(request, limits, model.name)
        results = await run_call(model, call, self._deadline(context), received)
        rid = _request_id(call, context)
        tracing.tag_request(rid)
        return encode_grpc(model, call, results, rid)

    def _deadline(self, context: Any) -> float:
        timeout = float(self.daemon.settings.request_timeout_s)
        remaining = context.time_remaining()
        if remaining is not None:
            timeout = min(timeout, max(0.0, remaining))
        return time.monotonic() + timeout

    # Repository (Triton's extension), operator calls

    async def RepositoryIndex(self, request: Any, context: Any) -> Any:
        async def run() -> Any:
            resp = pb.RepositoryIndexResponse()
            for row in self.daemon.registry.index():
                if request.ready and row.get("state") != "READY":
                    continue
                resp.models.add(
                    name=str(row["name"]),
                    version=str(row.get("version", "")),
                    state=str(row.get("state", "")),
                    reason=str(row.get("reason", "")),
                )
            return resp

        return await self._answer(context, run())

    async def RepositoryModelLoad(self, request: Any, context: Any) -> Any:
        async def run() -> Any:
            who = operator(self.daemon, context)
            params = {k: _repo_param(v) for k, v in request.parameters.items()}
            checkpoint = params.get("checkpoint")
            if checkpoint is not None and not isinstance(checkpoint, str):
                raise Abort(grpc.StatusCode.INVALID_ARGUMENT, "checkpoint must be a string")
            why = str(params.get("reason", "grpc RepositoryModelLoad"))[:200]
            await self.daemon.registry.load(request.model_name, checkpoint, who=who, why=why)
            return pb.RepositoryModelLoadResponse()

        return await self._answer(context, run())

    async def RepositoryModelUnload(self, request: Any, context: Any) -> Any:
        async def run() -> Any:
            who = operator(self.daemon, context)
            params = {k: _repo_param(v) for k, v in request.parameters.items()}
            why = str(params.get("reason", "grpc RepositoryModelUnload"))[:200]
            await self.daemon.registry.unload(request.model_name, who=who, why=why)
            return pb.RepositoryModelUnloadResponse()

        return await self._answer(context, run())

    def _model(self, name: str, version: str) -> Any:
        model = self.daemon.registry.get(name or None)
        if version and version != str(model.version):
            raise Abort(
                grpc.StatusCode.NOT_FOUND,
                f"model {model.name!r} has no version {version!r}; it serves {model.version}",
            )
        return model


def _ready(daemon: Any) -> bool:
    return bool(daemon.ready) and not daemon.draining


def _not_ready(daemon: Any) -> str:
    return (
        "not ready: draining for shutdown"
        if daemon.draining
        else (f"not ready: {daemon.not_ready_reason}")
    )


def _size(request: Any) -> int:
    if request.raw_input_contents:
        return 0  # raw bytes become an array without a per-element loop
    n = 0
    for t in request.inputs:
        for f in CONTENTS.values():
            n += len(getattr(t.contents, f))
    return n


def _request_id(call: oip.InferCall, context: Any) -> str:
    if call.request_id:
        return call.request_id
    for k, v in context.invocation_metadata() or ():
        if k == "x-request-id" and isinstance(v, str) and oip.safe_id(v):
            return v
    return ""


def operator(daemon: Any, context: Any) -> str:
    """The operator token as metadata `authorization: Bearer …`, as on HTTP (constant-time);
    with no token configured, loopback peers only."""
    token = daemon.settings.operator_token
    peer = context.peer() or ""
    header = ""
    for k, v in context.invocation_metadata() or ():
        if k == "authorization" and isinstance(v, str):
            header = v
    if token is None:
        if peer.startswith(("ipv4:127.", "ipv6:[::1]", "unix:")):
            return f"loopback:{peer}"
        raise Abort(
            grpc.StatusCode.PERMISSION_DENIED,
            "no operator token is configured: repository changes are accepted from loopback "
            "clients only (set LCS_OPERATOR_TOKEN)",
        )
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise Abort(
            grpc.StatusCode.UNAUTHENTICATED,
            "operator token required: metadata authorization: Bearer <token>",
        )
    if not secrets.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise Abort(grpc.StatusCode.PERMISSION_DENIED, "operator token rejected")
    return f"token:{peer}"


# ---- the codec's gRPC side


def _param(p: Any) -> Any:
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


_repo_param = _param


def parse_grpc(request: Any, limits: oip.Limits, model_name: str) -> oip.InferCall:
    """A ModelInferRequest (raw_input_contents or typed contents) → the normalised call."""
    if len(request.inputs) != 1:
        raise oip.OIPError(400, "exactly one input tensor is required (images or a tensor)")
    t = request.inputs[0]
    shape = oip.check_shape(list(t.shape), t.name)
    inp = oip.InputHeader(
        t.name, t.datatype, shape, {k: _param(v) for k, v in t.parameters.items()}
    )
    if request.raw_input_contents:
        if len(request.raw_input_contents) != len(request.inputs):
            raise oip.OIPError(400, "raw_input_contents must hold one entry per input")
        kind, tensor, images = oip.decode_raw(inp, request.raw_input_contents[0], limits)
    else:
        field = CONTENTS.get(t.datatype)
        if field is None:
            if t.datatype == "FP16":
                raise oip.OIPError(400, "FP16 tensors must be sent in raw_input_contents")
            oip.decode_values(inp, [], limits, b64=False)  # raises: datatype not accepted
            raise AssertionError("unreachable")
        values = getattr(t.contents, field)
        data: Any = list(values) if t.datatype == "BYTES" else np.asarray(values)
        kind, tensor, images = oip.decode_values(inp, data, limits, b64=False)
    params = {k: _param(v) for k, v in request.parameters.items()}
    outputs = tuple(
        oip.requested_output(o.name, {k: _param(v) for k, v in o.parameters.items()})
        for o in request.outputs
    )
    return oip.build_call(model_name, request.id, kind, tensor, images, outputs, params)


async def run_call(
    model: Any, call: oip.InferCall, deadline: float, received: float | None = None
) -> list[Any]:
    """The call on the model's InferenceService: the one path HTTP and gRPC share."""
    hints = make_hints(call)
    svc = model.service
    if call.kind == "images":
        return list(await svc.predict_images(call.images, hints, deadline, received))
    assert call.tensor is not None
    if call.kind == "pixels":
        return list(await svc.predict_pixels(call.tensor, hints, deadline, received))
    return list(await svc.predict_tensor(call.tensor, hints, deadline, received))


def make_hints(call: oip.InferCall) -> Any:
    from server.inference import Hints

    return Hints(min_accuracy=call.min_accuracy, max_latency_ms=call.max_latency_ms)


def encode_grpc(model: Any, call: oip.InferCall, results: list[Any], request_id: str) -> Any:
    probs = torch.stack([r.probabilities for r in results]).to(torch.float32).numpy()
    outputs = oip.outputs_for(call, probs, model.meta.class_names)
    params = oip.response_parameters(
        [r.level for r in results], [r.tier for r in results], [r.precision for r in results]
    )
    resp = pb.ModelInferResponse(
        model_name=model.name, model_version=str(model.version), id=request_id
    )
    for k, v in params.items():
        _set_param(resp.parameters[k], v)
    for o in outputs:
        resp.outputs.add(name=o.name, datatype=o.datatype, shape=o.shape)
        resp.raw_output_contents.append(oip.raw_bytes(o))
    return resp


def _set_param(p: Any, v: Any) -> None:
    if isinstance(v, bool):
        p.bool_param = v
    elif isinstance(v, int):
        p.int64_param = v
    elif isinstance(v, float):
        p.double_param = v
    else:
        p.string_param = str(v)


# ---- the server


class _Refused:
    """What the request deserializer hands the handler instead of a message it refuses."""

    def __init__(self, reason: str, code: grpc.StatusCode, message: str) -> None:
        self.reason, self.code, self.message = reason, code, message


class Observe(grpc.aio.ServerInterceptor):
    """One access-log line and the request metrics per call, as RequestLog does for HTTP.

    grpc refuses a message over max_receive_message_length before any Python code sees the
    call (grpc/grpc#27996), so that limit is set to RECEIVE_CEILING × the body cap and the
    cap itself is checked here, on the raw message in the request deserializer: an oversized
    message is counted and logged like HTTP's 413 while unary calls stay unary (serving them
    as client-streaming, the earlier way to see the refusal, cost 6-7 % of gRPC throughput at
    c = 8 and 32). A message over the ceiling is still refused by grpc itself, uncounted."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.cap = int(daemon.settings.max_body_bytes)
        self._handlers: dict[str, Any] = {}  # by method: grpc asks on every call
        # (method, model, status) → its lcs_requests and lcs_request_duration children
        self._series: dict[tuple[str, str, str], tuple[Any, Any]] = {}
        self._series_of: Any = None

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        observed = self._handlers.get(details.method)
        if observed is None or observed.inner is not handler.unary_unary:
            observed = self._handlers[details.method] = self._observed(handler, details.method)
        return observed.handler

    def _observed(self, handler: Any, method: str) -> Any:
        inner, parse, cap = handler.unary_unary, handler.request_deserializer, self.cap
        too_large = _Refused(
            "too_large",
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"request message exceeds the limit of {cap} bytes",
        )
        malformed = _Refused(
            "bad_input", grpc.StatusCode.INVALID_ARGUMENT, "the request is not a valid message"
        )

        def deserialize(raw: bytes) -> Any:
            if len(raw) > cap:
                return too_large
            if parse is None:
                return raw
            try:
                return parse(raw)
            except Exception:  # not a valid message of the method's type
                return malformed

        async def observed(request: Any, context: Any) -> Any:
            start, unset = time.perf_counter(), grpc.StatusCode.OK
            try:
                if isinstance(request, _Refused):
                    self.rejected(request.reason)
                    await context.abort(request.code, request.message)
                return await inner(request, context)
            except asyncio.CancelledError:  # the client went away, or its deadline passed
                unset = grpc.StatusCode.CANCELLED
                raise
            except Exception:  # escaped every handler (an abort sets its code): grpc's UNKNOWN
                unset = grpc.StatusCode.UNKNOWN
                raise
            finally:
                message = None if isinstance(request, _Refused) else request
                self.record(method, message, context, time.perf_counter() - start, unset)

        wrapped = grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=deserialize,
            response_serializer=handler.response_serializer,
        )
        return _Observed(inner, wrapped)

    def rejected(self, reason: str) -> None:
        metrics = getattr(self.daemon, "metrics", None)
        if metrics is not None:
            metrics.rejected.labels(reason).inc()

    def record(
        self,
        method: str,
        request: Any,
        context: Any,
        seconds: float,
        unset: grpc.StatusCode = grpc.StatusCode.OK,
    ) -> None:
        """`unset`: the call's code when the handler set none (it returned, or raised)."""
        code = context.code() or unset
        status = code.name if isinstance(code, grpc.StatusCode) else str(code)
        name = getattr(request, "model_name", "") or getattr(request, "name", "")
        # only a loaded model's name: label values stay bounded whatever clients send
        model = name if name and name in self.daemon.registry.names() else ""
        metrics = getattr(self.daemon, "metrics", None)
        if metrics is not None:
            if metrics is not self._series_of:  # children belong to one Metrics
                self._series, self._series_of = {}, metrics
            key = (method, model, status)
            series = self._series.get(key)
            if series is None:  # labels() costs a lock and a validation: once per series
                series = self._series[key] = (
                    metrics.requests.labels("grpc", method, model, status),
                    metrics.request_duration.labels("grpc", method, model),
                )
            series[0].inc()
            series[1].observe(seconds)
        if not access.isEnabledFor(logging.INFO):
            return  # not even the line's fields are built
        extra: dict[str, Any] = {
            "method": "grpc",
            "path": method,
            "status": status,
            "latency_ms": round(seconds * 1e3, 3),
        }
        if model:
            extra["model"] = model
        access.info("request", extra=extra)


@dataclass(frozen=True)
class _Observed:
    inner: Any  # the servicer's handler the wrapper was made for
    handler: Any


class Health(health_aio.HealthServicer):
    """grpc.health.v1 for "" and the inference service: SERVING while the daemon is ready."""

    def __init__(self, daemon: Any) -> None:
        super().__init__()
        self.daemon = daemon

    async def sync(self) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if _ready(self.daemon)
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", SERVICE):
            await self.set(service, status)

    async def Check(self, request: Any, context: Any) -> Any:
        await self.sync()
        return await super().Check(request, context)


@dataclass
class GrpcHandle:
    server: grpc.aio.Server
    port: int
    health: Health
    _watch: asyncio.Task[None]

    async def stop(self, grace_s: float) -> None:
        """Health goes NOT_SERVING, new calls are refused, calls in flight get `grace_s`."""
        self._watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watch
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


async def start_grpc(daemon: Any, port: int, host: str | None = None) -> GrpcHandle | None:
    """Serve gRPC on `port` (0: off → None) on the running loop, sharing `daemon`'s models.
    Messages over the daemon's body cap are refused RESOURCE_EXHAUSTED: by Observe up to
    RECEIVE_CEILING × the cap (counted), by grpc itself beyond."""
    if port == 0:
        return None
    cap = int(daemon.settings.max_body_bytes)
    server = grpc.aio.server(
        interceptors=[*tracing.grpc_interceptors(), Observe(daemon)],  # a span per call first
        options=[
            ("grpc.max_receive_message_length", RECEIVE_CEILING * cap),
            ("grpc.max_send_message_length", max(cap, 4 * 1024 * 1024)),
            ("grpc.so_reuseport", 0),  # a second daemon on the same port must fail, not share
        ],
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(daemon), server)
    health = Health(daemon)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    host = host or daemon.settings.host
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"gRPC could not bind {host}:{port}")
    await server.start()
    await health.sync()
    watch = asyncio.get_running_loop().create_task(_watch(health))
    log.info("grpc serving", extra={"host": host, "port": bound})
    return GrpcHandle(server, bound, health, watch)


async def _watch(health: Health, every_s: float = 0.25) -> None:
    """Keeps grpc.health.v1 Watch streams current as readiness changes (drain, model load)."""
    while True:
        await asyncio.sleep(every_s)
        await health.sync()
