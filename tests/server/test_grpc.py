"""The gRPC servicer on a real port, in process, over a fake daemon with the core's interface."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image
from pydantic import SecretStr

from server import grpc_server
from server.inference import Hints
from server.protocol import inference_pb2 as pb
from server.protocol import inference_pb2_grpc as pb_grpc
from tests.helpers import free_port

TOKEN = "grpc-s3cret"
MEAN, STD = 0.1307, 0.3081
W = torch.randn(10, 784, generator=torch.Generator().manual_seed(0))
LEVEL = SimpleNamespace(alpha=0.5, gamma=0.625, family="structured", kind="point")


def expected(x: np.ndarray) -> np.ndarray:
    """The fake model's answer, computed here independently of the server."""
    z = torch.from_numpy(x.reshape(len(x), -1).astype(np.float32)) @ W.T
    return torch.softmax(z, 1).numpy()


class Refusal(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class FakeService:
    fail: Refusal | None = None
    seen_hints: list = field(default_factory=list)
    seen_deadlines: list = field(default_factory=list)
    delay_s: float = 0.0
    started: asyncio.Event | None = None

    async def predict_tensor(self, x, hints, deadline, received=None):
        self.seen_hints.append(hints)
        self.seen_deadlines.append(deadline)
        if self.started is not None:
            self.started.set()
        await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28)
        probs = torch.from_numpy(expected(x.numpy()))
        return [
            SimpleNamespace(probabilities=p, level=LEVEL, tier="torch", precision="fp32")
            for p in probs
        ]

    async def predict_pixels(self, x, hints, deadline, received=None):
        assert x.dtype == torch.uint8
        return await self.predict_tensor((x.float() / 255 - MEAN) / STD, hints, deadline)

    async def predict_images(self, images, hints, deadline, received=None):
        arrs = [np.asarray(Image.open(io.BytesIO(b)).convert("L")) for b in images]
        return await self.predict_pixels(torch.from_numpy(np.stack(arrs)[:, None]), hints, deadline)


class UnknownModel(Exception):
    status = 404


class FakeRegistry:
    def __init__(self) -> None:
        meta = SimpleNamespace(
            input_size=[1, 28, 28], num_classes=10, class_names=list("0123456789")
        )
        self.model = SimpleNamespace(name="digits", version=2, meta=meta, service=FakeService())
        self.loads: list[tuple] = []

    def get(self, name):
        if name not in (None, "digits"):
            raise UnknownModel(f"unknown model {name!r}; this server serves 'digits'")
        return self.model

    def names(self):
        return ["digits"]

    def index(self):
        return [
            {"name": "digits", "version": "2", "state": "READY", "reason": ""},
            {"name": "old", "version": "1", "state": "UNAVAILABLE", "reason": "unloaded"},
        ]

    async def load(self, name, checkpoint, who, why):
        self.loads.append(("load", name, checkpoint, who, why))

    async def unload(self, name, who, why):
        self.loads.append(("unload", name, who, why))


def fake_daemon() -> SimpleNamespace:
    settings = SimpleNamespace(
        host="127.0.0.1",
        max_body_bytes=64 * 1024,
        request_timeout_s=10.0,
        operator_token=SecretStr(TOKEN),
        max_batch_images=64,
    )
    return SimpleNamespace(
        settings=settings,
        registry=FakeRegistry(),
        ready=True,
        draining=False,
        not_ready_reason="",
        decode_pool=None,  # run_in_executor(None, …): the loop's default pool
    )


