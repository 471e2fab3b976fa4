"""`lcs serve`: check the checkpoint, then uvicorn with connection limits, draining on SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import resource
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, ClassVar

import httptools
import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from models.checkpoint import CheckpointError
from server import logs
from server.app import check_checkpoints, create_app
from server.inplace import Answer, Hot, InPlace
from server.middleware import ANSWERED, ARRIVAL, new_request_id, request_id, request_id_from
from server.settings import Settings, add_arguments, from_args

__all__ = ["add_arguments", "run"]
log = logging.getLogger("lcs.server")
access_log = logging.getLogger("lcs.access")

# Served even when max_concurrent_requests is reached: probes must see a live, loaded daemon.
HEALTH_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int
    max_headers: int
    idle_timeout_s: float
    header_timeout_s: float
    body_timeout_s: float
    # The per-request deadline, counted from the request's first byte: headers and body must
    # arrive within it too, whatever is left of the header and body timeouts.
    request_timeout_s: float
    max_connections: int
    max_concurrent_requests: int


class _Refused(Exception):
    """Raised inside a parser callback once the connection has been answered and closed."""


def _raw_response(status: int, reason: str, rid: str, extra: bytes = b"") -> bytes:
    body = f'{{"error": "{reason}"}}'.encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\nx-request-id: {rid}\r\n".encode()
        + extra
        + b"\r\n"
        + body
    )


class LimitedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits it lacks (llhttp has no header limit, and
    uvicorn times out only keep-alive waits): header bytes and count → 431; idle, header and
    body timeouts, and the request's deadline while its headers and body arrive → closed (408
    once a request has begun); a connection cap that evicts the connection waiting longest
    without a request in progress; and a request cap with health endpoints exempt. Every
    answer written here carries X-Request-ID, and the request's arrival time is stamped in
    its scope for the deadline (server.middleware.request_deadline). h11 would give the
    header-size limit, but not the rest, at a measured 20–30 % less throughput on loopback
    (SECURITY.md), so the limits live here."""

    limits: ClassVar[Limits]
    in_place: ClassVar[InPlace | None] = None  # answers hot requests with no ASGI task
    holding: ClassVar[Holding]  # the server's held requests (they count in the request cap)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase = "idle"  # idle → headers → body → app → idle (keep-alive)
        # A request the in-place path may answer, its body held while it arrives (no ASGI
        # cycle exists for it until the path declines and hands it to the app).
        self._held: Held | None = None
        self._close_after = False  # shut down while a held body arrived: close once answered
        self._since = time.monotonic()  # when the current phase began
        self._arrival = self._since  # when the current request's first byte arrived
        self._timer: asyncio.TimerHandle | None = None
        self._header_bytes = 0
        self._header_count = 0
        self._refused = False

    # --- timers -------------------------------------------------------------------------
    def _arm(self, seconds: float | None, status: int = 0) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = (
            None if seconds is None else self.loop.call_later(seconds, self._expire, status)
        )

    def _expire(self, status: int) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        # In "headers" self.cycle is the previous request's, answered already; a held request
        # has no cycle yet.
        started = self._phase == "body" and self._held is None and self.cycle.response_started
        if status and not started:
            self._answer(status, "Request Timeout")
        self._unhold(status)
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app's receive() now says http.disconnect
            self.cycle.message_event.set()
        self.transport.close()

    def _refuse(self, status: int, reason: str, extra: bytes = b"") -> None:
        self._refused = True
        self._arm(None)
        if not self.transport.is_closing():
            self._answer(status, reason, extra)
            self.transport.close()

    def _answer(self, status: int, reason: str, extra: bytes = b"") -> None:
        rid = self._request_id()
        self.transport.write(_raw_response(status, reason, rid, extra))
        if self._phase == "body":  # the app has the request: its log line says what we sent
            self.scope["state"][ANSWERED] = status
        access_log.info(
            "answered by the connection layer",
            extra={"status": status, "request_id": rid, "phase": self._phase},
        )

    def _request_id(self) -> str:
        """The ID the app gave this request, else the client's if its headers got that far and
        it is valid, else a new one: answers written here carry X-Request-ID like the app's."""
        if self._phase not in ("headers", "body"):  # no request, or the last one's headers
            return new_request_id()
        given = self.scope.get("state", {}).get("request_id")
        return given if isinstance(given, str) else request_id_from(self.headers)

    # --- connection ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections and not self._evict():
            self._refuse(503, "Service Unavailable", b"retry-after: 1\r\n")
            return
        self._arm(self.limits.idle_timeout_s)

    def _evict(self) -> bool:
        """Close the connection waiting longest with no request in progress, if any."""
        waiting = [
            c
            for c in self.connections
            if c is not self and isinstance(c, LimitedProtocol) and c._phase in ("idle", "headers")
        ]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: c._since)
        oldest._arm(None)
        oldest.transport.close()
        self.connections.discard(oldest)  # now, not when the loop calls connection_lost
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._arm(None)
        self._unhold(499)  # its client went away before the body was in
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._phase in ("idle", "headers"):
            # Raw bytes before the headers end (a body's first bytes may be among them): cut a
            # growing header off before the parser, which copies it on every read, holds more.
            if self._header_bytes > self.limits.max_header_bytes:
                return self._refuse(431, "Request Header Fields Too Large")
            self._header_bytes += len(data)
        super().data_received(data)
        if (
            not self._refused
            and self._phase == "headers"
            and self._header_bytes > self.limits.max_header_bytes
        ):
            self._refuse(431, "Request Header Fields Too Large")

    def send_400_response(self, msg: str) -> None:
        if self._refused:  # a callback refused the request: the answer is written already
            return
        # uvicorn's own answer to a malformed request, with the X-Request-ID added.
        content = [STATUS_LINE[400]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: " + str(len(msg)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"x-request-id: " + self._request_id().encode() + b"\r\n",
                b"\r\n",
                msg.encode("ascii"),
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()

    # --- parser callbacks ---------------------------------------------------------------
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._phase = "headers"
        self._since = self._arrival = time.monotonic()
        self.scope["state"][ARRIVAL] = self._arrival  # the deadline counts from here
        self._header_count = 0
        self._arm(min(self.limits.header_timeout_s, self.limits.request_timeout_s), 408)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self.limits.max_header_bytes:
            self._refuse(414, "URI Too Long")
            raise _Refused

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refuse(431, "Request Header Fields Too Large")
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._phase, self._since = "body", time.monotonic()
        self._header_bytes = 0
        # The body must also be in before the request's deadline: a body trickled in within
        # the body timeout would otherwise be served after it (the app would start its
        # deadline only once it had the body).
        left = self._arrival + self.limits.request_timeout_s - self._since
        self._arm(max(0.0, min(self.limits.body_timeout_s, left)), 408)
        busy = len(self.tasks) + self.holding.count >= self.limits.max_concurrent_requests
        held = None if busy else self._hold()
        if held is not None:
            self._held = held
            self.holding.count += 1
            return
        self._start_cycle(busy)

    def _unhold(self, status: int = 0) -> Held | None:
        """The held request, which no longer counts as held (None: none was). `status`: it
        ends unanswered by the app: the connection answered it so (408) or lost it (499)."""
        held, self._held = self._held, None
        if held is None:
            return None
        self.holding.count -= 1
        if status and self.in_place is not None:
            self.in_place.unanswered(held.hot, status)
        return held

    def _start_cycle(self, busy: bool) -> None:
        """uvicorn's ASGI cycle and task for the request whose headers are complete; `busy`:
        the request cap was reached when they were, so it is answered 503."""
        # The URL is parsed only when busy: uvicorn parses it again just below.
        if busy and httptools.parse_url(self.url).path.decode("latin-1") not in HEALTH_PATHS:
            app, self.app = self.app, _too_busy
            try:
                super().on_headers_complete()
            finally:
                self.app = app
        else:
            super().on_headers_complete()
        # The cycle's app task has not run yet: its writes all go through the wrapper.
        cycle = self.cycle
        cycle.transport = OneWrite(cycle.transport, cycle)  # type: ignore[assignment]
        if self._close_after:
            cycle.keep_alive = False

    def _hold(self) -> Held | None:
        """A POST the in-place path may answer, on a keep-alive HTTP/1.1 connection with no
        request ahead of it (pipelined answers keep their order), to be held; else None."""
        parser = self.parser
        if (
            self.in_place is None
            or self.expect_100_continue
            or parser.get_method() != b"POST"
            or parser.get_http_version() != "1.1"
            or not parser.should_keep_alive()
            or parser.should_upgrade()
            or (self.cycle is not None and not self.cycle.response_complete)
        ):
            return None
        url = httptools.parse_url(self.url)
        path = url.path.decode("latin-1")
        hot = self.in_place.take(path, url.query or b"", self.headers, self._arrival)
        if hot is None:
            return None
        self.scope["state"]["request_id"] = hot.rid  # the ID a 408 written here carries
        return Held(hot)

    def on_body(self, body: bytes) -> None:
        if self._held is not None:
            self._held.body += body  # at most in_place's body cap: take() read its length
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        held = self._unhold()
        if held is not None:
            body = bytes(held.body)
            if self._answer_in_place(held, body):
                return
            # Declined: the app answers, as if nothing had been held (admitted under the
            # request cap when its headers came in, as then).
            self._start_cycle(busy=False)
            if body:
                super().on_body(body)
        super().on_message_complete()
        self._phase, self._since = "app", time.monotonic()
        self._arm(None)

    def _answer_in_place(self, held: Held, body: bytes) -> bool:
        assert self.in_place is not None
        answer = self.in_place.answer(held.hot, body)
        if answer is None:
            return False
        self._arm(None)
        self._write(answer)
        self._phase = "app"
        # A pipelined request read with this one: its predecessor's keep-alive timer goes,
        # as data_received would cancel it.
        self._unset_keepalive_if_required()
        self.on_response_complete()
        if self._close_after:
            self.transport.close()
        return True

    def _write(self, answer: Answer) -> None:
        """As uvicorn's cycle writes a 200: status line, its default headers, then the route's,
        content-length and the X-Request-ID RequestLog would add, in one send()."""
        out = [STATUS_LINE[200]]
        for name, value in (*self.server_state.default_headers, *answer.headers):
            out += [name, b": ", value, b"\r\n"]
        length = str(len(answer.content)).encode()
        out += [b"content-length: ", length, b"\r\n", b"x-request-id: ",
                answer.request_id.encode(), b"\r\n\r\n", answer.content]  # fmt: skip
        self.transport.write(b"".join(out))

    def shutdown(self) -> None:
        if self._held is not None:  # a request is arriving: answer it, then close
            self._close_after = True
            return
        super().shutdown()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._phase == "app":  # not a pipelined request already being read
            self._phase, self._since = "idle", time.monotonic()


class OneWrite:
    """A response cycle's view of the transport: the status line and headers uvicorn writes at
    http.response.start are held and written with the first body bytes, one send() instead
    of two (on loopback each send() is a TCP segment the kernel delivers and the client
    wakes for). Held bytes go out at the latest when the response completes or the
    connection closes (a HEAD answer writes no body); the 100 Continue interim answer,
    written before the response starts, is never held."""

    __slots__ = ("_cycle", "_held", "_started", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: Any) -> None:
        self._transport, self._cycle = transport, cycle
        self._held: bytes | None = None
        self._started = False  # the header block has been seen
        done = cycle.on_response

        def completed() -> None:
            self.flush()
            done()

        cycle.on_response = completed

    def write(self, data: bytes) -> None:
        if self._held is not None:
            data, self._held = self._held + data, None
        elif not self._started and self._cycle.response_started:
            self._started, self._held = True, data
            return
        self._transport.write(data)

    def flush(self) -> None:
        if self._held is not None:
            data, self._held = self._held, None
            self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:  # anything else uvicorn may ask of a transport
        return getattr(self._transport, name)


async def _too_busy(scope: Any, receive: Any, send: Any) -> None:
    body = b'{"error": "too many requests in progress; retry shortly"}'
    rid = request_id(scope)
    access_log.info("answered by the connection layer", extra={"status": 503, "request_id": rid})
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", b"1"),
                (b"connection", b"close"),
                (b"x-request-id", rid.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (the default soft 1024 is a few thousand idle
    sockets from "Too many open files"); returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def limits_from(settings: Settings, nofile: int) -> Limits:
    # Below the descriptor limit by a reserve: model and checkpoint files, the tier-2 exporter's
    # pipes, log files, the listening socket and the accept in flight.
    reserve = max(32, nofile // 8)
    cap = max(8, nofile - reserve)
    return Limits(
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        idle_timeout_s=settings.idle_timeout_s,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        request_timeout_s=settings.request_timeout_s,
        max_connections=min(settings.max_connections or cap, cap),
        max_concurrent_requests=settings.max_concurrent_requests,
    )


@dataclass
class Held:
    """A request held for the in-place path while its body arrives."""

    hot: Hot
    body: bytearray = field(default_factory=bytearray)


@dataclass
class Holding:
    """Requests held for the in-place path, server-wide: no ASGI task stands for them, so
    the request cap counts them here."""

    count: int = 0


def protocol_class(limits: Limits, in_place: InPlace | None = None) -> type[LimitedProtocol]:
    attrs = {"limits": limits, "in_place": in_place, "holding": Holding()}
    return type("LimitedProtocol", (LimitedProtocol,), attrs)


def in_place(app: FastAPI, settings: Settings) -> InPlace | None:
    """The in-place path for hot requests, unless turned off (LCS_IN_PLACE=0)."""
    return InPlace(app.state, settings, app.state.ledger) if settings.in_place else None


class DrainingServer(uvicorn.Server):
    """SIGTERM/SIGINT: readiness goes false, new requests are refused, accepted ones finish
    (bounded by the drain timeout), then uvicorn shuts down and the process exits 0."""

    def __init__(self, config: uvicorn.Config, settings: Settings, app: FastAPI) -> None:
        super().__init__(config)
        self.settings, self.app = settings, app
        self._drain: asyncio.Task[None] | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in _captured_signals: uvicorn would re-raise it after shutdown and the
        # process would die by the signal instead of exiting 0.
        if self._drain is not None:  # a second signal: stop waiting
            self.force_exit = sig == signal.SIGINT
            self.should_exit = True
            return
        rt = self.app.state.daemon
        log.info("draining", extra={"signal": signal.Signals(sig).name})
        if rt is None:
            self.should_exit = True
            return
        rt.draining = True
        rt.metrics.ready.set(0)
        self._drain = asyncio.get_event_loop().create_task(self._finish(rt))

    async def _finish(self, rt) -> None:
        await rt.wait_idle(self.settings.drain_timeout_s)
        self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)  # the lifespan (models loaded, warmed) comes first
        if self.settings.gc_freeze:
            freeze_startup_objects()


def freeze_startup_objects() -> None:
    """What start-up made (torch, the models, the app) lives as long as the process: out of
    the collector's reach, a full collection no longer walks it while requests wait (A/B,
    loaded: OIP JSON p99 at concurrency 32 from 258 to 142 ms). A process-wide act, so here
    where the process is run, not in the daemon that in-process tests start many times."""
    gc.collect()
    gc.freeze()
    # A young-generation pass every 20 000 allocations, not 700 (a request makes hundreds of
    # objects, nearly all freed by reference counting): A/B, loaded, req/s +4–8 % at
    # concurrency 8 and 32, p99 −8 % at 32.
    gc.set_threshold(20_000, 50, 1000)


def run(args: argparse.Namespace) -> int:
    try:
        settings = from_args(args)
    except ValueError as e:
        print(f"lcs serve: invalid settings: {e}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    try:
        check_checkpoints(settings)
    except CheckpointError as e:
        print(f"lcs serve: {e}", file=sys.stderr)
        return 1
    app = create_app(settings)
    limits = limits_from(settings, raise_fd_limit())
    log.info("connection limits", extra=limits.__dict__)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol_class(limits, in_place(app, settings)),
        timeout_keep_alive=settings.keep_alive_s,
        backlog=min(2048, limits.max_connections),
        log_config=None,
        timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
        access_log=False,
        server_header=False,
        # X-Forwarded-For is believed only from the proxies named here: otherwise any client
        # on loopback could write what it likes as its address into the audit log.
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
    )
    server = DrainingServer(config, settings, app)
    server.run()
    return 0 if server.started else 1
