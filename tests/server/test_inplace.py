"""Requests answered in place (server.inplace) get the very answer the app gives, with the same
metrics and log lines; whatever the path cannot take goes to the app untouched, in order."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.helpers import LiveServer, digits, encode, live_server

pytestmark = pytest.mark.integration

ENV = {
    "LCS_CONTROLLER_ENABLED": "0",
    "LCS_TIER2_ENABLED": "0",  # tier 1 alone: both daemons compute bit for bit alike
    "LCS_INLINE_FORWARD_MAX_MS": "10",  # its passes are short enough to run inline
    "LCS_LOG_LEVEL": "info",
}
PNG = encode(digits(1)[0][0])
X = np.random.default_rng(5).random((1, 1, 28, 28), dtype=np.float32)
TENSOR = {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": X.ravel().tolist()}
INFER = json.dumps({"inputs": [TENSOR]}).encode()
HEADER = json.dumps(
    {
        "inputs": [{**{k: v for k, v in TENSOR.items() if k != "data"},
                    "parameters": {"binary_data_size": X.nbytes}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
).encode()  # fmt: skip
PNG_HEADERS = {"content-type": "image/png"}
# (path, body, headers): each answered in place once the daemon has seen a short pass.
TAKEN = [
    ("/predict", PNG, PNG_HEADERS),
    ("/predict", PNG, {"content-type": "application/octet-stream"}),
    ("/v2/models/digits/infer", INFER, {"content-type": "application/json"}),
    ("/v2/models/digits/infer", json.dumps({"id": "mine", "inputs": [TENSOR]}).encode(), {}),
    ("/v2/models/digits/versions/1/infer", INFER, {}),
    ("/v2/models/digits/infer", HEADER + X.tobytes(),
     {"inference-header-content-length": str(len(HEADER))}),
    ("/v2/models/digits/infer", json.dumps({"inputs": [{**TENSOR, "datatype": "UINT8",
     "data": (X.ravel() * 255).astype(int).tolist()}]}).encode(), {}),
]  # fmt: skip
# Requests the path hands to the app: errors, hints, a query, a long body, multipart.
HANDED_ON = [
    ("/predict", b"not an image", PNG_HEADERS),
    ("/predict", PNG[:100], PNG_HEADERS),
    ("/predict?top_k=2", PNG, PNG_HEADERS),
    ("/predict", PNG, {"content-type": "text/plain"}),
    ("/v2/models/nope/infer", INFER, {}),
    ("/v2/models/digits/versions/7/infer", INFER, {}),
    ("/v2/models/digits/infer", b"{not json", {}),
    ("/v2/models/digits/infer", json.dumps({"inputs": [TENSOR],
     "parameters": {"min_accuracy": 0.9}}).encode(), {}),
    ("/v2/models/digits/infer", INFER + b" " * 70_000, {}),
]  # fmt: skip
VARYING = ("latency_ms", "timing_ms")


@pytest.fixture(scope="module")
def daemons() -> Iterator[tuple[LiveServer, LiveServer]]:
    with live_server(ENV) as on, live_server({**ENV, "LCS_IN_PLACE": "0"}) as off:
        for url in (on.url, off.url):  # a pass seen, so the inline gate is open
            httpx.post(url + "/predict", content=PNG, headers=PNG_HEADERS)
        yield on, off


@pytest.fixture
def servers(daemons) -> tuple[str, str]:
    return daemons[0].url, daemons[1].url


def answer(url: str, path: str, body: bytes, headers: dict[str, str], rid: str) -> tuple:
    r = httpx.post(url + path, content=body, headers={**headers, "x-request-id": rid})
    names = ("content-type", "content-length", "x-request-id", "retry-after",
             "inference-header-content-length")  # fmt: skip
    kept = {k: r.headers.get(k) for k in names}
    if r.headers.get("content-type") == "application/json":
        doc = r.json()
        for k in VARYING:
            if isinstance(doc, dict) and k in doc:
                doc[k] = type(doc[k]).__name__
                kept["content-length"] = None  # its digits vary with the timings
        return r.status_code, kept, doc
    return r.status_code, kept, r.content


def in_place(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    line = next(x for x in text.splitlines() if x.startswith("lcs_requests_in_place_total"))
    return float(line.split()[-1])


def test_lone_requests_are_answered_in_place_exactly_as_the_app_answers_them(servers):
    on, off = servers
    before = in_place(on)
    for i, (path, body, headers) in enumerate(TAKEN * 3):
        here = answer(on, path, body, headers, f"r-{i}")
        there = answer(off, path, body, headers, f"r-{i}")
        assert here[0] == 200 and here == there, path
    taken = in_place(on) - before
    # every 16th lone request is the probe, which takes the inference thread (the app's path)
    assert len(TAKEN) * 3 - 2 <= taken <= len(TAKEN) * 3
    assert in_place(off) == 0


def test_requests_the_path_cannot_take_get_the_apps_answer(servers):
    on, off = servers
    before = in_place(on)
    for i, (path, body, headers) in enumerate(HANDED_ON):
        here = answer(on, path, body, headers, f"h-{i}")
        there = answer(off, path, body, headers, f"h-{i}")
        assert here == there, path
    assert in_place(on) == before


def test_metrics_and_log_lines_are_the_apps(daemons):
    on, off = daemons
    for d in daemons:
        for i, (path, body, headers) in enumerate(TAKEN):
            answer(d.url, path, body, headers, f"log-{i}")

    def series(d: LiveServer) -> list[str]:
        text = httpx.get(d.url + "/metrics").text
        names = (x.split(" ")[0] for x in text.splitlines() if x.startswith("lcs_requests_total"))
        return sorted(names)

    def lines(d: LiveServer) -> dict[str, dict]:
        docs = [json.loads(x) for x in d.output().splitlines() if x.startswith("{")]
        ours = [x for x in docs if x.get("message") == "request" and x["request_id"][:4] == "log-"]
        return {x["request_id"]: {k: v for k, v in x.items() if k not in ("time", "latency_ms")}
                for x in ours}  # fmt: skip

    assert series(on) == series(off)  # the same endpoint templates, models, statuses
    assert lines(on) == lines(off) and len(lines(on)) == len(TAKEN)


def test_pipelined_requests_are_answered_in_order(servers):
    on, _ = servers
    wire = b""
    for i, (path, body, headers) in enumerate([TAKEN[0], HANDED_ON[0], TAKEN[2], TAKEN[0]]):
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        wire += (f"POST {path} HTTP/1.1\r\nhost: x\r\nx-request-id: p-{i}\r\n{head}"
                 f"content-length: {len(body)}\r\n\r\n").encode() + body  # fmt: skip
    with socket.create_connection(("127.0.0.1", int(on.rsplit(":", 1)[1])), timeout=10) as s:
        s.sendall(wire)
        got = b""
        while got.count(b"x-request-id: ") < 4 or not _complete(got, 4):
            chunk = s.recv(65536)
            assert chunk, got
            got += chunk
    heads = [part for part in got.split(b"HTTP/1.1 ")[1:]]
    assert [h[:3] for h in heads] == [b"200", b"400", b"200", b"200"]
    assert [_rid(h) for h in heads] == ["p-0", "p-1", "p-2", "p-3"]


def _rid(response: bytes) -> str:
    return response.split(b"x-request-id: ")[1].split(b"\r\n")[0].decode()


def _complete(wire: bytes, n: int) -> bool:
    """Whether `wire` holds n whole responses (each framed by its content-length)."""
    rest = wire
    for _ in range(n):
        head, sep, body = rest.partition(b"\r\n\r\n")
        if not sep:
            return False
        length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
        if len(body) < length:
            return False
        rest = body[length:]
    return True


def test_sigterm_while_a_held_body_arrives_answers_it_then_exits_cleanly():
    with live_server(ENV) as srv:
        httpx.post(srv.url + "/predict", content=PNG, headers=PNG_HEADERS)
        port = int(srv.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: image/png\r\n"
                      b"content-length: %d\r\n\r\n" % len(PNG) + PNG[:100])  # fmt: skip
            time.sleep(0.2)
            srv.proc.send_signal(signal.SIGTERM)
            time.sleep(0.5)  # draining, and the connection asked to shut down
            s.sendall(PNG[100:])
            got = b""
            while chunk := s.recv(65536):  # read until the daemon closes the connection
                got += chunk
        assert got.startswith(b"HTTP/1.1 503"), got[:300]
        assert b"draining" in got
        assert srv.proc.wait(30) == 0
