"""Every endpoint and every error status, in process; predictions checked against the model."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from server.app import create_app
from server.settings import Settings
from tests.helpers import digits, encode, reference_probabilities

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def client():
    settings = Settings(
        controller_enabled=False,
        torch_threads=1,
        operator_token=TOKEN,
        max_body_bytes=200_000,
        max_pixels=1_000_000,
    )
    with TestClient(create_app(settings)) as c:
        yield c


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def set_level(client, **body):
    r = client.put("/level", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("gamma", [1.0, 0.25])
def test_predict_matches_the_model_at_the_reported_level(client, gamma):
    set_level(client, mode="fixed", gamma=gamma)
    images, labels = digits(10)
    correct = 0
    for arr, label in zip(images, labels, strict=True):
        r = client.post(
            "/predict", files={"file": ("d.png", encode(arr), "image/png")}, params={"top_k": 3}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["level"]["gamma"] == pytest.approx(gamma)
        ref = reference_probabilities(arr, body["level"]["alpha"])
        top = body["predictions"]
        assert len(top) == 3 and top[0]["index"] == int(ref.argmax())
        assert top[0]["probability"] == pytest.approx(float(ref.max()), abs=1e-5)
        assert top[0]["label"] == str(top[0]["index"])
        correct += top[0]["index"] == label
    assert correct >= 9


def test_raw_body_and_formats(client):
    set_level(client, mode="fixed", gamma=1.0)
    arr = digits(1)[0][0]
    ref = int(reference_probabilities(arr, 1.0).argmax())
    for fmt, ctype in (
        ("PNG", "image/png"),
        ("BMP", "image/bmp"),
        ("GIF", "image/gif"),
        ("WEBP", "image/webp"),
        ("JPEG", "image/jpeg"),
    ):
        r = client.post(
            "/predict",
            content=encode(arr, fmt, "RGB" if fmt == "JPEG" else None),
            headers={"content-type": ctype},
        )
        assert r.status_code == 200, (fmt, r.text)
        assert r.json()["predictions"][0]["index"] == ref, fmt


def test_batch(client):
    images, _ = digits(4)
    files = [("files", (f"{i}.png", encode(a), "image/png")) for i, a in enumerate(images)]
    files.append(("files", ("bad.png", b"not an image", "image/png")))
    r = client.post("/predict/batch", files=files)
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["status"] for x in results] == [200, 200, 200, 200, 400]
    level = client.get("/level").json()
    for arr, res in zip(images, results, strict=False):
        ref = reference_probabilities(arr, res["result"]["level"]["alpha"])
        assert res["result"]["predictions"][0]["index"] == int(ref.argmax())
    assert "decode" in results[-1]["error"] and level["family"] == "structured"


@pytest.mark.parametrize(
    ("kwargs", "status", "needle"),
    [
        ({"content": b"", "headers": {"content-type": "image/png"}}, 400, "empty"),
        ({"content": b"GIF89a-truncated", "headers": {"content-type": "image/gif"}}, 400, "decode"),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "media type"),
        ({"content": b"x" * 300_000, "headers": {"content-type": "image/png"}}, 413, "limit"),
        ({"files": {"other": ("a.png", b"x", "image/png")}}, 422, "'file'"),
        (
            {"content": b"x", "headers": {"content-type": "image/png"}, "params": {"top_k": 0}},
            422,
            "top_k",
        ),
    ],
    ids=["empty", "truncated", "wrong-type", "too-large", "no-file-field", "bad-top-k"],
)
def test_client_errors(client, kwargs, status, needle):
    r = client.post("/predict", **kwargs)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


def test_pixel_cap(client):
    import numpy as np

    big = encode(np.zeros((1100, 1000), dtype=np.uint8))  # 1.1 Mpx > 1 Mpx cap, tiny PNG
    r = client.post("/predict", content=big, headers={"content-type": "image/png"})
    assert r.status_code == 413 and "pixels" in r.json()["error"]


def test_level_auth(client):
    body = {"mode": "fixed", "gamma": 0.5}
    assert client.put("/level", json=body).status_code == 401
    r = client.put("/level", json=body, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403 and TOKEN not in r.text
    assert client.put("/level", json=body, headers=AUTH).status_code == 200


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"mode": "fixed", "gamma": 0.1}, "[0.25, 1.0]"),
        ({"mode": "fixed"}, "exactly one"),
        ({"mode": "fixed", "gamma": 0.5, "alpha": 0.5}, "exactly one"),
        ({"mode": "sideways"}, "mode"),
        ({"mode": "auto", "min_gamma": 0.8, "max_gamma": 0.3}, "lower bound"),
    ],
)
def test_level_validation(client, body, needle):
    r = client.put("/level", json=body, headers=AUTH)
    assert r.status_code == 422 and needle in r.json()["error"], r.text


def test_get_level_describes_range_policy_and_profile(client):
    set_level(client, mode="fixed", alpha=0.5, reason="test")
    level = client.get("/level").json()
    assert level["alpha"] == 0.5 and level["gamma"] == pytest.approx(0.625)
    assert level["range"] == {"alpha": [0.0, 1.0], "gamma": [0.25, 1.0]}
    assert level["policy"]["mode"] == "fixed" and level["last_change"]["reason"] == "operator_fixed"
    profile = level["profile"]
    assert len(profile) == 7 and all(p["latency_ms"] > 0 for p in profile)
    from models.checkpoint import DEFAULT_CHECKPOINT, read_metadata

    meta, _ = read_metadata(DEFAULT_CHECKPOINT)
    stored = {round(r["alpha"], 4): r["accuracy"] for r in meta.accuracy}
    # the checkpoint's held-out figure at each profiled level (both grids have 7 levels)
    assert [p["accuracy"] for p in profile] == [stored[round(p["alpha"], 4)] for p in profile]
    auto = set_level(client, mode="auto", min_gamma=0.25, max_gamma=0.5)
    assert auto["policy"]["max_alpha"] == pytest.approx(0.333333, abs=1e-4)
    assert auto["alpha"] <= auto["policy"]["max_alpha"] + 1e-9  # bounds clamp at once


def test_health_and_metrics(client):
    assert client.get("/healthz").json() == {"status": "alive"}
    assert client.get("/readyz").json()["ready"] is True
    text = client.get("/metrics").text
    for name in (
        "lcs_requests_total",
        "lcs_request_duration_seconds_bucket",
        "lcs_gamma",
        "lcs_alpha",
        "lcs_level_changes_total",
        "lcs_recompress_duration_seconds",
        "lcs_model_info",
        "lcs_inference_duration_seconds",
        "lcs_batch_size",
        "lcs_queue_depth",
        "lcs_torch_threads 1.0",
    ):
        assert name in text, name


def test_oip_v2(client):
    assert client.get("/v2").json()["name"] == "lcs-serve"
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    meta = client.get("/v2/models/digits").json()
    assert meta["inputs"][0]["shape"] == [-1, 1, 28, 28]
    assert client.get("/v2/models/nope").status_code == 404
    set_level(client, mode="fixed", gamma=1.0)
    arr = digits(1)[0][0]
    ref = reference_probabilities(arr, 1.0)
    from models import checkpoint

    _, m, _ = checkpoint.load()
    x = (torch.from_numpy(arr).float() / 255 - m.mean[0]) / m.std[0]
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": [1, 1, 28, 28],
                "datatype": "FP32",
                "data": x.flatten().tolist(),
            }
        ]
    }
    r = client.post("/v2/models/digits/infer", json=body)
    assert r.status_code == 200, r.text
    probs = torch.tensor(r.json()["outputs"][0]["data"])
    assert torch.allclose(probs, ref, atol=1e-5)
    import base64

    b = {
        "inputs": [
            {
                "name": "image",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(encode(arr)).decode()],
            }
        ]
    }
    r = client.post("/v2/models/digits/infer", json=b)
    assert torch.allclose(torch.tensor(r.json()["outputs"][0]["data"]), ref, atol=1e-5)
    bad = {"inputs": [{"name": "input", "shape": [1, 3, 28, 28], "datatype": "FP32", "data": [0]}]}
    assert client.post("/v2/models/digits/infer", json=bad).status_code == 422


def test_openapi_documents_the_api(client):
    paths = client.get("/openapi.json").json()["paths"]
    for p in (
        "/predict",
        "/predict/batch",
        "/level",
        "/healthz",
        "/readyz",
        "/v2/models/{name}/infer",
    ):
        assert p in paths
    assert "image/*" in paths["/predict"]["post"]["requestBody"]["content"]


def test_not_ready_before_startup():
    app = create_app(Settings(controller_enabled=False, torch_threads=1))
    c = TestClient(app)  # no `with`: the lifespan (model load) has not run
    r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["reason"] == "starting"
    assert (
        c.post("/predict", content=b"x", headers={"content-type": "image/png"}).status_code == 503
    )
