"""The Open Inference Protocol v2 over HTTP, and Triton's model-repository extension."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any

import torch
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel
from starlette.types import Scope

from server import oip
from server.daemon import Daemon
from server.errors import rejection_reason
from server.grpc_server import run_call
from server.routes.deps import DaemonDep, OperatorDep, ReadyDep, ServingDep
from server.served import ServedModel

# Clients such as tritonclient send JSON without a content type: accept it.
router = APIRouter(prefix="/v2", tags=["open inference protocol v2"], strict_content_type=False)
log = logging.getLogger("lcs.server")
# The bundled model's name, as the schema's example (clients and fuzzers start from it).
ModelName = Annotated[str, PathParam(examples=["digits"], max_length=64)]

# The request body, for the schema only: the route reads the raw bytes itself, since Triton's
# binary tensor extension puts tensors after the JSON and tritonclient sends no content type.
INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string", "maxLength": oip.MAX_ID_CHARS},
                        "parameters": {"type": "object"},
                        "inputs": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": 1,
                            "items": {
                                "type": "object",
                                "required": ["name", "shape", "datatype"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "shape": {"type": "array", "items": {"type": "integer"}},
                                    "datatype": {"type": "string", "enum": list(oip.DATATYPES)},
                                    "parameters": {"type": "object"},
                                    "data": {"type": "array"},
                                },
                            },
                        },
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string", "enum": list(oip.OUTPUTS)},
                                    "parameters": {"type": "object"},
                                },
                            },
                        },
                    },
                },
                "example": {
                    "id": "1",
                    "inputs": [
                        {
                            "name": "input",
                            "datatype": "FP32",
                            "shape": [1, 1, 28, 28],
                            "data": [0.0] * 784,
                        }
                    ],
                },
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    s: {} for s in (400, 404, 413, 415, 422, 429, 503, 504)
}


class RepositoryIndexRequest(BaseModel):
    ready: bool = False


class LoadRequest(BaseModel):
    parameters: dict[str, Any] = {}


@router.get("")
async def server_metadata() -> dict[str, Any]:
    return {"name": oip.SERVER_NAME, "version": oip.SERVER_VERSION, "extensions": oip.EXTENSIONS}


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
    return metadata(versioned(d, name, version))


@router.get("/models/{name}/ready", responses={404: {}, 503: {}})
async def model_ready(name: ModelName, d: ReadyDep) -> dict[str, Any]:
    return {"name": d.registry.get(name).name, "ready": True}


# Also served by server.routes.fast, which calls infer() below without FastAPI's routing.
@router.post("/models/{name}/infer", openapi_extra=INFER_BODY, responses=INFER_RESPONSES)
async def model_infer(request: Request, name: ModelName, d: ServingDep) -> Response:
    received, body = time.perf_counter(), await request.body()  # the body cap speaks first
    content, headers = await infer(request.scope, d, d.registry.get(name), body, received)
    return Response(content, headers=headers)


@router.post(
    "/models/{name}/versions/{version}/infer", openapi_extra=INFER_BODY, responses=INFER_RESPONSES
)
async def model_version_infer(
    request: Request, name: ModelName, version: str, d: ServingDep
) -> Response:
    received, body = time.perf_counter(), await request.body()
    content, headers = await infer(request.scope, d, versioned(d, name, version), body, received)
    return Response(content, headers=headers)


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
        **oip.model_metadata(model.name, str(model.version), meta.input_size, meta.num_classes),
        "parameters": {
            **model.level.current.describe(),
            "arch": meta.arch,
            "checksum": model.checksum[:16],
            "class_names": meta.class_names,
            "accuracy": [{"gamma": r["gamma"], "accuracy": r["accuracy"]} for r in meta.accuracy],
        },
    }


def versioned(d: Daemon, name: str, version: str) -> ServedModel:
    model = d.registry.get(name)
    if version != str(model.version):
        raise HTTPException(
            404, f"model {name!r} has no version {version!r}; serving version {model.version}"
        )
    return model


async def infer(
    scope: Scope, d: Daemon, model: ServedModel, body: bytes, received: float
) -> tuple[bytes, dict[str, str]]:
    """body bytes → InferCall (off the loop when large) → the model's InferenceService → the
    response body and headers."""
    deadline = d.deadline(scope)
    state = scope.setdefault("state", {})
    state["model"] = model.name
    limits = limits_for(d, model)
    length = header(scope, HEADER_LENGTH)
    try:
        if len(body) >= oip.OFFLOAD_BYTES:
            call = await asyncio.get_running_loop().run_in_executor(
                d.decode_pool, oip.parse_http, body, length, limits, model.name
            )
        else:
            call = oip.parse_http(body, length, limits, model.name)
    except oip.OIPError as e:
        d.metrics.rejected.labels(rejection_reason(e) or "bad_input").inc()  # as over gRPC
        raise HTTPException(e.status, e.message) from None
    results = await run_call(model, call, deadline, received)
    state["level"] = results[-1].level
    return encode(model, call, results, _request_id(scope))


def limits_for(d: Daemon, model: ServedModel) -> oip.Limits:
    return oip.Limits(tuple(model.meta.input_size), d.settings.max_batch_images)


def encode(
    model: ServedModel, call: oip.InferCall, results: list[Any], request_id: str
) -> tuple[bytes, dict[str, str]]:
    """The response body and headers of an answered call (`request_id` when it named none)."""
    probs = torch.stack([r.probabilities for r in results]).to(torch.float32).numpy()
    params = {
        **oip.response_parameters(
            [r.level for r in results], [r.tier for r in results], [r.precision for r in results]
        ),
        "checksum": model.checksum[:16],
    }
    return oip.encode_http(
        model.name,
        str(model.version),
        call.request_id or request_id,
        params,
        oip.outputs_for(call, probs, model.meta.class_names),
    )


HEADER_LENGTH = oip.HEADER_LENGTH.encode()


def header(scope: Scope, name: bytes) -> str | None:
    """A request header's first value (`name` lower-case), as Starlette's Headers.get."""
    for k, v in scope["headers"]:
        if k == name:
            return v.decode("latin-1")
    return None


def _request_id(scope: Scope) -> str:
    """The X-Request-ID the middleware accepted or made, else the header if it is safe."""
    rid = scope.get("state", {}).get("request_id") or header(scope, b"x-request-id") or ""
    return response_id(rid)


def response_id(rid: str) -> str:
    """A request ID as a response's "id": only if it is short and safe."""
    return rid if len(rid) <= oip.MAX_ID_CHARS and oip.safe_id(rid) else ""
