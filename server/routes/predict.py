"""POST /predict and /predict/batch: image bytes → tensor → model at the current level → top-k."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import torch
from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from server.daemon import Daemon
from server.errors import ServingError
from server.inference import Hints, Result
from server.preprocess import ImageError
from server.routes.deps import ReadyDep, ServingDep
from server.served import ServedModel

router = APIRouter(tags=["inference"])

IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
BATCH_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["files"],
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            }
        },
    }
}
TOP_K = 5  # classes returned by default
TopK = Annotated[int, Query(ge=1, le=1000, description="how many classes to return")]
MinAccuracy = Annotated[
    float | None, Query(ge=0, le=1, description="serve at a level at least this accurate")
]
MaxLatency = Annotated[
    float | None, Query(gt=0, le=600_000, description="serve at a level predicted this fast")
]
ModelName = Annotated[str, PathParam(examples=["digits"], max_length=64)]
ERRORS: dict[int | str, dict[str, Any]] = {s: {} for s in (400, 404, 413, 415, 422, 429, 503, 504)}


class Prediction(BaseModel):
    label: str
    index: int
    probability: float


class LevelInfo(BaseModel):
    gamma: float
    alpha: float
    family: str
    kind: str
    tier: str  # what ran the forward pass: "torch" (tier 1) or "onnx" (tier 2)
    precision: str = "fp32"  # "int8": tier 2's quantized variant of the width


class ModelInfo(BaseModel):
    name: str
    version: str  # 1, 2, … per name: which load of the model answered
    checksum: str
    arch: str


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    level: LevelInfo
    model: ModelInfo
    latency_ms: float
    timing_ms: dict[str, float]


class BatchItem(BaseModel):
    index: int
    filename: str | None = None
    result: PredictResponse | None = None
    error: str | None = None
    status: int = 200


class BatchResponse(BaseModel):
    results: list[BatchItem]


# Also served by server.routes.fast (raw image, no query), which calls predict_image().
@router.post("/predict", response_model=PredictResponse, openapi_extra=IMAGE_BODY, responses=ERRORS)
async def predict(
    request: Request,
    d: ServingDep,
    top_k: TopK = TOP_K,
    min_accuracy: MinAccuracy = None,
    max_latency_ms: MaxLatency = None,
) -> dict[str, Any]:
    """One image, the default model."""
    return await _predict(request, d, None, top_k, Hints(min_accuracy, max_latency_ms))


@router.post(
    "/models/{name}/predict",
    response_model=PredictResponse,
    openapi_extra=IMAGE_BODY,
    responses=ERRORS,
)
async def predict_model(
    request: Request,
    d: ServingDep,
    name: ModelName,
    top_k: TopK = TOP_K,
    min_accuracy: MinAccuracy = None,
    max_latency_ms: MaxLatency = None,
) -> dict[str, Any]:
    """One image, the model `name`."""
    return await _predict(request, d, name, top_k, Hints(min_accuracy, max_latency_ms))


@router.post(
    "/predict/batch", response_model=BatchResponse, openapi_extra=BATCH_BODY, responses=ERRORS
)
async def predict_batch(
    request: Request,
    d: ServingDep,
    top_k: TopK = TOP_K,
    min_accuracy: MinAccuracy = None,
    max_latency_ms: MaxLatency = None,
) -> BatchResponse:
    """Several images, the default model: one result or error each."""
    return await _batch(request, d, None, top_k, Hints(min_accuracy, max_latency_ms))


@router.post(
    "/models/{name}/predict/batch",
    response_model=BatchResponse,
    openapi_extra=BATCH_BODY,
    responses=ERRORS,
)
async def predict_batch_model(
    request: Request,
    d: ServingDep,
    name: ModelName,
    top_k: TopK = TOP_K,
    min_accuracy: MinAccuracy = None,
    max_latency_ms: MaxLatency = None,
) -> BatchResponse:
    """Several images, the model `name`: one result or error each."""
    return await _batch(request, d, name, top_k, Hints(min_accuracy, max_latency_ms))


async def _predict(
    request: Request, d: ReadyDep, name: str | None, top_k: int, hints: Hints
) -> dict[str, Any]:
    return await predict_image(request, d, name, top_k, hints, read_one_image)


async def predict_image(
    request: Request,
    d: Daemon,
    name: str | None,
    top_k: int,
    hints: Hints,
    read: Callable[[Request], Awaitable[bytes]],
) -> dict[str, Any]:
    """One encoded image, read by `read`, through the model `name` (None: the default), as
    PredictResponse's fields; also called by server.routes.fast for a raw-image /predict."""
    scope = request.scope
    received, deadline = time.perf_counter(), d.deadline(scope)
    d.registry.get(name)  # 404 before reading a body for a model that does not exist
    data = await read(request)
    # Resolved again after the read, and entered at once: a replacement that happened
    # meanwhile serves this request with the new version.
    model = d.registry.get(name)
    state = scope.setdefault("state", {})
    state["model"] = model.name
    (result,) = await model.service.predict_images([data], hints, deadline, received)
    state["level"] = result.level
    return respond(model, result, top_k, received)


