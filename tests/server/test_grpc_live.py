"""gRPC and HTTP against one real daemon: request metrics by protocol, refusals counted alike,
and SIGTERM draining the gRPC calls in flight."""

from __future__ import annotations

import json
import threading
import time

import grpc
import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server.protocol import inference_pb2 as pb
from server.protocol import inference_pb2_grpc as pb_grpc
from tests.helpers import encode, free_port, live_server

INFER = "/inference.GRPCInferenceService/ModelInfer"
OIP_INFER = "/v2/models/{name}/infer"
CAP = 256 * 1024  # the body (and gRPC message) cap of these servers: small, so cheap to cross
BASE = {"LCS_CONTROLLER_ENABLED": "0", "LCS_TIER2_ENABLED": "0", "LCS_MAX_BODY_BYTES": str(CAP)}


def pixels(n: int) -> np.ndarray:
    """(n, 1, 28, 28) raw pixels: any will do (answers are compared with the daemon's own over
    HTTP), and loading the digits costs seconds."""
    return np.random.default_rng(n).integers(0, 256, (n, 1, 28, 28), dtype=np.uint8)


def grpc_request(x: np.ndarray, datatype: str = "UINT8") -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="digits")
    req.inputs.add(name="input", datatype=datatype, shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    return req


def grpc_probabilities(resp: pb.ModelInferResponse) -> np.ndarray:
    (i,) = [k for k, o in enumerate(resp.outputs) if o.name == "probabilities"]
    return np.frombuffer(resp.raw_output_contents[i], "<f4").reshape(list(resp.outputs[i].shape))


def http_json(x: np.ndarray) -> dict:
    return {
        "inputs": [
            {
                "name": "input",
                "datatype": "UINT8",
                "shape": list(x.shape),
                "data": x.ravel().tolist(),
            }
        ]
    }


def http_probabilities(body: dict) -> np.ndarray:
    (o,) = [o for o in body["outputs"] if o["name"] == "probabilities"]
    return np.asarray(o["data"], np.float32).reshape(o["shape"])


Series = dict[tuple[str, frozenset], float]


def scrape(url: str) -> Series:
    return _samples(httpx.get(url + "/metrics", timeout=10).text)


def _samples(text: str) -> Series:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def delta(before: Series, after: Series, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def settled(url: str, before: Series, name: str, want: float, **labels: str) -> Series:
    """A scrape once `name{labels}` has grown by `want` (HTTP counts a request just after its
    response is sent, so the next scrape may race it), or after 5 s: the caller asserts."""
    for _ in range(50):
        after = scrape(url)
        if delta(before, after, name, **labels) >= want:
            return after
        time.sleep(0.1)
    return after


@pytest.fixture(scope="module")
def srv():
    port = free_port()
    with live_server({**BASE, "LCS_GRPC_PORT": str(port)}) as s:
        s.grpc = f"127.0.0.1:{port}"
        with grpc.insecure_channel(s.grpc) as channel:
            s.stub = pb_grpc.GRPCInferenceServiceStub(channel)
            yield s


def test_a_scrape_counts_each_protocol_exactly(srv):
    """n gRPC calls, m OIP HTTP calls and k /predict calls: the series with protocol="grpc"
    and protocol="http" grow by exactly those numbers (counter and histogram alike)."""
    x = pixels(4)
    n_grpc, n_oip, n_predict = 5, 3, 2
    before = scrape(srv.url)
    for _ in range(n_grpc):
        srv.stub.ModelInfer(grpc_request(x), timeout=30)
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        for _ in range(n_oip):
            assert c.post("/v2/models/digits/infer", json=http_json(x)).status_code == 200
        png = encode(x[0, 0])
        for _ in range(n_predict):
            r = c.post("/predict", content=png, headers={"content-type": "image/png"})
            assert r.status_code == 200
    counts = {
        ("grpc", INFER, "OK"): n_grpc,
        ("http", OIP_INFER, "200"): n_oip,
        ("http", "/predict", "200"): n_predict,
    }
    after = settled(
        srv.url, before, "lcs_requests_total", n_predict, **_labels("http", "/predict", "200")
    )
    for (protocol, endpoint, status), n in counts.items():
        labels = _labels(protocol, endpoint, status)
        assert delta(before, after, "lcs_requests_total", **labels) == n, labels
        del labels["status"]
        assert delta(before, after, "lcs_request_duration_seconds_count", **labels) == n, labels
    # gRPC's calls are not also counted as HTTP requests, nor HTTP's as gRPC
    for protocol, endpoint in (("http", INFER), ("grpc", OIP_INFER), ("grpc", "/predict")):
        labels = _labels(protocol, endpoint, "")
        del labels["status"]
        assert delta(before, after, "lcs_request_duration_seconds_count", **labels) == 0


def test_the_benchmarks_grpc_load_counts_only_calls_answered(srv):
    """benchmarks.load.h2load_grpc (h2load sees a gRPC error as an HTTP 200): n good calls are
    n answers, and n calls for a model the daemon does not serve are n errors, as the
    daemon's own counters say."""
    from benchmarks.load import grpc_frame, h2load_grpc

    good = grpc_request(pixels(1))
    answer = len(grpc_frame(srv.stub.ModelInfer(good, timeout=30).SerializeToString()))
    bad = grpc_request(pixels(1))
    bad.model_name = "nope"
    target = f"http://{srv.grpc}{INFER}"
    before = scrape(srv.url)
    ok = h2load_grpc(target, good.SerializeToString(), answer, 2, 12)
    refused = h2load_grpc(target, bad.SerializeToString(), answer, 2, 8)
    after = scrape(srv.url)
    assert (ok["ok"], ok["errors"]) == (12, 0) and ok["rps"] > 0
    assert (refused["ok"], refused["errors"]) == (0, 8)
    assert delta(before, after, "lcs_requests_total", **_labels("grpc", INFER, "OK")) == 12
    assert ok["p50_ms"] <= ok["p99_ms"]


def _labels(protocol: str, endpoint: str, status: str) -> dict[str, str]:
    return {"protocol": protocol, "endpoint": endpoint, "model": "digits", "status": status}


def _refused_http(c: httpx.Client, case: str) -> int:
    if case == "bad_input":  # a shape the model does not take
        return c.post("/v2/models/digits/infer", json=http_json(pixels(1)[:, :, :27])).status_code
    if case == "too_many":  # 65 items > max_batch_images (64), under the body cap in binary
        x = np.zeros((65, 1, 28, 28), np.uint8)
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "UINT8",
                        "shape": list(x.shape),
                        "parameters": {"binary_data_size": x.nbytes},
                    }
                ]
            }
        ).encode()
        return c.post(
            "/v2/models/digits/infer",
            content=header + x.tobytes(),
            headers={"Inference-Header-Content-Length": str(len(header))},
        ).status_code
    if case == "too_large":
        return c.post("/v2/models/digits/infer", content=b"{" * (CAP + 1)).status_code
    assert case == "bad_image"
    return c.post(
        "/predict", content=b"not an image", headers={"content-type": "image/png"}
    ).status_code


