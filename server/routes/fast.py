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
        self.infer_route = routes["/v2/models/{name}/infer"]
        self.version_route = routes["/v2/models/{name}/versions/{version}/infer"]
        self.predict_route = routes["/predict"]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            return await self.app(scope, receive, send)
        path = scope["path"]
        if path == "/predict" and not scope.get("query_string") and _raw_image(scope):
            return await self._serve(scope, receive, send, self.predict_route, {})
        if path.startswith("/v2/models/") and path.endswith("/infer"):
            m = INFER.fullmatch(path)
            if m is not None and len(m[1]) <= MAX_NAME:
                params = {"name": m[1]}
                return await self._serve(scope, receive, send, self.infer_route, params)
            m = VERSION_INFER.fullmatch(path)
            if m is not None and len(m[1]) <= MAX_NAME:
                params = {"name": m[1], "version": m[2]}
                return await self._serve(scope, receive, send, self.version_route, params)
        return await self.app(scope, receive, send)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, route: APIRoute, params: dict[str, str]
    ) -> None:
        scope["route"], scope["endpoint"], scope["path_params"] = route, route.endpoint, params
        try:
            d = deps.serving(deps.started(self.state.daemon))  # as the routes' ServingDep
            request = Request(scope, receive)  # Starlette's: reads the body as the routes do
            if route is self.predict_route:  # predict.predict with its defaults
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


def _raw_image(scope: Scope) -> bool:
    """A body /predict reads as the raw image (read_one_image's rule, not multipart)."""
    return predict.is_raw_image(predict.media_type(v2.header(scope, b"content-type")))
