"""Route dependencies: the typed runtime, readiness, operator auth."""

from __future__ import annotations

import ipaddress
import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from server.runtime import Runtime


def runtime(request: Request) -> Runtime:
    rt = request.app.state.runtime
    if rt is None:
        raise HTTPException(503, "not ready: starting", headers={"Retry-After": "1"})
    return rt


RuntimeDep = Annotated[Runtime, Depends(runtime)]


def ready_runtime(rt: RuntimeDep) -> Runtime:
    if rt.draining:
        raise HTTPException(503, "not ready: draining for shutdown", headers={"Retry-After": "1"})
    if not rt.ready:
        raise HTTPException(503, f"not ready: {rt.not_ready_reason}", headers={"Retry-After": "1"})
    return rt


ReadyDep = Annotated[Runtime, Depends(ready_runtime)]


def operator(request: Request, rt: RuntimeDep) -> str:
    """Who is allowed to change the level: a matching bearer token (compared in constant time),
    or, when no token is configured, a client on loopback. Returns a label for the log."""
    token = rt.settings.operator_token
    client = request.client.host if request.client else "unknown"
    header = request.headers.get("authorization", "")
    if token is None:
        if _loopback(client):
            return f"loopback:{client}"
        raise HTTPException(
            403,
            "no operator token is configured: level changes are accepted "
            "from loopback clients only (set LCS_OPERATOR_TOKEN)",
        )
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise HTTPException(
            401,
            "operator token required: Authorization: Bearer <token>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not secrets.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise HTTPException(403, "operator token rejected")
    return f"token:{client}"


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in ("localhost", "testclient")


OperatorDep = Annotated[str, Depends(operator)]
