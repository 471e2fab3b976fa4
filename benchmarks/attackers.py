"""Issue 20's attack classes as bounded client threads, for `python -m benchmarks.soak --attack`."""

from __future__ import annotations

import contextlib
import io
import json
import selectors
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import httpx
from PIL import Image

from tests.server.hostile import bomb_png, ico_wrapping, zeros_png

# Per thread, whatever the phase length: every loop is bounded in count as well as time.
MAX_ATTEMPTS = 10_000


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    hold_s: float  # longest any limit may take to cut a connection (+ margin): else "held"
    max_body_bytes: int = 8 * 2**20

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def connect(self, timeout: float = 5.0) -> socket.socket:
        s = socket.create_connection((self.host, self.port), timeout=timeout)
        s.settimeout(timeout)
        return s


Attempt = Callable[[Target, threading.Event], list[str]]


@dataclass
class Attack:
    """One class of attack: `threads` loops of `attempt`, each answer counted by outcome
    (an HTTP status, "closed", "reset", "held" when no limit cut it, "error:…")."""

    name: str
    attempt: Attempt
    expect: frozenset[str]  # the outcomes that mean the daemon defended as designed
    threads: int = 1
    pause_s: float = 0.1
    outcomes: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def loop(self, target: Target, stop: threading.Event, until: float) -> None:
        for _ in range(MAX_ATTEMPTS):
            if stop.is_set() or time.monotonic() >= until:
                return
            try:
                got = self.attempt(target, stop)
            except httpx.TimeoutException:
                got = ["timeout"]
            except (httpx.HTTPError, OSError) as e:
                got = [f"error:{type(e).__name__}"]
            with self._lock:
                self.outcomes.update(x for x in got if x != "stopped")
            stop.wait(self.pause_s)

    @property
    def unexpected(self) -> int:
        return sum(n for k, n in self.outcomes.items() if k not in self.expect)


def _status(answer: bytes) -> str:
    """'408' from b'HTTP/1.1 408 …'; 'closed' when the daemon closed without a word."""
    if not answer:
        return "closed"
    parts = answer.split(b" ", 2)
    return parts[1].decode("latin-1") if len(parts) > 1 else "garbled"


def _read_answer(s: socket.socket) -> str:
    out = b""
    try:
        while len(out) < 65536 and (chunk := s.recv(65536)):
            out += chunk
    except ConnectionResetError:
        return _status(out) if out else "reset"
    except TimeoutError:
        return _status(out) if out else "no-close"
    return _status(out)


def _post(content: bytes | list[bytes], ctype: str, path: str = "/predict") -> Attempt:
    """POST `content` (a list of chunks: sent chunked, with no Content-Length)."""

    def attempt(t: Target, _: threading.Event) -> list[str]:
        body: bytes | Iterator[bytes] = iter(content) if isinstance(content, list) else content
        r = httpx.post(t.url + path, content=body, headers={"content-type": ctype}, timeout=30)
        return [str(r.status_code)]

    return attempt


def _raw(request: bytes) -> Attempt:
    """Send a whole request on a fresh socket, read what comes back until the daemon closes."""

    def attempt(t: Target, _: threading.Event) -> list[str]:
        with t.connect() as s:
            with contextlib.suppress(OSError):  # cut off while sending: refused too
                s.sendall(request)
            return [_read_answer(s)]

    return attempt


def _drip(head: bytes, byte: bytes, every_s: float = 1.0) -> Attempt:
    """Slowloris: `head`, then one `byte` every `every_s`, until the daemon answers or closes."""

    def attempt(t: Target, stop: threading.Event) -> list[str]:
        with t.connect() as s:
            s.sendall(head)
            end = time.monotonic() + t.hold_s
            sel = selectors.DefaultSelector()
            sel.register(s, selectors.EVENT_READ)
            try:
                while time.monotonic() < end:
                    if stop.is_set():
                        return ["stopped"]
                    if sel.select(every_s):
                        return [_read_answer(s)]
                    try:
                        s.sendall(byte)
                    except OSError:
                        return [_read_answer(s)]
                return ["held"]
            finally:
                sel.close()

    return attempt


