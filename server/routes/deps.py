"""Route dependencies: the typed daemon, readiness, operator auth."""

from __future__ import annotations

import ipaddress
import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from server.daemon import Daemon


# All `async def`: FastAPI runs a plain `def` dependency in a worker thread, a thread hop per
# dependency per request for what is a few attribute reads.
async def daemon(request: Request) -> Daemon:
    return started(request.app.state.daemon)


def started(d: Daemon | None) -> Daemon:
    if d is None:
        raise HTTPException(503, "not ready: starting", headers={"Retry-After": "1"})
    return d


DaemonDep = Annotated[Daemon, Depends(daemon)]


async def ready_daemon(d: DaemonDep) -> Daemon:
    return ready(d)


def ready(d: Daemon) -> Daemon:
    if d.draining:
        raise HTTPException(503, "not ready: draining for shutdown", headers={"Retry-After": "1"})
    if not d.ready:
        raise HTTPException(503, f"not ready: {d.not_ready_reason}", headers={"Retry-After": "1"})
    return d


ReadyDep = Annotated[Daemon, Depends(ready_daemon)]


async def serving_daemon(d: DaemonDep) -> Daemon:
    return serving(d)


def serving(d: Daemon) -> Daemon:
    """ready() for the inference routes: their refusal is also counted as
    lcs_rejected_requests{reason="not_ready"}, as gRPC's ModelInfer counts it (a readiness
    probe's 503 is an answer, not a refused request, so ReadyDep counts nothing)."""
    try:
        return ready(d)
    except HTTPException:
        d.metrics.rejected.labels("not_ready").inc()
        raise


ServingDep = Annotated[Daemon, Depends(serving_daemon)]


async def operator(request: Request, d: DaemonDep) -> str:
    """Who may change levels and models: a matching bearer token (compared in constant time),
    or, when no token is configured, a client on loopback. Returns who, for the audit log:
    the authenticated identity and the socket's peer, nothing a client writes itself."""
    who = identify(request, d)
    if who is not None:
        return who
    if d.settings.operator_token is None:
        raise HTTPException(
            403,
            "no operator token is configured: operator actions are accepted "
            "from loopback clients only (set LCS_OPERATOR_TOKEN)",
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise HTTPException(
            401,
            "operator token required: Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    raise HTTPException(403, "operator token rejected")


def identify(request: Request, d: Daemon) -> str | None:
    """The operator's identity if the request carries it, else None (never raises)."""
    token = d.settings.operator_token
    client = request.client.host if request.client else "unknown"
    if token is None:
        return f"loopback:{client}" if _loopback(client) else None
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and secrets.compare_digest(
        given.encode(), token.get_secret_value().encode()
    ):
        return f"token:{client}"
    return None


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in ("localhost", "testclient")


OperatorDep = Annotated[str, Depends(operator)]
