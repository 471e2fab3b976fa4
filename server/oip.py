"""Open Inference Protocol v2 codec: JSON, binary-extension and gRPC tensors ⇄ one InferCall."""

from __future__ import annotations

import array
import base64
import binascii
import json
import math
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import orjson
import torch

# Triton's binary tensor extension: the JSON header's length, in bytes, before the tensors.
HEADER_LENGTH = "inference-header-content-length"
# Bodies at least this large are parsed on a worker thread, not on the event loop.
OFFLOAD_BYTES = 64 * 1024
MAX_ID_CHARS = 256
MAX_CLASSIFICATION = 1000

FLOATS: dict[str, np.dtype] = {
    "FP32": np.dtype("<f4"),
    "FP16": np.dtype("<f2"),
    "FP64": np.dtype("<f8"),
}
# Integer inputs are raw pixel values 0-255 (what numpy hands out for an image): the
# checkpoint's normalisation is applied to them, as to UINT8.
INTEGERS: dict[str, np.dtype] = {
    "UINT8": np.dtype("u1"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
}
DATATYPES = (*FLOATS, *INTEGERS, "BYTES")
OUTPUTS = ("probabilities", "labels")
SERVER_NAME, SERVER_VERSION = "lcs-serve", "0.2.0"
EXTENSIONS = ["binary_tensor_data", "classification", "model_repository"]


class OIPError(Exception):
    """A request the protocol refuses; `status` is its HTTP status (gRPC maps it by status)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class RequestedOutput:
    name: str  # "probabilities" or "labels"
    binary: bool | None = None  # None: the request's binary_data_output
    classification: int = 0  # top-k as "score:index:label" BYTES (Triton's extension); 0: off


@dataclass(frozen=True)
class InferCall:
    """One inference request, whatever the transport, ready for the InferenceService."""

    model_name: str | None
    request_id: str
    kind: Literal["tensor", "pixels", "images"]
    tensor: torch.Tensor | None  # (N, C, H, W): float32 (model input space) or uint8 pixels
    images: list[bytes]  # encoded images, for kind "images"
    outputs: tuple[RequestedOutput, ...]
    parameters: dict[str, Any] = field(default_factory=dict)  # the request's, carried through
    binary_output: bool = False  # parameters.binary_data_output
    min_accuracy: float | None = None  # per-request hints for the core's Hints
    max_latency_ms: float | None = None

    @property
    def batch(self) -> int:
        return len(self.images) if self.kind == "images" else int(self.tensor.shape[0])  # type: ignore[union-attr]


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: Literal["FP32", "BYTES"]
    shape: list[int]
    data: np.ndarray | list[bytes]  # FP32: flat float32 array; BYTES: flat list
    binary: bool = False


# ---- inputs


@dataclass(frozen=True)
class Limits:
    """What the model takes: [C, H, W] and the most items one request may hold."""

    input_size: tuple[int, ...]
    max_batch: int


def parse_http(
    body: bytes, header_length: str | None, limits: Limits, model_name: str | None = None
) -> InferCall:
    """A REST infer body: plain JSON (any or no content type) or Triton's binary extension."""
    if header_length is None:
        header, binary = body, b""
    else:
        if not re.fullmatch(r"[0-9]{1,12}", header_length.strip()):
            raise OIPError(
                400, f"Inference-Header-Content-Length {header_length[:32]!r} is not a byte count"
            )
        n = int(header_length)
        if n > len(body):
            raise OIPError(
                400, f"Inference-Header-Content-Length {n} exceeds the body's {len(body)} bytes"
            )
        header, binary = body[:n], body[n:]
    doc = _json(header)
    raw_inputs = _inputs(doc)
    chunks: list[bytes | None] = []
    at = 0
    view = memoryview(binary)
    for i, inp in enumerate(raw_inputs):
        size = inp.parameters.get("binary_data_size")
        if size is None:
            chunks.append(None)
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise OIPError(400, f"input {i}: binary_data_size must be a byte count")
        if at + size > len(binary):
            raise OIPError(
                400,
                f"input {i}: binary_data_size {size} runs past the body's "
                f"{len(binary)} bytes of tensor data",
            )
        chunks.append(bytes(view[at : at + size]))
        at += size
    if at != len(binary):
        raise OIPError(
            400,
            f"{len(binary) - at} bytes after the tensors' binary_data_size "
            "total: the lengths do not add up",
        )
    (inp,), (chunk,) = raw_inputs, chunks
    if chunk is not None:
        if "data" in inp.extra:
            raise OIPError(400, f"input {inp.name!r} has both data and binary_data_size")
        kind, tensor, images = decode_raw(inp, chunk, limits)
    else:
        if "data" not in inp.extra:
            raise OIPError(400, f"input {inp.name!r} has no data")
        kind, tensor, images = decode_values(inp, inp.extra["data"], limits, b64=True)
    params = _dict(doc.get("parameters"), "parameters")
    outputs = tuple(_output(o) for o in _list(doc.get("outputs"), "outputs"))
    return build_call(model_name, doc.get("id"), kind, tensor, images, outputs, params)


@dataclass(frozen=True)
class InputHeader:
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)  # "data", for JSON


