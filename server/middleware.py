"""ASGI middleware: the body-size cap enforced while reading; request IDs and arrival times;
the ledger every request's metrics and log line go through."""

from __future__ import annotations

import json
import logging
import random
import re
import time
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.metrics import Metrics

log = logging.getLogger("lcs.access")


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """413 as soon as a body exceeds `max_bytes`: by Content-Length, or while streaming. A route
    that catches the error while parsing (FastAPI's JSON body turns it into a 400) still gets
    413: once the cap is crossed, whatever the app answers is replaced."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await _too_large(scope, send, self.max_bytes)
        seen = 0
        started = exceeded = False

        async def limited() -> Message:
            nonlocal seen, exceeded
            if exceeded:
                raise BodyTooLarge
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.max_bytes:
                exceeded = True
                raise BodyTooLarge
            return msg

        async def tracking(msg: Message) -> None:
            nonlocal started
            if exceeded:
                if not started and msg["type"] == "http.response.start":
                    started = True
                    await _too_large(scope, send, self.max_bytes)
                return  # the app's own answer to the cut-off body is dropped
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, limited, tracking)
        except BodyTooLarge:
            if not started:
                await _too_large(scope, send, self.max_bytes)


async def _too_large(scope: Scope, send: Send, limit: int) -> None:
    scope.setdefault("state", {})[REJECTED] = "too_large"
    body = json.dumps({"error": f"request body exceeds the limit of {limit} bytes"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})


REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# scope["state"] key: the time.monotonic() instant the request's first byte arrived. The
# connection layer (server/main.py) stamps it when it starts parsing; RequestLog stamps it
# where there is no such layer (in-process tests), so every request has one.
ARRIVAL = "arrival"
# scope["state"] key: a refusal made outside the app's error handlers (the body cap), as an
# lcs_rejected_requests reason for RequestLog to count.
REJECTED = "rejected"
# scope["state"] key: the status the connection layer answered with after the app had the
# request (408: its body did not arrive in time); logged and counted instead of the app's.
ANSWERED = "answered_by_connection"


def request_id(scope: Scope) -> str:
    """The client's X-Request-ID if it is short and plain (it reaches logs), else a new one."""
    return request_id_from(scope["headers"])


def request_id_from(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """request_id() on raw (lower-cased name, value) header pairs, as the connection layer has
    them before there is a scope."""
    for name, value in headers:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if REQUEST_ID.fullmatch(text):
                return text
            break
    return new_request_id()


_IDS = random.Random()  # its own generator, seeded from urandom: no one else's seed() reaches it


def new_request_id() -> str:
    """32 random hex digits, as uuid4().hex but without its os.urandom call per request: an
    ID must be unique in the logs, not unguessable."""
    return f"{_IDS.getrandbits(128):032x}"


def arrival(scope: Scope) -> float:
    """When the request arrived (time.monotonic()); now if nothing stamped it."""
    state = scope.setdefault("state", {})
    return state.setdefault(ARRIVAL, time.monotonic())


def request_deadline(scope: Scope, timeout_s: float) -> float:
    """The time.monotonic() instant by which the request must be answered: `timeout_s` after it
    arrived, so the time its headers and body took to arrive counts against the deadline (a
    body trickled in within the body timeout does not get a fresh deadline once read)."""
    return arrival(scope) + timeout_s


class Ledger:
    """What every HTTP request leaves behind, whichever path answered it (the app through
    RequestLog, or the connection in place: server.inplace): its lcs_requests and
    lcs_request_duration samples, a refusal's reason, one access-log line."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        # (endpoint, model, status) → its lcs_requests and lcs_request_duration children:
        # bounded as the labels are (route templates, loaded models, statuses).
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def record(
        self,
        request: tuple[str, str],
        endpoint: str,
        model: str,
        status: int,
        seconds: float,
        rid: str,
        level: Any = None,
        rejected: str | None = None,
    ) -> None:
        """One request: (method, path), the route template it matched, the model that served
        it ("" before one was resolved), its status and time, and what refused it if it was."""
        key = (endpoint, model, status)
        series = self._series.get(key)
        if series is None:  # labels() costs a lock and a validation: once per series
            series = self._series[key] = (
                self.metrics.requests.labels("http", endpoint, model, str(status)),
                self.metrics.request_duration.labels("http", endpoint, model),
            )
        series[0].inc()
        series[1].observe(seconds)
        if rejected:
            self.metrics.rejected.labels(rejected).inc()
        if log.isEnabledFor(logging.INFO):  # else not even the line's fields are built
            _log(request, status, seconds, rid, model, level)


class RequestLog:
    """Counts, times and logs every request: method, path, status, latency, level, request ID.
    Outermost, so the X-Request-ID it echoes is on every answer, the inner middleware's 413s
    and the 500 it writes itself for an unhandled error (no traceback reaches the client)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, ledger: Ledger | None = None) -> None:
        self.app = app
        self.ledger = Ledger(metrics) if ledger is None else ledger

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = 500
        started = False
        arrival(scope)
        rid = request_id(scope)
        scope.setdefault("state", {})["request_id"] = rid
        rid_header = (b"x-request-id", rid.encode())

        async def capture(msg: Message) -> None:
            nonlocal status, started
            if msg["type"] == "http.response.start":
                status, started = msg["status"], True
                headers = [h for h in msg.get("headers", []) if h[0].lower() != b"x-request-id"]
                msg = {**msg, "headers": [*headers, rid_header]}
            await send(msg)

        try:
            await self.app(scope, receive, capture)
        except Exception:
            log.exception("unhandled error", extra={"request_id": rid})
            if not started:
                await _internal_error(capture)
        finally:
            route = scope.get("route")
            state = scope.get("state", {})
            self.ledger.record(
                (scope["method"], scope["path"]),
                getattr(route, "path", "unmatched"),  # bounded label cardinality
                state.get("model", ""),  # set only once a route resolved a loaded model
                state.get(ANSWERED, status),
                time.perf_counter() - start,
                rid,
                state.get("level"),
                state.get(REJECTED),
            )


def _log(
    request: tuple[str, str], status: int, seconds: float, rid: str, model: str, level: Any
) -> None:
    extra: dict[str, Any] = {
        "method": request[0],
        "path": request[1],
        "status": status,
        "latency_ms": round(seconds * 1e3, 3),
        "request_id": rid,
    }
    if model:
        extra["model"] = model
    if level is not None:
        extra["alpha"], extra["gamma"] = level.alpha, level.gamma
    log.info("request", extra=extra)


async def _internal_error(send: Send) -> None:
    body = json.dumps({"error": "internal error"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})