def _idle(n: int) -> Attempt:
    """`n` connections that never send a byte; each should be closed by the idle timeout."""

    def attempt(t: Target, stop: threading.Event) -> list[str]:
        socks: list[socket.socket] = []
        sel = selectors.DefaultSelector()
        out: list[str] = []
        try:
            for _ in range(n):
                socks.append(t.connect())
                sel.register(socks[-1], selectors.EVENT_READ, socks[-1])
            end = time.monotonic() + t.hold_s
            while len(out) < n and time.monotonic() < end and not stop.is_set():
                for key, _ in sel.select(0.5):
                    out.append(_read_answer(key.data))
                    sel.unregister(key.data)
            left = n - len(out)
            out += ["stopped" if stop.is_set() else "held"] * left
            return out
        finally:
            sel.close()
            for s in socks:
                s.close()

    return attempt


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _v2(shape: list[int], data: str) -> bytes:
    head = json.dumps({"name": "input", "shape": shape, "datatype": "FP32"})[:-1]
    return f'{{"inputs": [{head}, "data": [{data}]}}]}}'.encode()


def attacks(target: Target, model: str = "digits") -> list[Attack]:
    """Every attack class of issue 20, with the answers the limits should give."""
    post = "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
    infer = f"/v2/models/{model}/infer"
    huge = _v2([1, 1, 28, 28], ", ".join(["0.5"] * 783 + ["1" + "0" * 400]))
    many = _v2([65, 1, 28, 28], ", ".join(["0.0"] * (65 * 784)))
    # A chunked JSON body just over the cap, in 64 KiB chunks (no Content-Length to refuse).
    prefix = b'{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": ['
    chunk = b"0.0, " * 13_107
    chunked = [prefix] + [chunk] * (target.max_body_bytes // len(chunk) + 2)
    big_header = post.encode() + b"X-Big: " + b"a" * 2**20 + b"\r\n\r\n"
    many_headers = post.encode() + b"".join(b"X-H%d: 1\r\n" % i for i in range(150)) + b"\r\n"
    rgba = Image.new("RGBA", (3000, 3000), (90, 90, 90, 200))  # ~82 MB to decode
    large = _png(rgba)
    too_big = _png(Image.new("RGBA", (6300, 6300), (90, 90, 90, 200)))  # ~357 MB
    del rgba
    slow_head = b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Slow: "
    slow_body = (post + "Content-Length: 1000000\r\n\r\n").encode()
    return [
        Attack(
            "ico wrapping a 40000² PNG",
            _post(ico_wrapping(zeros_png()), "image/x-icon"),
            frozenset({"415"}),
        ),
        Attack("PNG bomb (100000² header)", _post(bomb_png(), "image/png"), frozenset({"413"})),
        Attack(
            "large images 3000² RGBA",
            _post(large, "image/png"),
            frozenset({"200", "429"}),
            threads=4,
            pause_s=0.0,
        ),
        Attack(
            "image over the decode budget",
            _post(too_big, "image/png"),
            frozenset({"413"}),
            pause_s=0.5,
        ),
        Attack("slow headers", _drip(slow_head, b"a"), frozenset({"408", "closed"}), threads=8),
        Attack("slow body", _drip(slow_body, b"\0"), frozenset({"408", "closed"}), threads=8),
        Attack("idle sockets (100 at a time)", _idle(100), frozenset({"closed"}), threads=2),
        Attack("1 MiB header", _raw(big_header), frozenset({"431", "closed", "reset"})),
        Attack("150 header lines", _raw(many_headers), frozenset({"431"})),
        Attack(
            "N = 65 images", _post(many, "application/json", infer), frozenset({"413"}), pause_s=0.2
        ),
        Attack("huge number (10^400)", _post(huge, "application/json", infer), frozenset({"422"})),
        Attack(
            "chunked JSON over the cap",
            _post(chunked, "application/json", infer),
            frozenset({"413"}),
            pause_s=0.3,
        ),
    ]


class Attackers:
    """All attacks at once until `until` or stop(); every thread is joined (bounded)."""

    def __init__(self, target: Target, all_attacks: list[Attack]) -> None:
        self.target, self.attacks = target, all_attacks
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self, until: float) -> None:
        self._stop.clear()
        self._threads = [
            threading.Thread(target=a.loop, args=(self.target, self._stop, until), daemon=True)
            for a in self.attacks
            for _ in range(a.threads)
        ]
        for t in self._threads:
            t.start()

    def stop(self, timeout_s: float = 40.0) -> int:
        """Stop and join; returns how many threads were still running after `timeout_s`."""
        self._stop.set()
        end = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(0.0, end - time.monotonic()))
        return sum(t.is_alive() for t in self._threads)
