"""Standard OIP clients, unchanged, against one live daemon: tritonclient (HTTP and gRPC, sync
and asyncio) and KServe's InferenceRESTClient / InferenceGRPCClient, on 100 held-out digits.

tritonclient.grpc and kserve both register protobuf names `inference.*` in the default pool, so
they cannot share a process: the tritonclient.grpc part runs this file as a script."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import sys
from types import SimpleNamespace

import numpy as np

TOKEN = "clients-s3cret"
N, CHUNK = 100, 50  # 100 digits, in requests of 50 (under max_batch_images)


def chunks(n: int = N):
    return [slice(i, min(i + CHUNK, n)) for i in range(0, n, CHUNK)]


# ---- the tritonclient.grpc part (runs in a subprocess: see the module docstring)


def grpc_script(grpc_addr: str, npz: str) -> dict:
    import tritonclient.grpc as grpcclient
    import tritonclient.grpc.aio as grpcaio
    from tritonclient.utils import InferenceServerException

    d = np.load(npz, allow_pickle=True)
    c = grpcclient.InferenceServerClient(grpc_addr)
    out: dict = {
        "live": c.is_server_live(),
        "ready": c.is_server_ready(),
        "model_ready": c.is_model_ready("digits"),
        "server": c.get_server_metadata(as_json=True),
        "model": c.get_model_metadata("digits", as_json=True),
        "index": c.get_model_repository_index(as_json=True).get("models", []),
    }

    def infer(kind: str) -> list[int]:
        preds: list[int] = []
        for s in chunks():
            if kind == "BYTES":
                arr = np.array(list(d["pngs"][s]), dtype=np.object_)
                inp = grpcclient.InferInput("image", [len(arr)], "BYTES")
            else:
                arr = d["fp32"][s] if kind == "FP32" else d["pixels"][s]
                inp = grpcclient.InferInput("input", list(arr.shape), kind)
            inp.set_data_from_numpy(arr)
            outs = [
                grpcclient.InferRequestedOutput("probabilities"),
                grpcclient.InferRequestedOutput("labels", class_count=2),
            ]
            r = c.infer("digits", [inp], outputs=outs, request_id=f"grpc-{kind}")
            assert r.get_response().id == f"grpc-{kind}"
            probs = r.as_numpy("probabilities")
            top = [int(v.split(b":")[1]) for v in r.as_numpy("labels")[:, 0]]
            assert top == probs.argmax(1).tolist()
            preds += top
        return preds

    for kind in ("FP32", "UINT8", "BYTES"):
        out[kind] = infer(kind)
    gamma = c.infer(
        "digits", [_grpc_input(grpcclient, d["fp32"][:1])], request_id="g"
    ).get_response(as_json=True)["parameters"]["gamma"]
    out["gamma"] = gamma.get("double_param")

    async def aio() -> list[int]:
        async with grpcaio.InferenceServerClient(grpc_addr) as a:
            assert await a.is_server_ready()
            preds: list[int] = []
            for s in chunks():
                r = await a.infer("digits", [_grpc_input(grpcaio, d["fp32"][s])])
                preds += r.as_numpy("probabilities").argmax(1).tolist()
            return preds

    out["aio_FP32"] = asyncio.run(aio())

    def code(f, *args, **kw) -> str:
        try:
            f(*args, **kw)
        except InferenceServerException as e:
            return str(e.status())
        return "OK"

    out["load_no_token"] = code(c.load_model, "spare")
    out["load_bad_token"] = code(c.load_model, "spare", headers={"authorization": "Bearer x"})
    auth = {"authorization": f"Bearer {TOKEN}"}
    c.unload_model("spare", headers=auth)
    out["after_unload"] = c.is_model_ready("spare")  # in the repository, not loaded
    out["unknown_model"] = code(c.infer, "nope", [_grpc_input(grpcclient, d["fp32"][:1])])
    c.load_model("spare", headers=auth)
    out["after_load"] = c.is_model_ready("spare")
    return out


def _grpc_input(mod, arr: np.ndarray):
    inp = mod.InferInput("input", list(arr.shape), "FP32")
    inp.set_data_from_numpy(arr)
    return inp


if __name__ == "__main__":
    print(json.dumps(grpc_script(sys.argv[1], sys.argv[2])))
    sys.exit(0)


# ---- the tests (pytest imports below the script part, so the script stays light)

import httpx  # noqa: E402
import pytest  # noqa: E402

from tests.helpers import ROOT, digits, encode, free_port, live_server  # noqa: E402


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    from models import checkpoint

    repo = tmp_path_factory.mktemp("repo")
    for name in ("digits", "spare"):
        shutil.copy(checkpoint.DEFAULT_CHECKPOINT, repo / f"{name}.safetensors")
    grpc_port = free_port()
    env = {
        "LCS_MODEL_REPOSITORY": str(repo),
        "LCS_DEFAULT_MODEL": "digits",
        "LCS_GRPC_PORT": str(grpc_port),
        "LCS_OPERATOR_TOKEN": TOKEN,
        "LCS_CONTROLLER_ENABLED": "false",  # one level throughout: predictions comparable
        "LCS_TIER2_ENABLED": "false",
    }
    with live_server(env) as s:
        s.grpc = f"127.0.0.1:{grpc_port}"
        yield s


@pytest.fixture(scope="module")
def data(srv, tmp_path_factory):
    """100 held-out digits as pixels, FP32 in model input space and PNG, with /predict's answers."""
    from models import checkpoint

    images, labels = digits(N)
    pixels = np.stack(images)[:, None].astype(np.uint8)
    _, meta, _ = checkpoint.load()
    fp32 = ((pixels.astype(np.float32) / 255 - meta.mean[0]) / meta.std[0]).astype(np.float32)
    pngs = [encode(a) for a in images]
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        predicted = []
        for p in pngs:
            r = c.post("/predict", content=p, headers={"content-type": "image/png"})
            assert r.status_code == 200, r.text
            predicted.append(r.json()["predictions"][0]["index"])
    npz = tmp_path_factory.mktemp("digits") / "digits.npz"
    np.savez(npz, pixels=pixels, fp32=fp32, pngs=np.array(pngs, dtype=object))
    return SimpleNamespace(
        pixels=pixels, fp32=fp32, pngs=pngs, labels=labels, predicted=predicted, npz=npz
    )


