"""The OIP v2 codec in process: bodies made by tritonclient itself, every refusal, the outputs."""

from __future__ import annotations

import base64
import json
import struct

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient

from server import oip

LIMITS = oip.Limits((1, 28, 28), 64)
NAMES = [str(i) for i in range(10)]


def triton_body(arr: np.ndarray, datatype: str, binary: bool, outputs=None, **kw):
    """The exact body and header length tritonclient.http sends for this tensor."""
    inp = httpclient.InferInput("input", list(arr.shape), datatype)
    inp.set_data_from_numpy(arr, binary_data=binary)
    body, length = httpclient.InferenceServerClient.generate_request_body(
        [inp], outputs=outputs, **kw
    )
    return body, None if length is None else str(length)


def parse(body, length=None):
    return oip.parse_http(body, length, LIMITS, "digits")


TYPES = [
    ("FP32", np.float32, "tensor"),
    ("FP16", np.float16, "tensor"),
    ("FP64", np.float64, "tensor"),
    ("UINT8", np.uint8, "pixels"),
    ("INT32", np.int32, "pixels"),
    ("INT64", np.int64, "pixels"),
]


@pytest.mark.parametrize(
    ("binary", "datatype", "np_type", "kind"),
    # tritonclient sends FP16 only as binary
    [(b, *t) for b in (True, False) for t in TYPES if b or t[0] != "FP16"],
)
def test_tritonclient_tensors_parse_to_the_same_values(binary, datatype, np_type, kind):
    rng = np.random.default_rng(0)
    if kind == "pixels":
        arr = rng.integers(0, 256, (3, 1, 28, 28)).astype(np_type)
    else:
        arr = rng.standard_normal((3, 1, 28, 28)).astype(np_type)
    call = parse(*triton_body(arr, datatype, binary, request_id="r-1"))
    assert call.kind == kind and call.request_id == "r-1" and call.batch == 3
    assert call.tensor is not None and tuple(call.tensor.shape) == (3, 1, 28, 28)
    want = arr.astype(np.float32) if kind == "tensor" else arr.astype(np.uint8)
    assert np.array_equal(call.tensor.numpy(), want)
    # tritonclient asks for binary outputs when it names none
    assert call.outputs == (oip.RequestedOutput("probabilities"),)
    assert call.binary_output is True


def test_bytes_images_binary_and_json():
    images = [b"\x89PNG-one", b"", b"GIF89a-three"]
    arr = np.array(images, dtype=np.object_)
    call = parse(*triton_body(arr, "BYTES", True))
    assert call.kind == "images" and call.images == images
    b64 = np.array([base64.b64encode(x) for x in images], dtype=np.object_)
    call = parse(*triton_body(b64, "BYTES", False))
    assert call.images == images


def test_nested_json_data_and_no_content_type_needed():
    x = np.arange(784, dtype=np.float32).reshape(1, 1, 28, 28) / 784
    body = orjson.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": x.tolist()}
            ],
            "parameters": {"min_accuracy": 0.9, "max_latency_ms": "20", "unknown": [1]},
            "outputs": [{"name": "labels", "parameters": {"classification": 3}}],
        }
    )
    call = parse(body)
    assert np.array_equal(call.tensor.numpy(), x)
    assert (call.min_accuracy, call.max_latency_ms) == (0.9, 20.0)
    assert call.parameters["unknown"] == [1]  # carried through, otherwise ignored
    assert call.outputs == (oip.RequestedOutput("labels", None, 3),)


def _json(inp: dict, **top) -> bytes:
    base = {"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28], "data": [0.0] * 784}
    return json.dumps({"inputs": [{**base, **inp}], **top}).encode()  # big ints too


FP32_HDR = orjson.dumps(
    {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": [1, 1, 28, 28],
                "parameters": {"binary_data_size": 3136},
            }
        ]
    }
)


