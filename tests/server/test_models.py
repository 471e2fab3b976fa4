"""Several models in one daemon: each answers as itself, levels move apart, the repository API."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from models import checkpoint
from server.app import create_app
from server.settings import Settings
from tests.helpers import ROOT, digits, encode, reference_probabilities

TOKEN = "models-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WEIGHTS = ROOT / "models" / "weights"
FILES = {
    "digits": WEIGHTS / "digits_structured_point.safetensors",
    "unstructured": WEIGHTS / "digits_unstructured_point.safetensors",
    "quantization": WEIGHTS / "digits_quantization_point.safetensors",
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repository")
    for name, src in FILES.items():
        shutil.copy(src, root / f"{name}.safetensors")
    outside = tmp_path_factory.mktemp("outside")
    shutil.copy(FILES["digits"], outside / "secret.safetensors")
    # Below the top level: the daemon loads every top-level file at start, and a bad one
    # stops the start (as Triton's exit-on-error does).
    (root / "bad").mkdir()
    (root / "bad" / "escape.safetensors").symlink_to(outside / "secret.safetensors")
    (root / "bad" / "broken.safetensors").write_bytes(b"\x00" * 64 + b"not a checkpoint")
    data = FILES["digits"].read_bytes()
    (root / "bad" / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    return root


@pytest.fixture(scope="module")
def client(repo):
    settings = Settings(
        model_repository=repo,
        default_model="digits",
        controller_enabled=False,
        tier2_enabled=False,
        torch_threads=1,
        operator_token=TOKEN,
        profile_levels=3,
    )
    with TestClient(create_app(settings)) as c:
        yield c


def predict(client, name: str, arr) -> dict:
    r = client.post(
        f"/models/{name}/predict", content=encode(arr), headers={"content-type": "image/png"}
    )
    assert r.status_code == 200, r.text
    return r.json()


def checksum(path: Path) -> str:
    return checkpoint.read_metadata(path)[1][:16]


def test_every_model_answers_with_its_own_network(client, repo):
    images, _ = digits(4)
    for name in ("digits", "unstructured", "quantization"):
        for arr in images:
            body = predict(client, name, arr)
            assert body["model"]["name"] == name
            assert body["model"]["checksum"] == checksum(repo / f"{name}.safetensors")
            ref = reference_probabilities(arr, body["level"]["alpha"], repo / f"{name}.safetensors")
            top = body["predictions"][0]
            assert top["index"] == int(ref.argmax())
            assert top["probability"] == pytest.approx(float(ref.max()), abs=1e-5)
    assert client.post("/predict", content=encode(images[0]), headers={
        "content-type": "image/png"}).json()["model"]["name"] == "digits"  # fmt: skip


def test_levels_move_independently(client):
    before = {n: client.get(f"/models/{n}/level").json()["alpha"] for n in FILES}
    r = client.put("/models/unstructured/level", json={"mode": "fixed", "gamma": 0.9}, headers=AUTH)
    assert r.status_code == 200, r.text
    after = {n: client.get(f"/models/{n}/level").json() for n in FILES}
    assert after["unstructured"]["gamma"] == pytest.approx(0.9)
    assert after["digits"]["alpha"] == before["digits"]
    assert after["quantization"]["alpha"] == before["quantization"]
    body = predict(client, "unstructured", digits(1)[0][0])
    assert body["level"]["gamma"] == pytest.approx(0.9)
    client.put("/models/unstructured/level", json={"mode": "auto"}, headers=AUTH)


def test_unknown_model_is_404_naming_the_models_and_creates_no_series(client):
    png = encode(digits(1)[0][0])
    for r in (
        client.post("/models/nope/predict", content=png, headers={"content-type": "image/png"}),
        client.get("/models/nope/level"),
        client.get("/v2/models/nope"),
    ):
        assert r.status_code == 404
        assert "'digits'" in r.json()["error"] and "'quantization'" in r.json()["error"]
    assert 'model="nope"' not in client.get("/metrics").text


def test_repository_index_lists_every_model_with_its_state(client):
    rows = {r["name"]: r for r in client.post("/v2/repository/index", json={}).json()}
    for name in FILES:
        assert rows[name]["state"] == "READY" and rows[name]["version"]
    assert client.get("/v2/repository/index").json() == client.post("/v2/repository/index").json()


def test_load_replaces_a_model_and_its_answers_follow(client, repo):
    arr = digits(1)[0][0]
    v = int(predict(client, "digits", arr)["model"]["version"])
    r = client.post(
        "/v2/repository/models/digits/load",
        json={"parameters": {"checkpoint": "quantization.safetensors", "reason": "test"}},
        headers=AUTH,
    )
    assert r.status_code == 200, r.text
    body = predict(client, "digits", arr)
    assert body["model"]["version"] == str(v + 1)
    assert body["model"]["checksum"] == checksum(repo / "quantization.safetensors")
    assert body["level"]["family"] == "quantization"
    ref = reference_probabilities(arr, body["level"]["alpha"], repo / "quantization.safetensors")
    assert body["predictions"][0]["probability"] == pytest.approx(float(ref.max()), abs=1e-5)
    # With no body, a model is (re-)read from NAME.safetensors in the repository.
    assert client.post("/v2/repository/models/digits/load", headers=AUTH).status_code == 200
    body = predict(client, "digits", arr)
    assert body["model"]["version"] == str(v + 2)
    assert body["model"]["checksum"] == checksum(repo / "digits.safetensors")


def test_model_control_needs_the_operator_token(client):
    assert client.post("/v2/repository/models/digits/load").status_code == 401
    bad = {"Authorization": "Bearer wrong"}
    assert client.post("/v2/repository/models/digits/unload", headers=bad).status_code == 403


@pytest.mark.parametrize(
    "file", ["../outside/secret.safetensors", "/etc/passwd", "bad/escape.safetensors"]
)
def test_loads_outside_the_repository_are_forbidden(client, file):
    r = client.post(
        "/v2/repository/models/digits/load",
        json={"parameters": {"checkpoint": file}},
        headers=AUTH,
    )
    assert r.status_code == 403, r.text
    assert predict(client, "digits", digits(1)[0][0])["model"]["name"] == "digits"


@pytest.mark.parametrize("file", ["bad/broken.safetensors", "bad/truncated.safetensors"])
def test_a_bad_replacement_is_refused_and_the_old_version_keeps_serving(client, file):
    arr = digits(1)[0][0]
    before = predict(client, "digits", arr)["model"]
    r = client.post(
        "/v2/repository/models/digits/load",
        json={"parameters": {"checkpoint": file}},
        headers=AUTH,
    )
    assert r.status_code == 400 and file.split("/")[1] in r.json()["error"]
    assert "\n" not in r.json()["error"]
    assert predict(client, "digits", arr)["model"] == before


def test_unload_frees_the_model_and_later_requests_get_404(client):
    arr = digits(1)[0][0]
    predict(client, "quantization", arr)
    assert client.post("/v2/repository/models/quantization/unload", headers=AUTH).status_code == 200
    r = client.post(
        "/models/quantization/predict", content=encode(arr), headers={"content-type": "image/png"}
    )
    assert r.status_code == 404
    rows = {r["name"]: r for r in client.post("/v2/repository/index").json()}
    assert rows["quantization"]["state"] == "UNAVAILABLE"
    assert 'lcs_alpha{model="quantization"}' not in client.get("/metrics").text
    assert client.post("/v2/repository/models/quantization/load", headers=AUTH).status_code == 200
    assert predict(client, "quantization", arr)["model"]["version"] == "2"


def test_a_load_over_the_memory_budget_is_refused_and_nothing_is_disturbed(client):
    registry = client.app.state.daemon.registry
    arr = digits(1)[0][0]
    before = {n: predict(client, n, arr)["model"] for n in registry.names()}
    saved = registry.budget_bytes
    registry.budget_bytes = registry.resident_bytes() + 2**20  # 1 MB to spare
    try:
        r = client.post("/v2/repository/models/extra/load", headers=AUTH)
        assert r.status_code == 400  # no such file: checked before memory
        r = client.post(
            "/v2/repository/models/extra/load",
            json={"parameters": {"checkpoint": "unstructured.safetensors"}},
            headers=AUTH,
        )
        assert r.status_code == 507 and "budget" in r.json()["error"]
    finally:
        registry.budget_bytes = saved
    assert {n: predict(client, n, arr)["model"] for n in registry.names()} == before
    assert "extra" not in registry.names()


def test_settings_name_the_models_and_refuse_bad_lists(repo, tmp_path):
    s = Settings(model=[f"a={repo / 'digits.safetensors'}"], model_repository=repo)
    sources = s.model_sources()
    assert next(iter(sources)) == "a" and "unstructured" in sources
    assert Settings().model_sources() == {"digits": None}  # the bundled default model
    env = Settings(model="x=/m/x.safetensors,y=/m/y.safetensors")
    assert list(env.model_sources()) == ["x", "y"]
    for bad in (["noequals"], ["../a=/x"], ["a=/x", "a=/y"]):
        with pytest.raises(ValueError):
            Settings(model=bad).model_sources()