def accuracy(preds, labels) -> float:
    return float(np.mean(np.array(preds) == np.array(labels)))


def triton_input(mod, data, kind: str, s: slice, binary: bool):
    if kind == "BYTES":
        items = data.pngs[s] if binary else [base64.b64encode(p) for p in data.pngs[s]]
        inp = mod.InferInput("image", [len(items)], "BYTES")
        inp.set_data_from_numpy(np.array(items, dtype=np.object_), binary_data=binary)
        return inp
    arr = data.fp32[s] if kind == "FP32" else data.pixels[s]
    inp = mod.InferInput("input", list(arr.shape), kind)
    inp.set_data_from_numpy(arr, binary_data=binary)
    return inp


@pytest.mark.parametrize("binary", [True, False], ids=["binary-default", "binary_data=False"])
def test_tritonclient_http(srv, data, binary):
    import tritonclient.http as httpclient

    c = httpclient.InferenceServerClient(srv.url.removeprefix("http://"))
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("digits")
    assert c.get_server_metadata()["name"] == "lcs-serve"
    meta = c.get_model_metadata("digits")
    assert meta["inputs"][0]["shape"] == [-1, 1, 28, 28]
    names = {m["name"]: m["state"] for m in c.get_model_repository_index()}
    assert names["digits"] == "READY"
    for kind in ("FP32", "UINT8", "BYTES"):
        preds = []
        for s in chunks():
            inp = triton_input(httpclient, data, kind, s, binary)
            outs = None
            if not binary:  # the default (None) asks for binary outputs
                outs = [httpclient.InferRequestedOutput("probabilities", binary_data=False)]
            r = c.infer("digits", [inp], outputs=outs, headers={"X-Request-ID": f"rid-{kind}"})
            assert r.get_response()["id"] == f"rid-{kind}"  # X-Request-ID when no id
            preds += r.as_numpy("probabilities").argmax(1).tolist()
        assert preds == data.predicted, kind
    assert accuracy(data.predicted, data.labels) >= 0.9
    c.close()


def test_tritonclient_http_aio_and_classification(srv, data):
    import tritonclient.http.aio as httpaio

    async def run():
        async with httpaio.InferenceServerClient(srv.url.removeprefix("http://")) as c:
            assert await c.is_server_ready()
            preds = []
            for s in chunks():
                outs = [httpaio.InferRequestedOutput("probabilities", class_count=3)]
                r = await c.infer(
                    "digits",
                    [triton_input(httpaio, data, "FP32", s, True)],
                    outputs=outs,
                    request_id="aio",
                )
                top = r.as_numpy("probabilities")  # classification: "score:index:label"
                assert top.shape == (s.stop - s.start, 3)
                preds += [int(v.split(b":")[1]) for v in top[:, 0]]
            return preds

    assert asyncio.run(run()) == data.predicted


