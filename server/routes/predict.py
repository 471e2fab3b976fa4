"""POST /predict and /predict/batch: image bytes → tensor → model at the current level → top-k."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import torch
from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel
from starlette.datastructures import UploadFile

from server.engine import DeadlineExceeded, QueueFull, Result
from server.preprocess import ImageError
from server.routes.deps import ReadyDep
from server.runtime import Runtime

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
TopK = Annotated[int, Query(ge=1, le=1000, description="how many classes to return")]


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


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    level: LevelInfo
    model: dict[str, str]
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


@router.post(
    "/predict",
    response_model=PredictResponse,
    openapi_extra=IMAGE_BODY,
    responses={400: {}, 413: {}, 415: {}, 422: {}, 429: {}, 503: {}, 504: {}},
)
async def predict(request: Request, rt: ReadyDep, top_k: TopK = 5) -> PredictResponse:
    start = time.perf_counter()
    data = await read_one_image(request)
    x, decode_s = await decode(rt, data)
    result = await infer(rt, x)
    request.state.level = result.level
    return respond(rt, result, top_k, start, decode_s)


@router.post(
    "/predict/batch",
    response_model=BatchResponse,
    openapi_extra=BATCH_BODY,
    responses={413: {}, 415: {}, 422: {}, 503: {}},
)
async def predict_batch(request: Request, rt: ReadyDep, top_k: TopK = 5) -> BatchResponse:
    start = time.perf_counter()
    uploads = await read_uploads(request, rt.settings.max_batch_images)

    async def one(i: int, up: UploadFile) -> BatchItem:
        try:
            x, decode_s = await decode(rt, await up.read())
            res = respond(rt, await infer(rt, x), top_k, start, decode_s)
            return BatchItem(index=i, filename=up.filename, result=res)
        except HTTPException as e:
            return BatchItem(
                index=i, filename=up.filename, error=str(e.detail), status=e.status_code
            )

    return BatchResponse(
        results=list(await asyncio.gather(*(one(i, u) for i, u in enumerate(uploads))))
    )


async def read_one_image(request: Request) -> bytes:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await _form(request, max_files=1)
        up = form.get("file")
        if not isinstance(up, UploadFile):
            raise HTTPException(422, "multipart field 'file' with an image is required")
        return await up.read()
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        return await request.body()
    raise HTTPException(
        415,
        f"unsupported media type {ctype or '(none)'}: send multipart/form-"
        "data with a 'file' field, or the raw image with an image/* type",
    )


async def read_uploads(request: Request, limit: int) -> list[UploadFile]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
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


async def decode(rt: Runtime, data: bytes) -> tuple[torch.Tensor, float]:
    """Header check, then the decoded bytes reserved from the decode budget, then the decode on
    the decode pool: never pixel work on the event loop."""
    from server.admission import BudgetBusy, DecodeBudget, DecodeDeadline, decode_admitted

    budget = getattr(rt, "decode_budget", None)
    if budget is None:  # the serving core (issue 15) makes this at start-up
        budget = DecodeBudget(rt.settings.decode_budget_bytes())
        rt.decode_budget = budget  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    deadline = time.monotonic() + rt.settings.request_timeout_s
    try:
        x = await decode_admitted(rt.decode_pool, rt.preprocess, budget, data, deadline)
    except ImageError as e:
        rt.metrics.rejected.labels("bad_image").inc()
        raise HTTPException(e.status, str(e)) from None
    except BudgetBusy as e:
        rt.metrics.rejected.labels("decode_budget").inc()
        raise HTTPException(429, str(e), headers={"Retry-After": str(e.retry_after_s)}) from None
    except DecodeDeadline as e:
        rt.metrics.rejected.labels("deadline").inc()
        raise HTTPException(504, str(e)) from None
    return x, time.perf_counter() - t0


async def infer(rt: Runtime, x: torch.Tensor) -> Result:
    if rt.draining:
        raise HTTPException(503, "not ready: draining for shutdown", headers={"Retry-After": "1"})
    try:
        result = await rt.engine.infer(x, rt.settings.request_timeout_s)
    except QueueFull:
        rt.metrics.rejected.labels("queue_full").inc()
        raise HTTPException(
            429,
            f"queue full ({rt.settings.max_queue} waiting); retry shortly",
            headers={"Retry-After": "1"},
        ) from None
    except DeadlineExceeded:
        rt.metrics.rejected.labels("deadline").inc()
        raise HTTPException(504, f"no result within {rt.settings.request_timeout_s} s") from None
    rt.metrics.queue_wait.observe(result.queue_s)
    return result


def respond(rt: Runtime, r: Result, top_k: int, start: float, decode_s: float) -> PredictResponse:
    probs, idx = torch.topk(r.probabilities, min(top_k, r.probabilities.numel()))
    names = rt.slot.meta.class_names
    seconds = time.perf_counter() - start
    rt.record_latency(seconds)
    return PredictResponse(
        predictions=[
            Prediction(label=names[i], index=i, probability=p)
            for p, i in zip(probs.tolist(), idx.tolist(), strict=True)
        ],
        level=LevelInfo(**r.level.describe(), tier=r.tier),
        model={"name": rt.model_name, "arch": rt.slot.meta.arch, "checksum": rt.slot.checksum[:16]},
        latency_ms=1e3 * seconds,
        timing_ms={
            "decode": 1e3 * decode_s,
            "queue": 1e3 * r.queue_s,
            "forward": 1e3 * r.forward_s,
            "batch_size": float(r.batch_size),
        },
    )