@pytest.mark.parametrize(
    ("body", "length", "status", "needle"),
    [
        (b"{not json", None, 400, "not valid JSON"),
        (b"[1, 2]", None, 400, "JSON object"),
        (orjson.dumps({"inputs": []}), None, 400, "at least 1"),
        (orjson.dumps({"inputs": [{"name": "a"}, {"name": "b"}]}), None, 400, "exactly one"),
        (_json({"shape": [1, 3, 28, 28]}), None, 422, "[N, 1, 28, 28]"),
        (_json({"shape": [1, 1, 28, -28]}), None, 400, "non-negative"),
        (_json({"shape": [0, 1, 28, 28], "data": []}), None, 422, "no items"),
        (_json({"shape": [65, 1, 28, 28]}), None, 413, "at most 64"),
        (_json({"data": [0.0] * 783}), None, 422, "783 values"),
        (_json({"data": ["0.5"] * 784}), None, 422, "numbers only"),
        (_json({"data": [[0.0], 1.0]}), None, 400, "list of numbers"),
        (_json({"data": [1e39] * 784}), None, 422, "finite"),
        (
            b'{"inputs":[{"name":"i","datatype":"FP32","shape":[1],"data":[1e400]}]}',
            None,
            422,
            "finite",
        ),
        (b'{"inputs":[{"name":"i","data":[NaN]}]}', None, 422, "NaN"),
        (b'{"inputs":[{"name":"i","data":[-Infinity, 1]]}', None, 400, "not valid JSON"),
        (_json({"datatype": "INT64", "data": [256] * 784}), None, 422, "0-255"),
        (_json({"datatype": "INT64", "data": [2**64 - 1] * 784}), None, 422, "0-255"),
        (_json({"datatype": "INT64", "data": [2**70] * 784}), None, 422, "0-255"),
        (_json({"datatype": "UINT8", "data": [0.5] * 784}), None, 422, "whole numbers"),
        (_json({"datatype": "BOOL"}), None, 422, "not accepted"),
        (_json({"datatype": "BYTES", "shape": [1], "data": ["%%%"]}), None, 400, "base64"),
        (_json({"datatype": "BYTES", "shape": [2], "data": ["AA=="]}), None, 422, "1 images"),
        (_json({}, id="x" * 300), None, 400, "id must be"),
        (_json({}, id="bad\nid"), None, 400, "id must be"),
        (_json({}, outputs=[{"name": "logits"}]), None, 400, "unknown output"),
        (
            _json({}, outputs=[{"name": "labels", "parameters": {"classification": -1}}]),
            None,
            400,
            "classification",
        ),
        (_json({}, parameters={"min_accuracy": 2}), None, 422, "fraction"),
        (_json({}, parameters={"max_latency_ms": "soon"}), None, 422, "number"),
        (_json({}, parameters={"binary_data_output": "yes"}), None, 400, "true or false"),
        # Triton's binary extension: headers and lengths that lie
        (FP32_HDR + bytes(3136), "12abc", 400, "byte count"),
        (FP32_HDR + bytes(3136), "-5", 400, "byte count"),
        (FP32_HDR + bytes(3136), str(10**9), 400, "exceeds the body"),
        (FP32_HDR + bytes(3135), str(len(FP32_HDR)), 400, "runs past"),
        (FP32_HDR + bytes(3137), str(len(FP32_HDR)), 400, "do not add up"),
        (FP32_HDR + bytes(3136), str(len(FP32_HDR) - 1), 400, "JSON"),
        (FP32_HDR.replace(b"3136", b"3135") + bytes(3135), str(len(FP32_HDR)), 400, "3135 bytes"),
    ],
)
def test_refusals_are_clear(body, length, status, needle):
    with pytest.raises(oip.OIPError) as e:
        parse(body, length)
    assert e.value.status == status
    assert needle in e.value.message, e.value.message


def test_binary_nan_and_bytes_lengths_that_lie():
    nan = np.full((1, 1, 28, 28), np.nan, np.float32)
    with pytest.raises(oip.OIPError, match="finite"):
        parse(*triton_body(nan, "FP32", True))
    hdr = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "i",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": 8},
                }
            ]
        }
    )
    lying = struct.pack("<I", 100) + b"abcd"  # says 100 bytes, has 4
    with pytest.raises(oip.OIPError, match="runs past"):
        parse(hdr + lying, str(len(hdr)))
    with pytest.raises(oip.OIPError, match="inside an element's length"):
        parse(hdr + b"\x01\x00\x00\x00a\x02\x00\x00", str(len(hdr)))