def test_tritonclient_grpc_and_grpc_aio(srv, data):
    r = subprocess.run(
        [sys.executable, __file__, srv.grpc, str(data.npz)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["live"] and out["ready"] and out["model_ready"]
    assert out["server"]["name"] == "lcs-serve"
    assert out["model"]["inputs"][0]["shape"] == ["-1", "1", "28", "28"]  # int64 as JSON strings
    assert {m["name"] for m in out["index"]} >= {"digits", "spare"}
    for kind in ("FP32", "UINT8", "BYTES", "aio_FP32"):
        assert out[kind] == data.predicted, kind
    assert 0.25 <= out["gamma"] <= 1.0
    assert out["load_no_token"] == "StatusCode.UNAUTHENTICATED"
    assert out["load_bad_token"] == "StatusCode.PERMISSION_DENIED"
    assert out["unknown_model"] == "StatusCode.NOT_FOUND"
    assert out["after_unload"] is False and out["after_load"] is True


def test_kserve_rest_and_grpc_clients(srv, data):
    from kserve import (
        InferenceGRPCClient,
        InferenceRESTClient,
        InferInput,
        InferRequest,
        RESTConfig,
    )

    def request(s: slice, binary: bool) -> InferRequest:
        inp = InferInput(name="input", shape=list(data.fp32[s].shape), datatype="FP32")
        inp.set_data_from_numpy(data.fp32[s], binary_data=binary)
        return InferRequest(model_name="digits", infer_inputs=[inp], request_id="ks")

    async def run():
        rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
        grpc_c = InferenceGRPCClient(srv.grpc, retries=0)
        got = {"rest-json": [], "rest-binary": [], "grpc": []}
        for s in chunks():
            for binary in (False, True):
                r = await rest.infer(srv.url, request(s, binary), model_name="digits")
                got[f"rest-{'binary' if binary else 'json'}"] += (
                    r.outputs[0].as_numpy().argmax(1).tolist()
                )
            r = await grpc_c.infer(request(s, False))
            got["grpc"] += r.outputs[0].as_numpy().argmax(1).tolist()
        await rest.close()
        await grpc_c.close()
        return got

    for name, preds in asyncio.run(run()).items():
        assert preds == data.predicted, name


LYING = (
    b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,1,28,28],'
    b'"parameters":{"binary_data_size":3136}}]}'
)


@pytest.mark.parametrize(
    ("body", "headers", "needle"),
    [
        (b'{"inputs": [', {}, "JSON"),
        (b"{}" + bytes(16), {"Inference-Header-Content-Length": "banana"}, "byte count"),
        (b"{}", {"Inference-Header-Content-Length": "999999"}, "exceeds"),
        (LYING + bytes(100), {"Inference-Header-Content-Length": str(len(LYING))}, "runs past"),
    ],
    ids=["truncated-json", "header-not-a-number", "header-too-long", "length-lies"],
)
def test_malformed_http_bodies_are_clean_400s(srv, body, headers, needle):
    r = httpx.post(f"{srv.url}/v2/models/digits/infer", content=body, headers=headers, timeout=10)
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]


def test_oversized_grpc_message_is_refused_cleanly(srv):
    import grpc

    from server.protocol import inference_pb2 as pb
    from server.protocol import inference_pb2_grpc as pb_grpc

    with grpc.insecure_channel(srv.grpc) as ch:
        stub = pb_grpc.GRPCInferenceServiceStub(ch)
        req = pb.ModelInferRequest(model_name="digits")
        req.inputs.add(name="input", datatype="FP32", shape=[64, 1, 28, 28])
        req.raw_input_contents.append(bytes(9 * 1024 * 1024))  # over the 8 MiB body cap
        with pytest.raises(grpc.RpcError) as e:
            stub.ModelInfer(req)
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.ServerLive(pb.ServerLiveRequest()).live


def test_grpc_calls_are_counted_like_http_requests(srv):
    text = httpx.get(f"{srv.url}/metrics", timeout=10).text
    line = next(
        (
            ln
            for ln in text.splitlines()
            if ln.startswith("lcs_requests_total{")
            and 'endpoint="/inference.GRPCInferenceService/ModelInfer"' in ln
            and 'model="digits"' in ln
            and 'status="OK"' in ln
        ),
        None,
    )
    assert line is not None, "no gRPC ModelInfer series"
    assert float(line.rsplit(" ", 1)[1]) >= 6  # the subprocess's and KServe's calls at least


def test_tritonclient_http_loads_and_unloads_with_the_operator_token(srv):
    """Model control through Triton's own HTTP client: load (a replacement, version +1) and
    unload with the token, refusals without it."""
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    auth = {"Authorization": f"Bearer {TOKEN}"}
    c = httpclient.InferenceServerClient(srv.url.removeprefix("http://"))
    with pytest.raises(InferenceServerException) as e:
        c.load_model("spare")
    assert "token" in str(e.value)
    before = {m["name"]: m for m in c.get_model_repository_index()}["spare"]
    c.load_model("spare", headers=auth)
    after = {m["name"]: m for m in c.get_model_repository_index()}["spare"]
    assert int(after["version"]) == int(before["version"]) + 1
    c.unload_model("spare", headers=auth)
    assert not c.is_model_ready("spare")
    assert {m["name"]: m for m in c.get_model_repository_index()}["spare"]["state"] != "READY"
    c.load_model("spare", headers=auth)
    assert c.is_model_ready("spare")
    c.close()