async def _batch(
    request: Request, d: ReadyDep, name: str | None, top_k: int, hints: Hints
) -> BatchResponse:
    received, deadline = time.perf_counter(), d.deadline(request.scope)
    d.registry.get(name)
    uploads = await read_uploads(request, d.settings.max_batch_images)
    datas = [await up.read() for up in uploads]
    model = d.registry.get(name)
    request.state.model = model.name

    async def one(i: int, data: bytes) -> BatchItem:
        filename = uploads[i].filename
        try:
            (r,) = await model.service.predict_images([data], hints, deadline, received)
        except (ServingError, ImageError) as e:
            return BatchItem(index=i, filename=filename, error=str(e), status=e.status)
        result = PredictResponse.model_validate(respond(model, r, top_k, received))
        return BatchItem(index=i, filename=filename, result=result)

    return BatchResponse(
        results=list(await asyncio.gather(*(one(i, x) for i, x in enumerate(datas))))
    )


def media_type(content_type: str | None) -> str:
    """A Content-Type header's media type, lower-case, without parameters."""
    return (content_type or "").split(";")[0].strip().lower()


def is_raw_image(ctype: str) -> bool:
    """The media types /predict reads as the raw image body."""
    return ctype.startswith("image/") or ctype == "application/octet-stream"


async def read_body(request: Request) -> bytes:
    return await request.body()


async def read_one_image(request: Request) -> bytes:
    ctype = media_type(request.headers.get("content-type"))
    if ctype == "multipart/form-data":
        form = await _form(request, max_files=1)
        up = form.get("file")
        if not isinstance(up, UploadFile):
            raise HTTPException(422, "multipart field 'file' with an image is required")
        return await up.read()
    if is_raw_image(ctype):
        return await request.body()
    raise HTTPException(
        415,
        f"unsupported media type {ctype or '(none)'}: send multipart/form-"
        "data with a 'file' field, or the raw image with an image/* type",
    )


async def read_uploads(request: Request, limit: int) -> list[UploadFile]:
    ctype = media_type(request.headers.get("content-type"))
    if ctype != "multipart/form-data":
        raise HTTPException(415, "send the images as multipart/form-data fields named 'files'")
    form = await _form(request, max_files=limit)
    uploads = [
        u for k, u in form.multi_items() if k in ("files", "file") and isinstance(u, UploadFile)
    ]
    if not uploads:
        raise HTTPException(422, "multipart fields 'files' with images are required")
    return uploads


async def _form(request: Request, max_files: int) -> Any:
    from starlette.formparsers import MultiPartException

    try:
        return await request.form(max_files=max_files, max_fields=16)
    except MultiPartException as e:
        raise HTTPException(400, f"malformed multipart body: {e.message}") from None


def respond(model: ServedModel, r: Result, top_k: int, received: float) -> dict[str, Any]:
    """PredictResponse's fields, as plain data: the hot paths encode them with orjson
    (a model built and validated per request cost more than the encoding)."""
    probs, idx = torch.topk(r.probabilities, min(top_k, r.probabilities.numel()))
    names, level = model.meta.class_names, r.level
    seconds = time.perf_counter() - received
    return {
        "predictions": [
            {"label": names[i], "index": i, "probability": p}
            for p, i in zip(probs.tolist(), idx.tolist(), strict=True)
        ],
        "level": {
            "gamma": float(level.gamma),
            "alpha": float(level.alpha),
            "family": level.family,
            "kind": level.kind,
            "tier": r.tier,
            "precision": r.precision,
        },
        "model": model.identity(),
        "latency_ms": 1e3 * seconds,
        "timing_ms": {
            "decode": 1e3 * r.decode_s,
            "queue": 1e3 * r.queue_s,
            "forward": 1e3 * r.forward_s,
            "batch_size": float(r.batch_size),
        },
    }