@pytest.fixture(scope="module")
def served():
    """One gRPC server on its own loop thread (as uvicorn's loop hosts it in the daemon)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    daemon = fake_daemon()
    handle = asyncio.run_coroutine_threadsafe(
        grpc_server.start_grpc(daemon, free_port()), loop
    ).result(10)
    channel = grpc.insecure_channel(f"127.0.0.1:{handle.port}")
    yield SimpleNamespace(
        daemon=daemon,
        service=daemon.registry.model.service,
        stub=pb_grpc.GRPCInferenceServiceStub(channel),
        health=health_pb2_grpc.HealthStub(channel),
        channel=channel,
    )
    channel.close()
    asyncio.run_coroutine_threadsafe(handle.stop(1.0), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def infer_request(arr: np.ndarray, datatype: str, raw: bool = True, **kw) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="digits", **kw)
    t = req.inputs.add(name="input", datatype=datatype, shape=list(arr.shape))
    if raw:
        req.raw_input_contents.append(arr.tobytes())
    else:
        field = grpc_server.CONTENTS[datatype]
        getattr(t.contents, field).extend(arr.ravel().tolist())
    return req


def as_numpy(resp: pb.ModelInferResponse, i: int) -> np.ndarray:
    o = resp.outputs[i]
    if o.datatype == "BYTES":
        from server.oip import split_bytes

        return np.array(split_bytes(resp.raw_output_contents[i], o.name), dtype=object).reshape(
            list(o.shape)
        )
    return np.frombuffer(resp.raw_output_contents[i], "<f4").reshape(list(o.shape))


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def code_of(call, *args, **kw) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as e:
        call(*args, **kw)
    return e.value.code(), e.value.details()


def test_health_and_metadata(served):
    s = served.stub
    assert s.ServerLive(pb.ServerLiveRequest()).live
    assert s.ServerReady(pb.ServerReadyRequest()).ready
    assert s.ModelReady(pb.ModelReadyRequest(name="digits")).ready
    meta = s.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "lcs-serve" and "binary_tensor_data" in meta.extensions
    m = s.ModelMetadata(pb.ModelMetadataRequest(name="digits"))
    assert m.versions == ["2"] and list(m.inputs[0].shape) == [-1, 1, 28, 28]
    assert [o.name for o in m.outputs] == ["probabilities", "labels"]
    for svc in ("", grpc_server.SERVICE):
        h = served.health.Check(health_pb2.HealthCheckRequest(service=svc))
        assert h.status == health_pb2.HealthCheckResponse.SERVING
    assert code_of(s.ModelMetadata, pb.ModelMetadataRequest(name="nope"))[0] == (
        grpc.StatusCode.NOT_FOUND
    )
    assert not s.ModelReady(pb.ModelReadyRequest(name="old")).ready  # indexed, unloaded
    assert code_of(s.ModelReady, pb.ModelReadyRequest(name="nope"))[0] == (
        grpc.StatusCode.NOT_FOUND
    )
    got = code_of(s.ModelReady, pb.ModelReadyRequest(name="digits", version="9"))
    assert got[0] == grpc.StatusCode.NOT_FOUND and "version" in got[1]


@pytest.mark.parametrize(
    ("datatype", "raw"),
    [
        ("FP32", True),
        ("FP32", False),
        ("FP16", True),
        ("UINT8", True),
        ("UINT8", False),
        ("INT64", False),
    ],
)
def test_infer_tensors(served, datatype, raw):
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (5, 1, 28, 28))
    if datatype in ("FP32", "FP16"):
        x = ((pixels / 255 - MEAN) / STD).astype(np.float32 if datatype == "FP32" else np.float16)
        want = expected(x.astype(np.float32))
    else:
        x = pixels.astype(np.uint8 if datatype == "UINT8" else np.int64)
        want = expected(((pixels / 255 - MEAN) / STD).astype(np.float32))
    req = infer_request(x, datatype, raw, id="req-1")
    req.parameters["min_accuracy"].double_param = 0.9
    req.outputs.add(name="probabilities")
    lab = req.outputs.add(name="labels")
    lab.parameters["classification"].int64_param = 2
    resp = served.stub.ModelInfer(req)
    assert resp.id == "req-1" and resp.model_name == "digits" and resp.model_version == "2"
    assert resp.parameters["gamma"].double_param == 0.625
    assert resp.parameters["tier"].string_param == "torch"
    np.testing.assert_allclose(as_numpy(resp, 0), want, atol=1e-5 if datatype != "FP16" else 2e-3)
    labels = as_numpy(resp, 1)
    assert labels.shape == (5, 2)
    assert [int(v.split(b":")[1]) for v in labels[:, 0]] == want.argmax(1).tolist()
    assert served.service.seen_hints[-1] == Hints(min_accuracy=0.9, max_latency_ms=None)


def test_infer_images_and_request_id_from_metadata(served):
    rng = np.random.default_rng(4)
    arrs = rng.integers(0, 256, (3, 28, 28)).astype(np.uint8)
    req = pb.ModelInferRequest(model_name="digits")
    req.inputs.add(name="image", datatype="BYTES", shape=[3]).contents.bytes_contents.extend(
        [png(a) for a in arrs]
    )
    resp = served.stub.ModelInfer(req, metadata=[("x-request-id", "abc-123")])
    assert resp.id == "abc-123"
    want = expected(((arrs[:, None] / 255 - MEAN) / STD).astype(np.float32))
    np.testing.assert_allclose(as_numpy(resp, 0), want, atol=1e-5)


def test_deadline_from_the_client(served):
    x = np.zeros((1, 1, 28, 28), np.float32)
    before = time.monotonic()
    served.stub.ModelInfer(infer_request(x, "FP32"), timeout=2.0)
    # the service got the client's 2 s, not the daemon's 10 s
    assert before < served.service.seen_deadlines[-1] < before + 2.5


ZEROS = np.zeros((1, 1, 28, 28), np.float32)


@pytest.mark.parametrize(
    ("mutate", "code", "needle"),
    [
        (lambda r: setattr(r, "model_name", "nope"), grpc.StatusCode.NOT_FOUND, "unknown model"),
        (
            lambda r: r.raw_input_contents.__setitem__(0, b"abc"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "3 bytes",
        ),
        (
            lambda r: r.inputs[0].shape.__setitem__(1, 3),
            grpc.StatusCode.INVALID_ARGUMENT,
            "[N, 1, 28, 28]",
        ),
        (
            lambda r: setattr(r.inputs[0], "datatype", "BOOL"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "not accepted",
        ),
        (
            lambda r: r.raw_input_contents.append(b""),
            grpc.StatusCode.INVALID_ARGUMENT,
            "one entry per input",
        ),
        (
            lambda r: r.raw_input_contents.__setitem__(0, np.full(784, np.inf, "<f4").tobytes()),
            grpc.StatusCode.INVALID_ARGUMENT,
            "finite",
        ),
        (
            lambda r: r.outputs.add(name="logits"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "unknown output",
        ),
        (
            lambda r: r.parameters["max_latency_ms"].MergeFrom(pb.InferParameter(string_param="x")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_latency_ms",
        ),
    ],
    ids=["unknown-model", "length-lies", "shape", "dtype", "raw-count", "inf", "output", "hint"],
)
def test_refusals_map_to_status_codes(served, mutate, code, needle):
    req = infer_request(ZEROS, "FP32")
    mutate(req)
    got = code_of(served.stub.ModelInfer, req)
    assert got[0] == code and needle in got[1], got


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (429, grpc.StatusCode.UNAVAILABLE),
        (503, grpc.StatusCode.UNAVAILABLE),
        (504, grpc.StatusCode.DEADLINE_EXCEEDED),
        (413, grpc.StatusCode.INVALID_ARGUMENT),
        (422, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_core_errors_map_by_status(served, status, code):
    served.service.fail = Refusal(status, f"refused {status}")
    try:
        got = code_of(served.stub.ModelInfer, infer_request(ZEROS, "FP32"))
    finally:
        served.service.fail = None
    assert got == (code, f"refused {status}")


def test_a_crash_is_internal_and_says_nothing(served):
    served.service.fail = RuntimeError("/secret/path exploded")
    try:
        got = code_of(served.stub.ModelInfer, infer_request(ZEROS, "FP32"))
    finally:
        served.service.fail = None
    assert got == (grpc.StatusCode.INTERNAL, "internal error")


def test_oversized_message_is_resource_exhausted(served):
    big = np.zeros((30, 1, 28, 28), np.float32)  # 94 KB > the 64 KiB body cap
    got = code_of(served.stub.ModelInfer, infer_request(big, "FP32"))
    assert got[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert served.stub.ServerLive(pb.ServerLiveRequest()).live  # and the server is fine


def _padded(size: int) -> pb.ModelInferRequest:
    """A valid request whose serialized message is exactly `size` bytes (a parameter padded)."""
    req = infer_request(ZEROS, "FP32")
    pad = req.parameters["pad"]
    pad.string_param = "x"
    pad.string_param = "x" * (1 + size - req.ByteSize())
    while req.ByteSize() > size:  # a length prefix grew by a byte
        pad.string_param = pad.string_param[:-1]
    assert req.ByteSize() == size
    return req


def test_the_body_cap_is_exact_and_counted(served, monkeypatch):
    """A message of exactly the cap is served; one byte more is refused and counted once."""
    from server.metrics import Metrics

    cap = served.daemon.settings.max_body_bytes
    metrics = Metrics()
    monkeypatch.setattr(served.daemon, "metrics", metrics, raising=False)
    reply = served.stub.ModelInfer(_padded(cap))
    assert reply.model_name == "digits"
    got = code_of(served.stub.ModelInfer, _padded(cap + 1))
    assert got == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        f"request message exceeds the limit of {cap} bytes",
    )
    assert rejections(metrics) == {"too_large": 1.0}


def test_a_message_over_the_ceiling_is_refused_by_grpc(served):
    """Beyond RECEIVE_CEILING × the cap grpc refuses the message before Python sees the call
    (so it is not counted), and the server goes on serving."""
    cap = served.daemon.settings.max_body_bytes
    got = code_of(served.stub.ModelInfer, _padded(grpc_server.RECEIVE_CEILING * cap + 1))
    assert got[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert served.stub.ServerLive(pb.ServerLiveRequest()).live


def test_unary_calls_are_served_as_unary(served):
    """Observe wraps a unary handler in a unary one (a client-streaming wrapper cost 6-7 % of
    throughput), and builds it once per method."""
    observe = grpc_server.Observe(served.daemon)
    inner = grpc.unary_unary_rpc_method_handler(
        lambda request, context: request, request_deserializer=pb.ModelInferRequest.FromString
    )

    async def continuation(details):
        return inner

    details = SimpleNamespace(method=f"/{grpc_server.SERVICE}/ModelInfer")
    first = asyncio.run(observe.intercept_service(continuation, details))
    again = asyncio.run(observe.intercept_service(continuation, details))
    assert first.unary_unary is not None and first.stream_unary is None
    assert again is first


def test_not_ready_and_draining(served):
    d = served.daemon
    d.ready, d.not_ready_reason = False, "loading"
    try:
        assert not served.stub.ServerReady(pb.ServerReadyRequest()).ready
        got = code_of(served.stub.ModelInfer, infer_request(ZEROS, "FP32"))
        assert got == (grpc.StatusCode.UNAVAILABLE, "not ready: loading")
        h = served.health.Check(health_pb2.HealthCheckRequest(service=""))
        assert h.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        d.ready = True
    d.draining = True
    try:
        got = code_of(served.stub.ModelInfer, infer_request(ZEROS, "FP32"))
        assert got[0] == grpc.StatusCode.UNAVAILABLE and "draining" in got[1]
    finally:
        d.draining = False


def test_repository_calls_and_operator_token(served):
    s = served.stub
    idx = s.RepositoryIndex(pb.RepositoryIndexRequest())
    assert [(m.name, m.state) for m in idx.models] == [("digits", "READY"), ("old", "UNAVAILABLE")]
    assert [m.name for m in s.RepositoryIndex(pb.RepositoryIndexRequest(ready=True)).models] == [
        "digits"
    ]
    req = pb.RepositoryModelLoadRequest(model_name="b")
    req.parameters["checkpoint"].string_param = "/models/b.safetensors"
    assert code_of(s.RepositoryModelLoad, req)[0] == grpc.StatusCode.UNAUTHENTICATED
    got = code_of(s.RepositoryModelLoad, req, metadata=[("authorization", "Bearer wrong")])
    assert got[0] == grpc.StatusCode.PERMISSION_DENIED and TOKEN not in got[1]
    auth = [("authorization", f"Bearer {TOKEN}")]
    s.RepositoryModelLoad(req, metadata=auth)
    s.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="b"), metadata=auth)
    loads = served.daemon.registry.loads
    assert loads[-2][:3] == ("load", "b", "/models/b.safetensors")
    assert loads[-2][3].startswith("token:") and loads[-1][:2] == ("unload", "b")


def test_port_zero_is_off():
    assert asyncio.run(grpc_server.start_grpc(fake_daemon(), 0)) is None


def test_stubs_are_what_grpcio_tools_generates(tmp_path: Path):
    from server.protocol.generate import ROOT, generate

    for fresh in generate(tmp_path):
        mine = ROOT / fresh.relative_to(tmp_path)
        assert mine.read_text() == fresh.read_text(), f"{mine} is stale: regenerate it"


def test_one_access_log_line_per_call_with_its_status(served, caplog):
    with caplog.at_level(logging.INFO, logger="lcs.access"):
        served.stub.ModelInfer(infer_request(ZEROS, "FP32"))
        code_of(served.stub.ModelMetadata, pb.ModelMetadataRequest(name="nope"))
        for _ in range(100):  # an aborted call's status reaches the client before its log line
            lines = [r for r in caplog.records if r.name == "lcs.access"]
            if len(lines) >= 2:
                break
            time.sleep(0.01)
    got = [(r.path.rsplit("/", 1)[1], r.status, getattr(r, "model", "")) for r in lines]
    assert got == [("ModelInfer", "OK", "digits"), ("ModelMetadata", "NOT_FOUND", "")]


# ---- the real daemon over gRPC while the level moves every 2 ms

GRPC_REQUESTS = 400


async def switching_scenario() -> tuple[list[tuple[int, float, np.ndarray]], int]:
    from server import daemon as serving
    from server.app import create_app
    from server.settings import Settings
    from tests.helpers import digits

    settings = Settings(controller_enabled=False, tier2_enabled=False, torch_threads=1)
    app = create_app(settings)
    d = await serving.start(settings, app.state.metrics)
    handle = await grpc_server.start_grpc(d, free_port())
    model = d.registry.get()
    arrs, _ = digits(16)
    grid = model.level.calc.grid(7)
    stop = asyncio.Event()
    moves = 0

    async def controller_moves() -> None:  # what the controller does on a decision
        nonlocal moves
        rng = np.random.default_rng(0)
        while not stop.is_set():
            d._on_level(model, float(rng.choice(grid)), "test")
            moves += 1
            await asyncio.sleep(0.002)

    mover = asyncio.create_task(controller_moves())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{handle.port}") as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        sem = asyncio.Semaphore(32)

        async def one(i: int) -> tuple[int, float, np.ndarray]:
            j = i % len(arrs)
            req = infer_request(arrs[j].reshape(1, 1, 28, 28), "UINT8")
            async with sem:
                resp = await stub.ModelInfer(req)
            return j, resp.parameters["alpha"].double_param, as_numpy(resp, 0)[0]

        results = await asyncio.gather(*(one(i) for i in range(GRPC_REQUESTS)))
    stop.set()
    await mover
    await handle.stop(1.0)
    await serving.stop(d)
    return list(results), moves


def test_grpc_reports_the_level_that_computed_each_output():
    from models import LevelCompressor, checkpoint
    from tests.helpers import digits

    results, moves = asyncio.run(switching_scenario())
    arrs, _ = digits(16)
    net, meta, _ = checkpoint.load()
    levels = LevelCompressor(net, cache=True)
    refs: dict[tuple[int, float], np.ndarray] = {}
    worst = 0.0
    for j, alpha, probs in results:
        if (j, alpha) not in refs:
            x = (torch.from_numpy(arrs[j]).float().view(1, 1, 28, 28) / 255 - meta.mean[0]) / (
                meta.std[0]
            )
            with torch.inference_mode():
                refs[(j, alpha)] = torch.softmax(net(x, levels(alpha)), 1)[0].numpy()
        worst = max(worst, float(np.abs(refs[(j, alpha)] - probs).max()))
    assert len(results) == GRPC_REQUESTS and moves > 20
    assert len({a for _, a, _ in results}) >= 4
    assert worst < 1e-4


def test_stop_lets_the_call_in_flight_finish_and_refuses_new_ones():
    async def scenario():
        daemon = fake_daemon()
        svc = daemon.registry.model.service
        svc.delay_s, svc.started = 0.3, asyncio.Event()
        handle = await grpc_server.start_grpc(daemon, free_port())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{handle.port}") as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            health = health_pb2_grpc.HealthStub(ch)
            in_flight = asyncio.ensure_future(stub.ModelInfer(infer_request(ZEROS, "FP32")))
            await svc.started.wait()
            daemon.draining = True  # SIGTERM: what main's DrainingServer does first
            refused = await _code(stub.ModelInfer(infer_request(ZEROS, "FP32")))
            status = (await health.Check(health_pb2.HealthCheckRequest())).status
            stopping = asyncio.ensure_future(handle.stop(5.0))
            resp = await in_flight
            await stopping
        return refused, status, resp

    refused, status, resp = asyncio.run(scenario())
    assert refused == grpc.StatusCode.UNAVAILABLE
    assert status == health_pb2.HealthCheckResponse.NOT_SERVING
    np.testing.assert_allclose(as_numpy(resp, 0), expected(ZEROS), atol=1e-6)


async def _code(call) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as e:
        return e.code()
    return grpc.StatusCode.OK


def rejections(metrics) -> dict[str, float]:
    return {
        s.labels["reason"]: s.value
        for fam in metrics.rejected.collect()
        for s in fam.samples
        if s.name == "lcs_rejected_requests_total"
    }


def _refusals():
    from server.admission import BudgetBusy
    from server.errors import DeadlineExceeded, NotReady, QueueFull, TooMany

    return [
        (QueueFull("queue full"), grpc.StatusCode.UNAVAILABLE, "queue_full"),
        (BudgetBusy(1), grpc.StatusCode.UNAVAILABLE, "decode_budget"),
        (DeadlineExceeded("late"), grpc.StatusCode.DEADLINE_EXCEEDED, "deadline"),
        (NotReady("unloading"), grpc.StatusCode.UNAVAILABLE, "not_ready"),
        (TooMany("too many"), grpc.StatusCode.INVALID_ARGUMENT, "too_many"),
        ("draining", grpc.StatusCode.UNAVAILABLE, "not_ready"),
        ("shape", grpc.StatusCode.INVALID_ARGUMENT, "bad_input"),
        ("oversized", grpc.StatusCode.RESOURCE_EXHAUSTED, "too_large"),
        ("not protobuf", grpc.StatusCode.INVALID_ARGUMENT, "bad_input"),
        ("unknown model", grpc.StatusCode.NOT_FOUND, None),  # not a refusal before inference
    ]


@pytest.mark.parametrize(("error", "code", "reason"), _refusals(), ids=lambda v: str(v)[:20])
def test_a_refusal_over_grpc_counts_one_rejection_with_its_reason(
    served, monkeypatch, error, code, reason
):
    """lcs_rejected_requests{reason} goes up by exactly 1 (and no other reason moves), with
    the reason errors.rejection_reason gives HTTP's handler for the same error."""
    from server.errors import rejection_reason
    from server.metrics import Metrics

    metrics = Metrics()
    monkeypatch.setattr(served.daemon, "metrics", metrics, raising=False)
    req = infer_request(ZEROS, "FP32")
    if error == "draining":
        monkeypatch.setattr(served.daemon, "draining", True)
    elif error == "shape":
        req.inputs[0].shape[:] = [1, 1, 28, 27]
    elif error == "oversized":
        req = infer_request(np.zeros((30, 1, 28, 28), np.float32), "FP32")  # > 64 KiB cap
    elif error == "unknown model":
        req.model_name = "nope"
    elif error == "not protobuf":
        pass
    else:
        assert rejection_reason(error) == reason  # the mapping HTTP uses
        monkeypatch.setattr(served.service, "fail", error)
    call = served.stub.ModelInfer
    if error == "not protobuf":  # bytes no ModelInferRequest parses from
        call, req = served.channel.unary_unary(f"/{grpc_server.SERVICE}/ModelInfer"), b"\xff" * 4
    assert code_of(call, req)[0] == code

    def calls() -> dict[str, float]:
        return {
            s.labels["status"]: s.value
            for fam in metrics.requests.collect()
            for s in fam.samples
            if s.name == "lcs_requests_total" and s.labels["protocol"] == "grpc"
        }

    # abort() sends the status before the interceptor's bookkeeping runs: wait for it (bounded)
    for _ in range(200):
        if calls():
            break
        time.sleep(0.01)
    assert calls() == {code.name: 1.0}  # the call itself, with its code, once
    assert rejections(metrics) == ({reason: 1.0} if reason else {})
