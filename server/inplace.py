"""Hot requests answered in place: on the connection that read them, with no ASGI task, when
everything they need is at hand now; any other request goes to the app unchanged."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from server import oip, tracing
from server.daemon import Daemon
from server.inference import Result
from server.middleware import Ledger, request_id_from
from server.routes import predict, v2
from server.routes.fast import PREDICT, hot_route
from server.served import ServedModel
from server.settings import Settings

# Bodies small enough to hold while deciding: a 28×28 digit as PNG, OIP JSON or binary tensor
# is 0.3-14 KB; larger images are decoded in the pool and large OIP bodies parsed off the loop.
MAX_BODY = 64 * 1024
JSON = ((b"content-type", b"application/json"),)


@dataclass(frozen=True)
class Answer:
    content: bytes
    headers: tuple[tuple[bytes, bytes], ...]  # besides content-length and x-request-id
    request_id: str


class InPlace:
    """POST /predict with a raw image and no query, and POST /v2/models/{name}[/versions/{v}]
    /infer of one row without hints, answered as their routes answer them (server.routes.fast),
    if the request's pass can run inline now (a lone client, the inference thread idle) and
    its image decode inline; the ledger records it as RequestLog would. Anything else, an error
    included, is None: the connection hands the request to the app, which answers it the one
    documented way. Not used with tracing on (spans come from the ASGI instrumentation) or for
    a cross-origin request when CORS is configured (its headers come from the middleware).
    Measured (c = 1, PNG, hey, alternated daemons): 1098-1148 req/s against 1056-1082 with it
    off, ~40 µs a request; stamps put the ASGI cycle, task, middleware stack and Request at
    ~110 µs of a ~0.9 ms request, the parsing and write left here at ~50 µs besides the send."""

    def __init__(self, state: Any, settings: Settings, ledger: Ledger) -> None:
        self.state, self.ledger = state, ledger
        self.cors = bool(settings.cors_origins)
        self.max_body = min(MAX_BODY, settings.max_body_bytes)
        self.answered = state.metrics.in_place

    def take(
        self, path: str, query: bytes, headers: list[tuple[bytes, bytes]], arrival: float
    ) -> Hot | None:
        """A POST to `path` this path may answer, judged from its headers alone (a hot route,
        a body of known small length, nothing the middleware would add to the answer): what
        answer() needs of it besides its body; else None."""
        if tracing.enabled():
            return None
        length = ctype = None
        for name, value in headers:
            if name == b"content-length":
                length = value
            elif name == b"content-type":
                ctype = value
            elif name == b"transfer-encoding" or (name == b"origin" and self.cors):
                return None
        if length is None or not length.isdigit() or int(length) > self.max_body:
            return None
        hit = hot_route(path, query, None if ctype is None else ctype.decode("latin-1"))
        if hit is None:
            return None
        return Hot(path, *hit, headers, arrival, request_id_from(headers))

    def answer(self, hot: Hot, body: bytes) -> Answer | None:
        """The answer to a request take() took, if it can be given now; else None, with
        nothing done that the app's answer to the same request would show twice."""
        start = time.perf_counter()
        d: Daemon | None = self.state.daemon
        if d is None or d.draining or not d.ready:
            return None  # the app's 503, counted as a refusal there
        deadline = hot.arrival + d.settings.request_timeout_s
        try:
            if hot.route == PREDICT:
                done = _predict(d, body, deadline, start)
            else:
                done = _infer(d, hot, body, deadline, start)
        except Exception:  # the app meets the same error and answers it
            return None
        if done is None:
            return None
        model, result, content, extra = done
        self.ledger.record(("POST", hot.path), hot.route, model.name, 200,
                           time.perf_counter() - start, hot.rid, result.level)  # fmt: skip
        self.answered.inc()
        return Answer(content, extra, hot.rid)

    def unanswered(self, hot: Hot, status: int) -> None:
        """A request held for this path whose body never came in whole: the connection
        answered it (408) or lost it (499); recorded as RequestLog records the app's."""
        seconds = time.monotonic() - hot.arrival
        self.ledger.record(("POST", hot.path), hot.route, "", status, seconds, hot.rid)


@dataclass(frozen=True)
class Hot:
    """A request take() took: what answer() needs of it besides its body."""

    path: str
    route: str  # its route's template: the endpoint label RequestLog would give it
    params: dict[str, str]  # the template's: {}, name, or name and version
    headers: list[tuple[bytes, bytes]]
    arrival: float  # time.monotonic() of its first byte
    rid: str  # its X-Request-ID (the client's if valid, else a new one)


Done = tuple[ServedModel, Result, bytes, tuple[tuple[bytes, bytes], ...]]


def _predict(d: Daemon, body: bytes, deadline: float, received: float) -> Done | None:
    model = d.registry.get(None)
    result = model.service.predict_image_now(body, deadline, received)
    if result is None:
        return None
    content = orjson.dumps(predict.respond(model, result, predict.TOP_K, received))
    return model, result, content, JSON


def _infer(d: Daemon, hot: Hot, body: bytes, deadline: float, received: float) -> Done | None:
    name, version = hot.params["name"], hot.params.get("version")
    model = d.registry.get(name) if version is None else v2.versioned(d, name, version)
    length = next((v.decode("latin-1") for k, v in hot.headers if k == v2.HEADER_LENGTH), None)
    call = oip.parse_http(body, length, v2.limits_for(d, model), model.name)
    if call.min_accuracy is not None or call.max_latency_ms is not None or call.tensor is None:
        return None  # hints, or images inside the tensor: the app's path
    svc = model.service
    if call.kind == "pixels":
        result = svc.predict_pixels_now(call.tensor, deadline, received)
    else:
        result = svc.predict_tensor_now(call.tensor, deadline, received)
    if result is None:
        return None
    content, extra = v2.encode(model, call, [result], v2.response_id(hot.rid))
    raw = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items())
    return model, result, content, raw
