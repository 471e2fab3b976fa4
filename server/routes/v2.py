"""The Open Inference Protocol v2 over HTTP, and Triton's model-repository extension."""

from __future__ import annotations

import logging
import math
import time
from typing import Annotated, Any, Literal

import torch
from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, Field

from server.inference import Hints, Result
from server.routes.deps import DaemonDep, OperatorDep, ReadyDep
from server.served import ServedModel

# Clients such as tritonclient send JSON without a content type: accept it.
router = APIRouter(prefix="/v2", tags=["open inference protocol v2"], strict_content_type=False)
log = logging.getLogger("lcs.server")
# The bundled model's name, as the schema's example (clients and fuzzers start from it).
ModelName = Annotated[str, PathParam(examples=["digits"], max_length=64)]
VERSION = "0.2.0"
EXTENSIONS = ["model_repository"]


class InferInput(BaseModel):
    name: str
    shape: list[int] = Field(min_length=1, max_length=8)
    datatype: Literal["FP32", "BYTES"]
    data: list[Any] = Field(max_length=10_000_000)


class InferRequest(BaseModel):
    id: str | None = None
    inputs: list[InferInput] = Field(min_length=1, max_length=1)
    parameters: dict[str, Any] = {}


class RepositoryIndexRequest(BaseModel):
    ready: bool = False


class LoadRequest(BaseModel):
    parameters: dict[str, Any] = {}


@router.get("")
async def server_metadata() -> dict[str, Any]:
    return {"name": "lcs-serve", "version": VERSION, "extensions": EXTENSIONS}


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", responses={503: {}})
async def ready(d: ReadyDep) -> dict[str, bool]:
    return {"ready": True}


@router.get("/models/{name}", responses={404: {}})
async def model_metadata(name: ModelName, d: DaemonDep) -> dict[str, Any]:
    return metadata(d.registry.get(name))


@router.get("/models/{name}/versions/{version}", responses={404: {}})
async def model_version_metadata(name: ModelName, version: str, d: DaemonDep) -> dict[str, Any]:
    return metadata(_versioned(d, name, version))


@router.get("/models/{name}/ready", responses={404: {}, 503: {}})
async def model_ready(name: ModelName, d: ReadyDep) -> dict[str, Any]:
    return {"name": d.registry.get(name).name, "ready": True}


@router.post(
    "/models/{name}/infer",
    responses={s: {} for s in (400, 404, 413, 422, 429, 503, 504)},
)
async def model_infer(
    request: Request, name: ModelName, body: InferRequest, d: ReadyDep
) -> dict[str, Any]:
    return await _infer(request, d, d.registry.get(name).name, body)


@router.post(
    "/models/{name}/versions/{version}/infer",
    responses={s: {} for s in (400, 404, 413, 422, 429, 503, 504)},
)
async def model_version_infer(
    request: Request, name: ModelName, version: str, body: InferRequest, d: ReadyDep
) -> dict[str, Any]:
    return await _infer(request, d, _versioned(d, name, version).name, body)


@router.post("/repository/index")
async def repository_index(d: DaemonDep, body: RepositoryIndexRequest | None = None) -> list[Any]:
    rows = d.registry.index()
    return [r for r in rows if r["state"] == "READY"] if body and body.ready else rows


@router.get("/repository/index")
async def repository_index_get(d: DaemonDep) -> list[Any]:
    return d.registry.index()


@router.post("/repository/models/{name}/load", responses={s: {} for s in (400, 401, 403, 422, 507)})
async def repository_load(
    name: ModelName, d: DaemonDep, who: OperatorDep, body: LoadRequest | None = None
) -> dict[str, Any]:
    """Load a model, or replace one of that name (no failed request while it happens)."""
    params = body.parameters if body else {}
    file = params.get("checkpoint")
    if file is not None and not isinstance(file, str):
        raise HTTPException(422, "parameters.checkpoint must be a file name in the repository")
    why = str(params.get("reason", ""))[:200]
    model = await d.registry.load(name, file, who=who, why=why)
    return {"name": model.name, "version": str(model.version), "state": "READY"}