def probabilities(n: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    p = rng.random((n, 10)).astype(np.float32)
    return p / p.sum(1, keepdims=True)


@pytest.mark.parametrize("binary", [True, False])
def test_responses_read_by_tritonclient(binary):
    probs = probabilities(4)
    outputs = [
        httpclient.InferRequestedOutput("probabilities", binary_data=binary),
        httpclient.InferRequestedOutput("labels", binary_data=binary, class_count=3),
    ]
    x = np.zeros((4, 1, 28, 28), np.float32)
    call = parse(*triton_body(x, "FP32", True, outputs=outputs))
    tensors = oip.outputs_for(call, probs, NAMES)
    params = {"alpha": 0.5, "gamma": 0.625, "tier": "torch"}
    body, headers = oip.encode_http("digits", "1", "req-7", params, tensors)
    length = headers.get("inference-header-content-length")
    assert (length is not None) == binary
    result = httpclient.InferenceServerClient.parse_response_body(
        body, header_length=None if length is None else int(length)
    )
    assert np.array_equal(result.as_numpy("probabilities"), probs)
    labels = result.as_numpy("labels")
    assert labels.shape == (4, 3)
    top = np.argsort(-probs, 1)[:, :3]
    for r in range(4):
        for j in range(3):
            v = labels[r, j]  # bytes from binary outputs, str from JSON
            score, idx, label = (v.decode() if isinstance(v, bytes) else v).split(":")
            assert int(idx) == top[r, j] and label == NAMES[top[r, j]]
            assert float(score) == pytest.approx(probs[r, top[r, j]], abs=1e-6)
    resp = result.get_response()
    assert resp["id"] == "req-7" and resp["parameters"]["gamma"] == 0.625


def test_bytes_roundtrip_and_metadata():
    items = [b"", b"a", bytes(range(256))]
    assert oip.split_bytes(oip.join_bytes(items), "x") == items
    meta = oip.model_metadata("digits", "3", [1, 28, 28], 10)
    assert meta["inputs"][0]["shape"] == [-1, 1, 28, 28] and meta["versions"] == ["3"]


def test_large_json_is_parsed_off_the_event_loop_by_the_real_app(monkeypatch):
    """64×1×28×28 FP32 as JSON (~1 MB) through POST /v2/models/digits/infer: parsed on the
    decode pool, answered with the model's own probabilities."""
    import threading

    import torch
    from fastapi.testclient import TestClient

    from models import LevelCompressor, checkpoint
    from server.app import create_app
    from server.settings import Settings

    threads: list[str] = []
    real = oip.parse_http

    def spy(*args):
        threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(oip, "parse_http", spy)
    settings = Settings(controller_enabled=False, tier2_enabled=False, torch_threads=1)
    x = np.random.default_rng(5).standard_normal((64, 1, 28, 28)).astype(np.float32)
    json_out = [httpclient.InferRequestedOutput("probabilities", binary_data=False)]
    with TestClient(create_app(settings)) as c:
        answers = []
        for arr in (x, x[:1]):
            r = c.post(
                "/v2/models/digits/infer", content=triton_body(arr, "FP32", False, json_out)[0]
            )
            assert r.status_code == 200, r.text
            answers.append(r.json())
    assert threads[0].startswith("lcs-decode") and not threads[1].startswith("lcs-decode")
    body = answers[0]
    net, _, _ = checkpoint.load()
    level = LevelCompressor(net)(body["parameters"]["alpha"])
    with torch.inference_mode():
        ref = torch.softmax(net(torch.from_numpy(x), level), 1).numpy()
    got = np.asarray(body["outputs"][0]["data"], np.float32).reshape(64, 10)
    np.testing.assert_allclose(got, ref, atol=1e-5)