def _json(raw: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        if _only_numbers_refused(raw):
            raise OIPError(
                422, "numbers must be finite and fit a double (no NaN, Infinity or 1e999)"
            ) from None
        raise OIPError(400, f"the request is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise OIPError(400, "the request must be a JSON object with 'inputs'")
    return doc


def _only_numbers_refused(raw: bytes) -> bool:
    """Whether JSON that orjson refused is well formed but for its numbers (NaN, Infinity,
    out of a double's range), which the stdlib parser accepts: then the numbers are the fault,
    a 422 as for any other value that does not fit, not malformed JSON (400). Error path only."""
    try:
        json.loads(raw)
    except (ValueError, RecursionError):
        return False
    return True


def _inputs(doc: dict[str, Any]) -> list[InputHeader]:
    items = _list(doc.get("inputs"), "inputs", 1)
    if len(items) != 1:
        raise OIPError(400, "exactly one input tensor is required (images or a tensor)")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise OIPError(400, f"input {i} must be an object")
        name, dt = item.get("name"), item.get("datatype")
        if not isinstance(name, str) or not isinstance(dt, str):
            raise OIPError(400, f"input {i} needs a string 'name' and 'datatype'")
        extra = {"data": item["data"]} if "data" in item else {}
        params = _dict(item.get("parameters"), f"input {name!r} parameters")
        out.append(InputHeader(name, dt, check_shape(item.get("shape"), name), params, extra))
    return out


def check_shape(v: Any, name: str) -> list[int]:
    if (
        not isinstance(v, list)
        or not 1 <= len(v) <= 8
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in v)
    ):
        raise OIPError(400, f"input {name!r}: shape must be a list of 1-8 non-negative integers")
    return v


def _list(v: Any, what: str, at_least: int = 0) -> list[Any]:
    if v is None:
        v = []
    if not isinstance(v, list) or len(v) > 64:
        raise OIPError(400, f"{what} must be a list")
    if len(v) < at_least:
        raise OIPError(400, f"{what} must hold at least {at_least} item")
    return v


def _dict(v: Any, what: str) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise OIPError(400, f"{what} must be an object")
    return v


def _output(o: Any) -> RequestedOutput:
    if not isinstance(o, dict) or not isinstance(o.get("name"), str):
        raise OIPError(400, "each requested output needs a string 'name'")
    return requested_output(o["name"], _dict(o.get("parameters"), "output parameters"))


def requested_output(name: str, params: dict[str, Any]) -> RequestedOutput:
    if name not in OUTPUTS:
        raise OIPError(400, f"unknown output {name!r}; this model gives {', '.join(OUTPUTS)}")
    binary = params.get("binary_data")
    if binary is not None and not isinstance(binary, bool):
        raise OIPError(400, f"output {name!r}: binary_data must be true or false")
    k = params.get("classification", 1 if name == "labels" else 0)
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_CLASSIFICATION:
        raise OIPError(400, f"output {name!r}: classification must be an integer 0-1000")
    if name == "labels" and k == 0:
        k = 1
    return RequestedOutput(name, binary, k)


def decode_raw(
    inp: InputHeader, raw: bytes, limits: Limits
) -> tuple[str, torch.Tensor | None, list[bytes]]:
    """Little-endian row-major elements (BYTES: each with a 4-byte length) → the call's input."""
    if inp.datatype == "BYTES":
        items = split_bytes(raw, inp.name)
        _check_bytes_shape(inp, len(items), limits)
        return "images", None, items
    dtype = _numeric(inp)
    count = _check_tensor_shape(inp, limits)
    if len(raw) != count * dtype.itemsize:
        raise OIPError(
            400,
            f"input {inp.name!r}: {len(raw)} bytes of {inp.datatype} data; "
            f"shape {inp.shape} needs {count * dtype.itemsize}",
        )
    return _tensor(inp, np.frombuffer(raw, dtype=dtype))


def decode_values(
    inp: InputHeader, data: Any, limits: Limits, b64: bool
) -> tuple[str, torch.Tensor | None, list[bytes]]:
    """JSON `data` (flat or nested lists) or gRPC typed contents → the call's input.
    BYTES elements are base64 strings in JSON (b64) and raw bytes in gRPC."""
    if inp.datatype == "BYTES":
        items = _flatten(data, inp.name)
        _check_bytes_shape(inp, len(items), limits)
        return "images", None, [_image_bytes(x, i, b64) for i, x in enumerate(items)]
    _numeric(inp)
    count = _check_tensor_shape(inp, limits)
    arr = _flat_floats(data) if inp.datatype in FLOATS else None
    if arr is None:
        try:
            arr = np.asarray(data)  # dtype inferred: strings and objects are refused below
        except (ValueError, TypeError):
            raise OIPError(
                400, f"input {inp.name!r}: data must be a flat or shape-nested list of numbers"
            ) from None
    if arr.dtype.kind not in "fiu":
        raise OIPError(422, f"input {inp.name!r}: {inp.datatype} data must hold numbers only")
    if arr.size != count:
        raise OIPError(
            422,
            f"input {inp.name!r}: data holds {arr.size} values; shape {inp.shape} needs {count}",
        )
    return _tensor(inp, arr.reshape(-1))


def _flat_floats(data: Any) -> np.ndarray | None:
    """A flat JSON list of numbers as float64, without numpy's type discovery (measured: a
    third of np.asarray's time for 784 floats). Only a list that starts with a float; any
    other (nested, strings, nulls, all bools) takes np.asarray's way and its refusals. The
    values are those np.asarray gives: a float64 array once a float is among them."""
    if type(data) is not list or not data or type(data[0]) is not float:
        return None
    try:
        return np.frombuffer(array.array("d", data), np.float64)
    except TypeError:  # a nested list, a string or a null further on
        return None


def _numeric(inp: InputHeader) -> np.dtype:
    dtype = FLOATS.get(inp.datatype) or INTEGERS.get(inp.datatype)
    if dtype is None:
        raise OIPError(
            422,
            f"input {inp.name!r}: datatype {inp.datatype!r} is not accepted; "
            f"use one of {', '.join(DATATYPES)}",
        )
    return dtype


def _check_tensor_shape(inp: InputHeader, limits: Limits) -> int:
    want = list(limits.input_size)
    s = inp.shape
    if len(s) != 4 or s[1:] != want:
        dims = ", ".join(map(str, want))
        raise OIPError(
            422, f"input {inp.name!r} ({inp.datatype}) must have shape [N, {dims}]; got {s}"
        )
    _check_batch(s[0], limits)
    return math.prod(s)


def _check_bytes_shape(inp: InputHeader, count: int, limits: Limits) -> None:
    s = inp.shape
    if not (len(s) == 1 or (len(s) == 2 and s[1] == 1)):
        raise OIPError(
            422,
            f"input {inp.name!r} (BYTES, encoded images) must have shape [N] or [N, 1]; got {s}",
        )
    _check_batch(s[0], limits)
    if count != s[0]:
        raise OIPError(422, f"input {inp.name!r}: {count} images; shape {s} needs {s[0]}")


def _check_batch(n: int, limits: Limits) -> None:
    if n < 1:
        raise OIPError(422, "the input holds no items")
    if n > limits.max_batch:
        raise OIPError(413, f"at most {limits.max_batch} items per request; got {n}")


def _tensor(inp: InputHeader, flat: np.ndarray) -> tuple[str, torch.Tensor, list[bytes]]:
    if inp.datatype in FLOATS:
        with np.errstate(over="ignore"):  # overflow → inf, refused just below
            x = flat.astype(np.float32)  # a copy: writable, detached from the request's buffer
        if not np.isfinite(x).all():
            raise OIPError(
                422,
                f"input {inp.name!r}: values must be finite (no NaN or inf, and "
                "within FP32's range)",
            )
        return "tensor", torch.from_numpy(x.reshape(inp.shape)), []
    if flat.dtype.kind == "f" and not (np.isfinite(flat).all() and (flat == np.round(flat)).all()):
        raise OIPError(422, f"input {inp.name!r}: {inp.datatype} data must be whole numbers")
    if flat.size and (flat.min() < 0 or flat.max() > 255):
        raise OIPError(422, f"input {inp.name!r}: integer inputs are raw pixel values 0-255")
    x = flat.astype(np.uint8)
    return "pixels", torch.from_numpy(x.reshape(inp.shape)), []


def _flatten(data: Any, name: str) -> list[Any]:
    if not isinstance(data, list | tuple):
        raise OIPError(400, f"input {name!r}: data must be a list")
    out: list[Any] = []
    for x in data:
        if isinstance(x, list):  # shape [N, 1]
            out.extend(x)
        else:
            out.append(x)
    return out


def _image_bytes(x: Any, i: int, b64: bool) -> bytes:
    if isinstance(x, bytes):
        return x
    if b64 and isinstance(x, str):
        try:
            return base64.b64decode(x, validate=True)
        except (binascii.Error, ValueError):
            pass
    raise OIPError(400, f"image {i} is not base64-encoded image bytes")


def split_bytes(raw: bytes, name: str) -> list[bytes]:
    """Triton's BYTES serialisation: each element a 4-byte little-endian length, then data."""
    out, at, view = [], 0, memoryview(raw)
    while at < len(raw):
        if at + 4 > len(raw):
            raise OIPError(400, f"input {name!r}: BYTES data ends inside an element's length")
        (n,) = struct.unpack_from("<I", raw, at)
        at += 4
        if at + n > len(raw):
            raise OIPError(
                400,
                f"input {name!r}: a BYTES element of {n} bytes runs past the "
                f"{len(raw)} bytes given",
            )
        out.append(bytes(view[at : at + n]))
        at += n
    return out


def join_bytes(items: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


_ID = re.compile(r"[\x20-\x7e]*")  # printable ASCII: safe to echo in JSON, headers and logs


def safe_id(rid: str) -> bool:
    return len(rid) <= MAX_ID_CHARS and _ID.fullmatch(rid) is not None


def build_call(
    model_name: str | None,
    request_id: Any,
    kind: str,
    tensor: torch.Tensor | None,
    images: list[bytes],
    outputs: tuple[RequestedOutput, ...],
    params: dict[str, Any],
) -> InferCall:
    """The checks every transport shares: request id, parameters, hints, outputs."""
    if request_id is None:
        request_id = ""
    if not isinstance(request_id, str) or not safe_id(request_id):
        raise OIPError(400, f"id must be printable ASCII of at most {MAX_ID_CHARS} characters")
    binary = params.get("binary_data_output", False)
    if not isinstance(binary, bool):
        raise OIPError(400, "parameters.binary_data_output must be true or false")
    hints = {k: _hint(params, k) for k in ("min_accuracy", "max_latency_ms")}
    names = [o.name for o in outputs]
    if len(set(names)) != len(names):
        raise OIPError(400, "an output is requested twice")
    return InferCall(
        model_name=model_name,
        request_id=request_id,
        kind=kind,  # type: ignore[arg-type]
        tensor=tensor,
        images=images,
        outputs=outputs or (RequestedOutput("probabilities"),),
        parameters=params,
        binary_output=binary,
        **hints,
    )


def _hint(params: dict[str, Any], key: str) -> float | None:
    v = params.get(key)
    if v is None:
        return None
    if isinstance(v, str):  # gRPC clients often send every parameter as a string
        try:
            v = float(v)
        except ValueError:
            raise OIPError(422, f"parameters.{key} must be a number") from None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
        raise OIPError(422, f"parameters.{key} must be a positive finite number")
    if key == "min_accuracy" and v > 1:
        raise OIPError(422, "parameters.min_accuracy is a fraction in (0, 1]")
    return float(v)


# ---- outputs


def outputs_for(
    call: InferCall, probs: np.ndarray, class_names: Sequence[str]
) -> list[OutputTensor]:
    """probs (N, classes) float32 → the requested output tensors."""
    out = []
    for o in call.outputs:
        binary = call.binary_output if o.binary is None else o.binary
        if o.classification:
            k = min(o.classification, probs.shape[1])
            top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
            labels = [
                f"{probs[r, c]:.6f}:{c}:{class_names[c]}".encode()
                for r in range(probs.shape[0])
                for c in top[r]
            ]
            out.append(OutputTensor(o.name, "BYTES", [probs.shape[0], k], labels, binary))
        else:
            flat = np.ascontiguousarray(probs, dtype=np.float32).reshape(-1)
            out.append(OutputTensor(o.name, "FP32", list(probs.shape), flat, binary))
    return out


def raw_bytes(t: OutputTensor) -> bytes:
    """An output's raw form: binary extension and gRPC raw_output_contents alike."""
    if t.datatype == "BYTES":
        return join_bytes(t.data)  # type: ignore[arg-type]
    return np.asarray(t.data, dtype="<f4").tobytes()


def encode_http(
    model_name: str,
    model_version: str,
    request_id: str,
    parameters: dict[str, Any],
    outputs: list[OutputTensor],
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: JSON, or JSON + binary tensors when any is binary."""
    items, blobs = [], []
    for t in outputs:
        item: dict[str, Any] = {"name": t.name, "datatype": t.datatype, "shape": t.shape}
        if t.binary:
            blob = raw_bytes(t)
            item["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        elif t.datatype == "BYTES":
            item["data"] = [bytes(b).decode() for b in t.data]
        else:
            item["data"] = t.data
        items.append(item)
    doc = {
        "model_name": model_name,
        "model_version": model_version,
        "id": request_id,
        "parameters": parameters,
        "outputs": items,
    }
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }


def response_parameters(
    levels: Sequence[Any], tiers: Sequence[str], precisions: Sequence[str] | None = None
) -> dict[str, Any]:
    """Which level α, γ, tier and precision served the request (the last item's; how many
    levels were used). Precision only when given: never reported as fp32 by default."""
    last = levels[-1]
    return {
        **({"precision": precisions[-1]} if precisions else {}),
        "alpha": float(last.alpha),
        "gamma": float(last.gamma),
        "family": str(last.family),
        "kind": str(last.kind),
        "tier": tiers[-1],
        "levels_used": len({float(lv.alpha) for lv in levels}),
    }


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


def model_metadata(
    name: str, version: str, input_size: Sequence[int], classes: int
) -> dict[str, Any]:
    """The model metadata both transports report: the inputs we accept, the outputs we give."""
    return {
        "name": name,
        "versions": [version],
        "platform": "pytorch_lcs",
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [-1, *input_size]},
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
            {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
        ],
    }