@router.post("/repository/models/{name}/unload", responses={s: {} for s in (401, 403, 404, 422)})
async def repository_unload(
    name: ModelName, d: DaemonDep, who: OperatorDep, body: LoadRequest | None = None
) -> dict[str, Any]:
    """Unload: its requests finish, then it is freed; later requests get 404."""
    why = str((body.parameters if body else {}).get("reason", ""))[:200]
    await d.registry.unload(name, who=who, why=why)
    return {"name": name, "state": "UNAVAILABLE"}


def metadata(model: ServedModel) -> dict[str, Any]:
    meta = model.meta
    return {
        "name": model.name,
        "versions": [str(model.version)],
        "platform": "pytorch",
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [-1, *meta.input_size]},
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, meta.num_classes]}],
        "parameters": {
            **model.level.current.describe(),
            "arch": meta.arch,
            "checksum": model.checksum[:16],
            "class_names": meta.class_names,
            "accuracy": [{"gamma": r["gamma"], "accuracy": r["accuracy"]} for r in meta.accuracy],
        },
    }


def _versioned(d: DaemonDep, name: str, version: str) -> ServedModel:
    model = d.registry.get(name)
    if version != str(model.version):
        raise HTTPException(
            404, f"model {name!r} has no version {version!r}; serving version {model.version}"
        )
    return model


async def _infer(request: Request, d: DaemonDep, name: str, body: InferRequest) -> dict[str, Any]:
    received, deadline = time.perf_counter(), d.deadline()
    inp = body.inputs[0]
    if not inp.data:
        raise HTTPException(422, "the input holds no data")
    hints = Hints(
        _number(body.parameters, "min_accuracy"), _number(body.parameters, "max_latency_ms")
    )
    model = d.registry.get(name)
    request.state.model = model.name
    if inp.datatype == "BYTES":
        images = [_base64(i, item) for i, item in enumerate(inp.data)]
        results = await model.service.predict_images(images, hints, deadline, received)
    else:
        x = _tensor(model, inp)
        results = await model.service.predict_tensor(x, hints, deadline, received)
    request.state.level = results[-1].level
    return _response(model, body, results)


def _number(params: dict[str, Any], key: str) -> float | None:
    v = params.get(key)
    if v is None:
        return None
    if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
        raise HTTPException(422, f"parameters.{key} must be a finite number")
    return float(v)


def _base64(i: int, item: Any) -> bytes:
    import base64
    import binascii

    try:
        return base64.b64decode(str(item), validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(400, f"input {i} is not base64-encoded image bytes") from None


def _tensor(model: ServedModel, inp: InferInput) -> torch.Tensor:
    want = list(model.meta.input_size)
    if len(inp.shape) != 4 or inp.shape[1:] != want or inp.shape[0] < 1:
        raise HTTPException(422, f"FP32 input must have shape [N, {', '.join(map(str, want))}]")
    if len(inp.data) != math.prod(inp.shape):
        raise HTTPException(
            422,
            f"data holds {len(inp.data)} values; shape {inp.shape} needs {math.prod(inp.shape)}",
        )
    try:
        x = torch.tensor(inp.data, dtype=torch.float32).view(inp.shape)
    except (TypeError, ValueError, OverflowError, RuntimeError):
        raise HTTPException(422, "FP32 data must be a flat list of numbers") from None
    if not torch.isfinite(x).all():
        raise HTTPException(422, "FP32 data must be finite")
    return x


def _response(model: ServedModel, body: InferRequest, results: list[Result]) -> dict[str, Any]:
    probs = torch.stack([r.probabilities for r in results])
    return {
        "model_name": model.name,
        "model_version": str(model.version),
        "id": body.id or "",
        "parameters": {
            **results[-1].level.describe(),
            "tier": results[-1].tier,
            "levels_used": len({r.level.alpha for r in results}),
            "tiers_used": sorted({r.tier for r in results}),
            "checksum": model.checksum[:16],
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
