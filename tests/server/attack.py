"""Attack helpers: a live server under a descriptor limit, its peak resident memory, raw sockets."""

from __future__ import annotations

import socket
from contextlib import AbstractContextManager
from pathlib import Path

from tests.helpers import LiveServer, live_server


def server(env: dict[str, str], nofile: int | None = None) -> AbstractContextManager[LiveServer]:
    """tests.helpers.live_server with the controller and tier 2 off (the limits alone under
    test), optionally under a file-descriptor limit."""
    quiet = {"LCS_CONTROLLER_ENABLED": "0", "LCS_TIER2_ENABLED": "0"}
    return live_server({**quiet, **env}, nofile=nofile)


def port(srv: LiveServer) -> int:
    return int(srv.url.rsplit(":", 1)[1])


def connect(srv: LiveServer, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port(srv)), timeout=timeout)
    s.settimeout(timeout)
    return s


def read_all(s: socket.socket) -> bytes:
    """Everything until the server closes (or the socket's timeout raises)."""
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak(pid: int) -> None:
    """Reset the process's peak resident memory (VmHWM) to its current value."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss(pid: int) -> int:
    return status_kb(pid, "VmHWM") * 1024


def rss(pid: int) -> int:
    return status_kb(pid, "VmRSS") * 1024