def _refused_grpc(stub, case: str) -> grpc.StatusCode:
    if case == "bad_input":
        req = grpc_request(pixels(1)[:, :, :27])
    elif case == "too_many":
        req = grpc_request(np.zeros((65, 1, 28, 28), np.uint8))
    elif case == "too_large":
        req = grpc_request(np.zeros((1, 1, 28, CAP // 28 + 28), np.uint8))  # over the cap
    else:
        req = pb.ModelInferRequest(model_name="digits")
        t = req.inputs.add(name="input", datatype="BYTES", shape=[1])
        t.contents.bytes_contents.append(b"not an image")
    with pytest.raises(grpc.RpcError) as e:
        stub.ModelInfer(req, timeout=30)
    return e.value.code()


@pytest.mark.parametrize(
    ("case", "http_status", "code"),
    [
        ("bad_input", 422, grpc.StatusCode.INVALID_ARGUMENT),
        ("too_many", 413, grpc.StatusCode.INVALID_ARGUMENT),
        ("too_large", 413, grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("bad_image", 400, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_a_refusal_counts_one_rejection_with_the_same_reason_over_both_protocols(
    srv, case, http_status, code
):
    """The same refusal over HTTP and then over gRPC: lcs_rejected_requests{reason} grows by
    exactly 1 each time, and no other reason moves."""
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        before = scrape(srv.url)
        assert _refused_http(c, case) == http_status
        mid = settled(srv.url, before, "lcs_rejected_requests_total", 1, reason=case)
        assert _refused_grpc(srv.stub, case) == code
        after = scrape(srv.url)
    for a, b in ((before, mid), (mid, after)):
        moved = {
            dict(k[1])["reason"]: b[k] - a.get(k, 0.0)
            for k in b
            if k[0] == "lcs_rejected_requests_total" and b[k] != a.get(k, 0.0)
        }
        assert moved == {case: 1.0}


def test_sigterm_drains_the_grpc_calls_in_flight_and_refuses_new_ones():
    """Its own daemon (SIGTERM ends it). Batches wait 300 ms to fill and never fill, so every
    call is accepted and waiting for that long: SIGTERM finds calls in flight. Each of them is
    answered correctly; later calls get UNAVAILABLE at once; the process exits 0."""
    port, clients = free_port(), 8
    env = {
        **BASE,
        "LCS_GRPC_PORT": str(port),
        "LCS_DRAIN_TIMEOUT_S": "20",
        "LCS_MAX_BATCH_SIZE": "1024",
        "LCS_MAX_BATCH_WAIT_MS": "300",
        "LCS_MAX_QUEUE": "4096",  # items: 8 calls of 32 images never fill it
    }
    x = pixels(32)
    with live_server(env) as s:
        r = httpx.post(s.url + "/v2/models/digits/infer", json=http_json(x), timeout=30)
        assert r.status_code == 200, r.text
        expected = http_probabilities(r.json())  # the same request, answered over HTTP first
        outcomes: list[tuple[str, float | str]] = []
        lock = threading.Lock()

        def client(_: int) -> None:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                for _ in range(400):  # bounded: ~120 s of calls; the drain ends it far sooner
                    try:
                        resp = stub.ModelInfer(grpc_request(x), timeout=30)
                        got = grpc_probabilities(resp)
                        outcome: tuple[str, float | str] = (
                            "OK",
                            float(np.abs(got - expected).max()),
                        )
                    except grpc.RpcError as e:
                        outcome = (e.code().name, str(e.details()))
                    with lock:
                        outcomes.append(outcome)
                    if outcome[0] != "OK":
                        return

        # SIGTERM once every client has had an answer or two
        code, log = s.sigterm_under_load(client, clients, lambda: len(outcomes) >= 2 * clients)
    assert code == 0, log[-2000:]
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:  # and once it has exited
        assert _refused_grpc_call(channel, x) == grpc.StatusCode.UNAVAILABLE
    ok = [o for o in outcomes if o[0] == "OK"]
    refused = [o for o in outcomes if o[0] != "OK"]
    assert len(refused) == clients, refused  # each client ended on a refusal, none ran out
    assert {o[0] for o in refused} == {"UNAVAILABLE"}, refused  # never INTERNAL or a hang
    assert ok and max(float(o[1]) for o in ok) < 1e-5  # every accepted call: the right answer
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    calls = [r for r in records if r.get("path") == INFER]
    # every call the daemon accepted and answered OK reached its client as that answer
    assert sum(r["status"] == "OK" for r in calls) == len(ok)
    drain = next(i for i, r in enumerate(records) if r.get("message") == "draining")
    after = [r for r in records[drain:] if r.get("path") == INFER]
    assert any(r["status"] == "OK" for r in after), "no call was in flight at SIGTERM"
    assert {r["status"] for r in after} <= {"OK", "UNAVAILABLE"}


def _refused_grpc_call(channel: grpc.Channel, x: np.ndarray) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(grpc_request(x), timeout=10)
    return e.value.code()


def test_http_counts_not_ready_on_the_inference_routes_as_grpc_does():
    """In process: while draining, /predict and OIP infer count reason="not_ready" once each
    (gRPC's ModelInfer does the same, test_grpc.py); readiness probes' 503s count nothing."""
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.settings import Settings

    settings = Settings(controller_enabled=False, tier2_enabled=False, torch_threads=1, grpc_port=0)
    with TestClient(create_app(settings)) as c:

        def not_ready() -> float:
            return _samples(c.get("/metrics").text).get(
                ("lcs_rejected_requests_total", frozenset({("reason", "not_ready")})), 0.0
            )

        x = pixels(1)
        assert c.post("/v2/models/digits/infer", json=http_json(x)).status_code == 200
        c.app.state.daemon.draining = True
        try:
            before = not_ready()
            assert c.get("/readyz").status_code == 503
            assert c.get("/v2/health/ready").status_code == 503
            assert c.get("/v2/models/digits/ready").status_code == 503
            assert not_ready() == before
            png = encode(x[0, 0])
            r = c.post("/predict", content=png, headers={"content-type": "image/png"})
            assert r.status_code == 503
            assert c.post("/v2/models/digits/infer", json=http_json(x)).status_code == 503
            assert not_ready() == before + 2
        finally:
            c.app.state.daemon.draining = False
