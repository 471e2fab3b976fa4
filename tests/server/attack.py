"""Attack helpers: a live server under a descriptor limit, its peak resident memory, raw sockets."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers import ROOT, LiveServer, free_port


@contextmanager
def server(env: dict[str, str], nofile: int | None = None) -> Iterator[LiveServer]:
    """tests.helpers.live_server, optionally with RLIMIT_NOFILE (soft and hard) set in the child
    before it starts, as `prlimit --nofile=N:N` would."""
    port = free_port()
    full_env = {
        **os.environ,
        "LCS_PORT": str(port),
        "LCS_HOST": "127.0.0.1",
        "LCS_TORCH_THREADS": "1",
        "LCS_CONTROLLER_ENABLED": "0",
        "LCS_TIER2_ENABLED": "0",
        **env,
    }

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in the finally below
        "w+", prefix="lcs-attack-", suffix=".log", delete=False
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve"],
        cwd=ROOT,
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=limit,  # only setrlimit: safe between fork and exec
    )
    srv = LiveServer(proc, f"http://127.0.0.1:{port}", Path(log.name))
    try:
        srv.wait_ready(60)
        yield srv
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        Path(log.name).unlink(missing_ok=True)


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
