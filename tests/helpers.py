"""Test helpers: digit images as encoded files, the model's own answer, a live server process."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import torch
from PIL import Image

from models import LevelCompressor, checkpoint
from models.data import load_digits

if TYPE_CHECKING:
    from server.daemon import Daemon
    from server.served import ServedModel

    InProcess = tuple[Daemon, ServedModel, httpx.AsyncClient]

ROOT = Path(__file__).resolve().parent.parent


def digits(n: int = 20) -> tuple[list[np.ndarray], list[int]]:
    d = load_digits()
    return [d.test.images[i, 0].numpy() for i in range(n)], d.test.labels[:n].tolist()


def encode(arr: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    im = Image.fromarray(arr)
    if mode:
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


def reference_probabilities(
    arr: np.ndarray, alpha: float, ckpt: Path | None = None
) -> torch.Tensor:
    """The bundled model's answer for a 28×28 uint8 digit, computed without the server."""
    net, meta, _ = checkpoint.load(ckpt)
    x = torch.from_numpy(arr.astype(np.float32) / 255).view(1, 1, 28, 28)
    x = (x - meta.mean[0]) / meta.std[0]
    with torch.inference_mode():
        return torch.softmax(net(x, LevelCompressor(net)(alpha)), 1)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def in_process(
    **overrides: Any,
) -> AsyncIterator[tuple[Daemon, ServedModel, httpx.AsyncClient]]:
    """The daemon's own start-up in this process (no port): the Daemon, its default model and
    an ASGI client on the app. Settings: controller off and one torch thread, then `overrides`."""
    from server import daemon as serving
    from server.app import create_app
    from server.settings import Settings

    settings = Settings(**{"controller_enabled": False, "torch_threads": 1} | overrides)
    app = create_app(settings)
    d = await serving.start(settings, app.state.metrics)
    app.state.daemon = d
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://lcs") as client:
            yield d, d.registry.get(), client
    finally:
        await serving.stop(d)


# argv: the limit, then the command to exec under it
LIMITED = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"
)


@contextmanager
def live_server(
    env: dict[str, str] | None = None, timeout: float = 60, nofile: int | None = None
) -> Iterator[LiveServer]:
    """A real `lcs serve` process on a loopback port, stopped (SIGTERM) on exit; with
    `nofile`, its file-descriptor limit (soft and hard), as `prlimit --nofile=N:N` would."""
    command = [sys.executable, "-m", "server.cli", "serve"]
    if nofile is not None:
        # Set by a launcher that then execs the server, not by a preexec_fn: that makes
        # subprocess fork() (not vfork) and run grpc's at-fork handlers in the child, which
        # abort it when this process has gRPC threads of its own (SIGABRT, "epoll_wait error").
        command = [sys.executable, "-c", LIMITED, str(nofile), *command]
    port = free_port()
    full_env = {
        # gRPC on as by default, each daemon on a port of its own: two benchmark servers side by
        # side would both bind 8001 (tests turn gRPC off in conftest, unless they ask for it)
        "LCS_GRPC_PORT": str(free_port()),
        **os.environ,
        "LCS_PORT": str(port),
        "LCS_HOST": "127.0.0.1",
        "LCS_TORCH_THREADS": "1",
        **(env or {}),
    }
    # Logs go to a file: an undrained pipe would fill up and block the server.
    log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in the finally below
        "w+", prefix="lcs-serve-", suffix=".log", delete=False
    )
    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    server = LiveServer(proc, f"http://127.0.0.1:{port}", Path(log.name))
    try:
        server.wait_ready(timeout)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()
        Path(log.name).unlink(missing_ok=True)


class LiveServer:
    def __init__(self, proc: subprocess.Popen[str], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("server did not become ready")

    def output(self) -> str:
        return self.log.read_text()

    def sigterm_under_load(
        self, client: Callable[[int], None], clients: int, loaded: Callable[[], bool]
    ) -> tuple[int, str]:
        """`clients` threads run `client(k)` until `loaded()` holds (bounded: 30 s), then
        SIGTERM: the exit code and the log, once every client has ended (none may hang)."""
        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while not loaded() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a client hung after the drain started"
        return self.proc.wait(60), self.output()


def make_checkpoint(
    path: Path, arch: str, family: str = "structured", kind: str = "point", seed: int = 0
) -> Path:
    """A checkpoint with random weights (no accuracy), for serving tests of larger networks."""
    from models import SubspaceSpec, create_model
    from models.networks import ARCHITECTURES

    torch.manual_seed(seed)
    spec = SubspaceSpec(family, kind)
    net = create_model(arch, spec, num_classes=10)
    c, _, _ = ARCHITECTURES[arch].input_size
    meta = checkpoint.Metadata(
        arch=arch,
        family=family,
        kind=kind,
        calculator=spec.calc.to_dict(),
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        input_size=list(ARCHITECTURES[arch].input_size),
        mean=[0.5] * c,
        std=[0.25] * c,
        dataset="random",
    )
    checkpoint.save(path, net, meta)
    return path


def drive(url: str, png: bytes, seconds: float) -> list[tuple[float, float, float, str]]:
    """Sequential requests for `seconds`: (time sent, latency s, α and tier that served it)."""
    out = []
    end = time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=30) as c:
        while time.monotonic() < end:
            t0 = time.monotonic()
            r = c.post("/predict", content=png, headers={"content-type": "image/png"})
            assert r.status_code == 200, r.text
            level = r.json()["level"]
            out.append((t0, time.monotonic() - t0, level["alpha"], level["tier"]))
    return out
