"""The hot path (server.routes.fast) answers exactly as the FastAPI routes it stands in for."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.routes.fast import HotPath
from server.settings import Settings
from tests.helpers import digits, encode

PNG = encode(digits(1)[0][0])
X = np.random.default_rng(3).random((1, 1, 28, 28), dtype=np.float32)
INFER = {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                     "data": X.ravel().tolist()}]}  # fmt: skip
BINARY_HEADER = json.dumps(
    {
        "inputs": [
            {
                "name": "input",
                "shape": [1, 1, 28, 28],
                "datatype": "FP32",
                "parameters": {"binary_data_size": X.nbytes},
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }
).encode()
JSON = {"content-type": "application/json"}
# (method, path, body, headers): every answer the hot routes give, and requests they pass on.
CASES = [
    ("/v2/models/digits/infer", json.dumps(INFER).encode(), JSON),
    ("/v2/models/digits/infer", json.dumps({**INFER, "id": "abc"}).encode(), {}),
    (
        "/v2/models/digits/infer",
        BINARY_HEADER + X.tobytes(),
        {"inference-header-content-length": str(len(BINARY_HEADER))},
    ),
    ("/v2/models/digits/infer", b"{not json", JSON),
    ("/v2/models/digits/infer", b'{"inputs": [{"name": "x", "shape": [1], "data": [NaN]}]}', JSON),
    ("/v2/models/digits/infer", json.dumps({"inputs": []}).encode(), JSON),
    ("/v2/models/nope/infer", json.dumps(INFER).encode(), JSON),
    ("/v2/models/digits/versions/1/infer", json.dumps(INFER).encode(), JSON),
    ("/v2/models/digits/versions/9/infer", json.dumps(INFER).encode(), JSON),
    ("/v2/models/" + "n" * 65 + "/infer", json.dumps(INFER).encode(), JSON),
    ("/v2/models/digits/infer/", json.dumps(INFER).encode(), JSON),
    ("/predict", PNG, {"content-type": "image/png"}),
    ("/predict", PNG, {"content-type": "application/octet-stream"}),
    ("/predict", b"not an image", {"content-type": "image/png"}),
    ("/predict", PNG, {"content-type": "text/plain"}),
    ("/predict?top_k=2", PNG, {"content-type": "image/png"}),
]
VARYING = ("latency_ms", "timing_ms")  # /predict's own timings differ from call to call


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    settings = Settings(controller_enabled=False, tier2_enabled=False, torch_threads=1)
    with TestClient(create_app(settings)) as c:
        yield c


def answer(c: TestClient, path: str, body: bytes, headers: dict[str, str]) -> tuple:
    r = c.post(path, content=body, headers={**headers, "x-request-id": "rid-1"})
    kept = {k: r.headers.get(k) for k in ("content-type", "retry-after", "x-request-id",
                                          "inference-header-content-length")}  # fmt: skip
    if r.headers.get("content-type") == "application/json":
        doc = r.json()
        for k in VARYING:
            if isinstance(doc, dict) and k in doc:
                doc[k] = type(doc[k])
        return r.status_code, kept, doc
    return r.status_code, kept, r.content


def fastapi_only(monkeypatch: pytest.MonkeyPatch) -> None:
    async def passthrough(self, scope, receive, send):
        await self.app(scope, receive, send)

    monkeypatch.setattr(HotPath, "__call__", passthrough)


def served_here(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = HotPath._serve

    async def spy(self, scope, *args):
        seen.append(scope["path"])
        await real(self, scope, *args)

    monkeypatch.setattr(HotPath, "_serve", spy)
    return seen


@pytest.mark.parametrize(("path", "body", "headers"), CASES)
def test_same_answer_as_the_fastapi_route(client, monkeypatch, path, body, headers):
    with monkeypatch.context() as m:
        seen = served_here(m)
        hot = answer(client, path, body, headers)
    with monkeypatch.context() as m:
        fastapi_only(m)
        slow = answer(client, path, body, headers)
    assert hot == slow
    passed_on = "?" in path or "n" * 65 in path or "text/plain" in str(headers)
    # A trailing slash: FastAPI's redirect, then the hot path serves the redirected request.
    assert seen == ([] if passed_on else [path.rstrip("/")])


def test_not_ready_is_refused_and_counted_alike(client, monkeypatch):
    d = client.app.state.daemon

    def refused() -> float:
        registry = client.app.state.metrics.registry
        got = registry.get_sample_value("lcs_rejected_requests_total", {"reason": "not_ready"})
        return got or 0.0

    monkeypatch.setattr(d, "draining", True)
    before = refused()
    hot = answer(client, *CASES[0])
    with monkeypatch.context() as m:
        fastapi_only(m)
        slow = answer(client, *CASES[0])
    assert hot == slow and hot[0] == 503 and hot[1]["retry-after"] == "1"
    assert refused() == before + 2


def test_metrics_name_the_route_template(client):
    client.post("/v2/models/digits/infer", content=json.dumps(INFER).encode())
    text = client.get("/metrics").text
    assert (
        'lcs_requests_total{endpoint="/v2/models/{name}/infer",model="digits",'
        'protocol="http",status="200"}'
    ) in text
    client.post("/predict", content=PNG, headers={"content-type": "image/png"})
    assert (
        'endpoint="/predict",model="digits",protocol="http",status="200"'
        in client.get("/metrics").text
    )
