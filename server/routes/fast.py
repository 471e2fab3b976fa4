"""The hot routes (OIP infer, /predict) served without Starlette's routing and dependency
injection: the same handlers and answers, for a fraction of the per-request CPU."""

from __future__ import annotations

import re
import time

import orjson
from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from server.inference import Hints
from server.routes import deps, predict, v2
from server.routes.errors import error_response

# The FastAPI routes' own paths: {name} is one path segment ([^/]+), as Starlette matches it.
INFER = re.compile(r"/v2/models/([^/]+)/infer")
VERSION_INFER = re.compile(r"/v2/models/([^/]+)/versions/([^/]+)/infer")
JSON = {"content-type": "application/json"}
MAX_NAME = 64  # the routes' ModelName max_length: longer names go to FastAPI for its 422
# The hot routes' templates (their FastAPI paths): scope["route"] and the endpoint label.
PREDICT = "/predict"
INFER_ROUTE = "/v2/models/{name}/infer"
VERSION_ROUTE = "/v2/models/{name}/versions/{version}/infer"


def hot_route(
    path: str, query: bytes, content_type: str | None
) -> tuple[str, dict[str, str]] | None:
    """The hot route a POST to `path` is for, as its template and path parameters; None for
    any other, and for one whose FastAPI answer would differ (a name too long, multipart,
    query parameters to validate). The one rule HotPath and the in-place path (server.inplace)
    both take requests by."""
    if path == PREDICT:
        raw = predict.is_raw_image(predict.media_type(content_type))
        return (PREDICT, {}) if raw and not query else None
    if not (path.startswith("/v2/models/") and path.endswith("/infer")):
        return None
    if (m := INFER.fullmatch(path)) is not None:
        template, params = INFER_ROUTE, {"name": m[1]}
    elif (m := VERSION_INFER.fullmatch(path)) is not None:
        template, params = VERSION_ROUTE, {"name": m[1], "version": m[2]}
    else:
        return None
    return (template, params) if len(params["name"]) <= MAX_NAME else None


class HotPath:
    """Innermost middleware. POST /v2/models/{name}[/versions/{v}]/infer, and POST /predict
    with a raw image body and no query, run here the code their FastAPI routes run; anything
    else, and any request whose FastAPI answer would differ (a name too long, multipart, query
    parameters to validate), goes on to FastAPI unchanged. The middleware around it (request
    log, body cap, CORS, tracing) applies alike; scope["route"] is set to the FastAPI route so
    metrics and logs name the same endpoint. Measured: routing, dependency injection and
    FastAPI's exception middleware were ~180 µs of a ~1.5 ms request (request_profile)."""

    def __init__(self, app: ASGIApp, fastapi: FastAPI) -> None:
        self.app, self.state = app, fastapi.state
        # The routers' own APIRoute objects: what FastAPI puts in scope["route"] for them.
        both = (*v2.router.routes, *predict.router.routes)
        routes = {r.path: r for r in both if isinstance(r, APIRoute)}
        self.routes = {t: routes[t] for t in (PREDICT, INFER_ROUTE, VERSION_ROUTE)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            return await self.app(scope, receive, send)
        query = scope.get("query_string", b"")
        hit = hot_route(scope["path"], query, v2.header(scope, b"content-type"))
        if hit is None:
            return await self.app(scope, receive, send)
        return await self._serve(scope, receive, send, self.routes[hit[0]], hit[1])

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, route: APIRoute, params: dict[str, str]
    ) -> None:
        scope["route"], scope["endpoint"], scope["path_params"] = route, route.endpoint, params
        try:
            d = deps.serving(deps.started(self.state.daemon))  # as the routes' ServingDep
            request = Request(scope, receive)  # Starlette's: reads the body as the routes do
            if route.path == PREDICT:  # predict.predict with its defaults
                r = await predict.predict_image(
                    request, d, None, predict.TOP_K, Hints(), predict.read_body
                )
                content, headers = orjson.dumps(r), JSON
            else:  # v2.model_infer and v2.model_version_infer
                received, body = time.perf_counter(), await request.body()
                name, version = params["name"], params.get("version")
                model = d.registry.get(name) if version is None else v2.versioned(d, name, version)
                content, headers = await v2.infer(scope, d, model, body, received)
        except Exception as e:
            response = error_response(e, self.state.metrics.rejected, scope["path"])
            if response is None:
                raise  # RequestLog answers 500, as for the FastAPI routes
            return await response(scope, receive, send)
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        raw.append((b"content-length", str(len(content)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": content})
