"""A subset of the Open Inference Protocol v2, so standard clients (KServe, Triton) work."""

from __future__ import annotations

import asyncio
import base64
import binascii
import math
from typing import Annotated, Any, Literal

import torch
from fastapi import APIRouter, HTTPException
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from server.preprocess import ImageError
from server.routes.deps import ReadyDep, RuntimeDep
from server.routes.predict import infer
from server.runtime import Runtime

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])
# The bundled model's name, as the schema's example (clients and fuzzers start from it).
ModelName = Annotated[str, PathParam(examples=["small_cnn"], max_length=128)]


class InferInput(BaseModel):
    name: str
    shape: list[int] = Field(min_length=1, max_length=8)
    datatype: Literal["FP32", "BYTES"]
    data: list[Any] = Field(max_length=10_000_000)


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[InferInput] = Field(min_length=1, max_length=1)


@router.get("")
async def server_metadata() -> dict[str, Any]:
    return {"name": "lcs-serve", "version": "0.1.0", "extensions": []}


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", responses={503: {}})
async def ready(rt: ReadyDep) -> dict[str, bool]:
    return {"ready": True}


@router.get("/models/{name}", responses={404: {}})
async def model_metadata(name: ModelName, rt: RuntimeDep) -> dict[str, Any]:
    _check_name(rt, name)
    meta = rt.slot.meta
    return {
        "name": rt.model_name,
        "versions": ["1"],
        "platform": "pytorch",
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [-1, *meta.input_size]},
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, meta.num_classes]}],
        "parameters": {
            **rt.slot.current.describe(),
            "arch": meta.arch,
            "torch_threads": rt.threads,
            "class_names": meta.class_names,
        },
    }


@router.get("/models/{name}/ready", responses={404: {}, 503: {}})
async def model_ready(name: ModelName, rt: ReadyDep) -> dict[str, Any]:
    _check_name(rt, name)
    return {"name": rt.model_name, "ready": True}


@router.post(
    "/models/{name}/infer",
    responses={400: {}, 404: {}, 413: {}, 422: {}, 429: {}, 503: {}, 504: {}},
)
async def model_infer(name: ModelName, body: InferRequest, rt: ReadyDep) -> dict[str, Any]:
    _check_name(rt, name)
    images = _images(rt, body.inputs[0])
    results = await asyncio.gather(*(infer(rt, x) for x in images))  # they batch together
    probs = torch.stack([r.probabilities for r in results])
    levels = {r.level.alpha for r in results}
    tiers = sorted({r.tier for r in results})
    return {
        "model_name": rt.model_name,
        "model_version": "1",
        "id": body.id or "",
        "parameters": {
            **results[-1].level.describe(),
            "tier": results[-1].tier,
            "levels_used": len(levels),
            "tiers_used": tiers,
        },
        "outputs": [
            {
                "name": "probabilities",
                "datatype": "FP32",
                "shape": list(probs.shape),
                "data": probs.flatten().tolist(),
            }
        ],
    }


def _check_name(rt: Runtime, name: str) -> None:
    if name != rt.model_name:
        raise HTTPException(404, f"unknown model {name!r}; this server serves {rt.model_name!r}")


def _images(rt: Runtime, inp: InferInput) -> list[torch.Tensor]:
    if not inp.data:
        raise HTTPException(422, "the input holds no data")
    if inp.datatype == "BYTES":
        if len(inp.data) > rt.settings.max_batch_images:
            raise HTTPException(422, f"at most {rt.settings.max_batch_images} images per request")
        out = []
        for i, item in enumerate(inp.data):
            try:
                raw = base64.b64decode(str(item), validate=True)
                out.append(rt.preprocess(raw))
            except (binascii.Error, ValueError):
                raise HTTPException(400, f"input {i} is not base64-encoded image bytes") from None
            except ImageError as e:
                raise HTTPException(e.status, f"input {i}: {e}") from None
        return out
    want = list(rt.slot.meta.input_size)
    if len(inp.shape) != 4 or inp.shape[1:] != want or not 1 <= inp.shape[0] <= 1024:
        raise HTTPException(422, f"FP32 input must have shape [N, {', '.join(map(str, want))}]")
    if len(inp.data) != math.prod(inp.shape):
        raise HTTPException(
            422,
            f"data holds {len(inp.data)} values; shape {inp.shape} needs {math.prod(inp.shape)}",
        )
    try:
        x = torch.tensor(inp.data, dtype=torch.float32).view(inp.shape)
    except (TypeError, ValueError):
        raise HTTPException(422, "FP32 data must be a flat list of numbers") from None
    if not torch.isfinite(x).all():
        raise HTTPException(422, "FP32 data must be finite")
    return list(x)
