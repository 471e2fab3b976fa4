"""Issue 20 as an attacker would try it on loopback: each test failed on main before the limits."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import select
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
import torch
from PIL import Image

from server.admission import INLINE_INSPECT_BYTES, BudgetBusy, DecodeBudget, decode_admitted
from server.metrics import Metrics
from server.middleware import ARRIVAL, RequestLog, request_deadline
from server.preprocess import ImageError, Preprocessor
from tests.helpers import ROOT, digits, encode
from tests.server.attack import connect, peak_rss, read_all, reset_peak, rss, server
from tests.server.hostile import bomb_png, ico_wrapping, zeros_png

pytestmark = pytest.mark.integration

BUDGET_MB = 170
ATTACK_ENV = {
    "LCS_DECODE_BUDGET_MB": str(BUDGET_MB),
    "LCS_MAX_BODY_BYTES": str(2 * 2**20),
    "LCS_IDLE_TIMEOUT_S": "1",
    "LCS_HEADER_TIMEOUT_S": "1",
    "LCS_BODY_TIMEOUT_S": "1.5",
}
MiB = 2**20


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


@pytest.fixture(scope="module")
def srv():
    with server(ATTACK_ENV) as s:
        yield s


@pytest.fixture(scope="module")
def digit() -> bytes:
    return encode(digits(1)[0][0])


def predict(
    url: str, body: bytes, ctype: str = "image/png", timeout: float = 30, **headers: str
) -> httpx.Response:
    return httpx.post(
        url + "/predict", content=body, headers={"content-type": ctype, **headers}, timeout=timeout
    )


# --- formats and the header check ---------------------------------------------------------


def test_ico_wrapping_a_huge_png_is_refused_from_the_header_without_decoding(srv):
    ico = ico_wrapping(zeros_png(40_000))  # 1.5 MB; 1.6 Gpx once decoded
    pid = srv.proc.pid
    predict(srv.url, ico, "image/x-icon")  # warm the path
    reset_peak(pid)
    base = rss(pid)
    r = predict(srv.url, ico, "image/x-icon")
    assert r.status_code == 415, r.text
    assert "ICO" in r.json()["error"] and "JPEG, PNG, WebP, BMP or GIF" in r.json()["error"]
    grew = peak_rss(pid) - base
    assert grew < 32 * MiB, f"peak resident memory rose {grew / MiB:.0f} MiB"  # main: +1.5 GB


@pytest.mark.parametrize(
    "fmt", ["ICO", "TIFF", "JPEG2000", "PPM", "PCX", "QOI", "DDS", "ICNS", "SGI", "EPS"]
)
def test_formats_outside_the_allowlist_get_415(fmt):
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, fmt)
    with pytest.raises(ImageError) as e:
        Preprocessor(1, 28, 28, (0.0,), (1.0,), 10**6)(buf.getvalue())
    assert e.value.status == 415 and fmt in str(e.value)


def test_tiff_through_the_api_gets_415(srv):
    buf = io.BytesIO()
    Image.new("L", (28, 28)).save(buf, "TIFF")
    r = predict(srv.url, buf.getvalue(), "image/tiff")
    assert r.status_code == 415 and "TIFF" in r.json()["error"]


def _huge_headers() -> dict[str, bytes]:
    """Each allowed format with a header declaring far more pixels than its data holds."""

    def save(im: Image.Image, fmt: str, **kw) -> bytearray:
        b = io.BytesIO()
        im.save(b, fmt, **kw)
        return bytearray(b.getvalue())

    jpeg = save(Image.new("RGB", (16, 16)), "JPEG")
    i = jpeg.index(b"\xff\xc0")
    jpeg[i + 5 : i + 9] = struct.pack(">HH", 40_000, 40_000)
    gif = save(Image.new("P", (16, 16)), "GIF")
    gif[6:10] = struct.pack("<HH", 40_000, 40_000)
    i = gif.index(b"\x2c")
    gif[i + 5 : i + 9] = struct.pack("<HH", 40_000, 40_000)
    bmp = save(Image.new("RGB", (16, 16)), "BMP")
    bmp[18:26] = struct.pack("<ii", 40_000, 40_000)
    webp = save(Image.new("RGB", (16, 16)), "WEBP", lossless=True)
    i = webp.index(b"VP8L") + 9  # after the chunk header and the 0x2f signature
    bits = struct.unpack("<I", bytes(webp[i : i + 4]))[0] & ~((1 << 28) - 1)
    webp[i : i + 4] = struct.pack("<I", bits | 16382 | (16382 << 14))  # 16383²
    return {
        "PNG": bomb_png(40_000),
        "JPEG": bytes(jpeg),
        "GIF": bytes(gif),
        "BMP": bytes(bmp),
        "WEBP": bytes(webp),
    }


def test_the_header_check_allocates_no_pixels_for_any_allowed_format():
    pre = Preprocessor(3, 28, 28, (0.0,) * 3, (1.0,) * 3, 2**40)  # no pixel cap: only the cost
    me = psutil.Process()
    for fmt, data in _huge_headers().items():
        before = me.memory_info().rss
        ins = pre.inspect(data)
        assert ins.format == fmt
        side = 16_383 if fmt == "WEBP" else 40_000
        if fmt != "JPEG":  # JPEG is decoded at 1/8 scale: the target is far smaller
            assert (ins.width, ins.height) == (side, side)
        assert ins.cost_bytes >= ins.width * ins.height
        assert me.memory_info().rss - before < 16 * MiB, fmt
    with pytest.raises(ImageError) as e:
        Preprocessor(1, 28, 28, (0.0,), (1.0,), 40_000_000).inspect(bomb_png(40_000))
    assert e.value.status == 413


COST_PROBE = r"""
import ctypes, io, json, sys
from pathlib import Path
import numpy as np
from PIL import Image
from server.preprocess import Preprocessor
libc = ctypes.CDLL("libc.so.6")
def kb(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
S = 1500
rng = np.random.default_rng(0)
noise = Image.fromarray((rng.random((S // 8, S // 8, 4)) * 255).astype(np.uint8), "RGBA")
rgba = noise.resize((S, S))
pal = rgba.convert("RGB").convert("P")
cases = [("L", "PNG", rgba.convert("L")), ("RGB", "PNG", rgba.convert("RGB")),
         ("RGBA", "PNG", rgba), ("P", "GIF", pal), ("RGB", "WEBP", rgba.convert("RGB")),
         ("RGB", "BMP", rgba.convert("RGB")), ("I;16", "PNG", Image.fromarray(
             np.asarray(rgba.convert("L")).astype(np.uint16) * 257)),
         ("RGB", "JPEG", rgba.convert("RGB"))]
files = []
for mode, fmt, im in cases:
    b = io.BytesIO(); im.save(b, fmt); files.append((mode, fmt, b.getvalue()))
del cases, rgba, pal, noise, im
out = []
for ch in (1, 3):
    pre = Preprocessor(ch, 28, 28, (0.0,) * ch, (1.0,) * ch, 10**9)
    for mode, fmt, data in files:
        pre(data)  # warm the codec
        ins = pre.inspect(data)
        libc.malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        base = kb("VmRSS")
        pre.decode_inspected(ins)
        out.append([fmt, mode, ch, kb("VmHWM") - base, ins.cost_bytes])
print(json.dumps(out))
"""


def test_decode_cost_from_the_header_bounds_the_measured_peak():
    """The reserved cost is honest: at least the peak resident memory a decode really adds
    (freshly trimmed heap, peak reset), and not wildly more."""
    out = subprocess.run(
        [sys.executable, "-c", COST_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    for fmt, mode, ch, peak, cost in json.loads(out.stdout):
        what = f"{fmt} {mode} → {ch} channel(s): peak {peak / MiB:.1f} MiB, cost {cost / MiB:.1f}"
        assert peak <= cost + 2 * MiB, what
        assert cost <= 2 * peak + 10 * MiB, what


# --- the decode budget ----------------------------------------------------------------------


def test_budget_is_fifo_refuses_the_oversized_and_gives_up_at_the_deadline():
    async def main() -> None:
        b = DecodeBudget(100)
        with pytest.raises(ImageError) as e:
            await b.acquire(101, time.monotonic() + 1)
        assert e.value.status == 413 and "decode budget" in str(e.value)
        order: list[str] = []

        async def take(name: str, n: int, hold: float) -> None:
            async with b.reserve(n, time.monotonic() + 5):
                order.append(name)
                await asyncio.sleep(hold)

        first = asyncio.create_task(take("a", 70, 0.05))
        await asyncio.sleep(0)
        waiting = [asyncio.create_task(take(n, 60, 0.01)) for n in ("b", "c")]
        await asyncio.sleep(0)
        small = asyncio.create_task(take("small", 3, 0))  # ≤ 1/32 and fits: goes at once
        await asyncio.gather(first, small, *waiting)
        assert order == ["a", "small", "b", "c"] and b.free == 100
        async with b.reserve(90, time.monotonic() + 5):
            with pytest.raises(BudgetBusy) as busy:
                await b.acquire(50, time.monotonic() + 0.05)
            assert busy.value.retry_after_s >= 1 and not b._waiters
        assert b.free == 100

    asyncio.run(main())


def test_decode_admitted_matches_the_preprocessor_and_returns_every_byte(digit):
    pre = Preprocessor(1, 28, 28, (0.1,), (0.3,), 40_000_000)
    big = png(Image.new("RGBA", (1000, 1000), (90, 90, 90, 200)))  # 9 MB to decode

    async def main() -> None:
        budget = DecodeBudget(64 * MiB)
        with ThreadPoolExecutor(2) as pool:
            soon = time.monotonic() + 10
            for data in (digit, big):
                x = await decode_admitted(pool, pre, budget, data, soon)
                assert torch.equal(x, pre(data)) and budget.free == budget.total
            wide = png(Image.new("L", (4000, 20)))
            padded = wide[:-12] + b"\0" * 20_000 + wide[-12:]  # junk after IDAT: ignored
            assert len(padded) > INLINE_INSPECT_BYTES
            assert torch.equal(await decode_admitted(pool, pre, budget, padded, soon), pre(wide))
            with pytest.raises(ImageError) as e:
                await decode_admitted(pool, pre, DecodeBudget(4 * MiB), big, soon)
            assert e.value.status == 413
            async with budget.reserve(60 * MiB, soon):  # the budget is held: wait, then give up
                with pytest.raises(BudgetBusy):
                    await decode_admitted(pool, pre, budget, big, time.monotonic() + 0.05)
            assert budget.free == budget.total and not budget._waiters

    asyncio.run(main())


def test_a_requests_only_small_image_decodes_on_the_loop_and_a_large_one_in_the_pool(digit):
    pre = Preprocessor(1, 28, 28, (0.1,), (0.3,), 40_000_000)
    large = png(Image.new("L", (300, 300), 90))  # small file, 90 000 pixels to decode
    assert len(large) <= INLINE_INSPECT_BYTES

    class Recording(ThreadPoolExecutor):
        used = 0

        def submit(self, fn, /, *args, **kwargs):
            Recording.used += 1
            return super().submit(fn, *args, **kwargs)

    async def main() -> None:
        budget = DecodeBudget(64 * MiB)
        with Recording(1) as pool:
            soon = time.monotonic() + 10
            x = await decode_admitted(pool, pre, budget, digit, soon, inline=True)
            assert torch.equal(x, pre(digit)) and Recording.used == 0  # decoded right here
            assert budget.free == budget.total
            y = await decode_admitted(pool, pre, budget, large, soon, inline=True)
            assert torch.equal(y, pre(large)) and Recording.used == 1  # too costly: the pool
            await decode_admitted(pool, pre, budget, digit, soon)  # not inline: the pool
            assert Recording.used == 2 and budget.free == budget.total

    asyncio.run(main())


def test_a_decode_past_its_deadline_answers_504_and_holds_its_bytes_until_it_ends(digit):
    from server.admission import DecodeDeadline

    pre = Preprocessor(1, 28, 28, (0.1,), (0.3,), 40_000_000)
    slow = Preprocessor(1, 28, 28, (0.1,), (0.3,), 40_000_000)
    busy, running = threading.Event(), threading.Event()

    def decode_slowly(ins):
        running.set()
        busy.wait(5)  # a decode that outlives its request
        return pre.decode_inspected(ins)

    object.__setattr__(slow, "decode_inspected", decode_slowly)

    async def main() -> None:
        budget = DecodeBudget(64 * MiB)
        with ThreadPoolExecutor(1) as pool:
            blocker = pool.submit(busy.wait, 5)  # the pool is busy: a decode waits its turn
            with pytest.raises(DecodeDeadline):
                await decode_admitted(pool, pre, budget, digit, time.monotonic() + 0.05)
            await asyncio.sleep(0.01)
            assert budget.free == budget.total  # never started: cancelled, its bytes back
            busy.set()
            await asyncio.wrap_future(blocker)
            busy.clear()
            with pytest.raises(DecodeDeadline):  # started, then its deadline passed
                await decode_admitted(pool, slow, budget, digit, time.monotonic() + 0.1)
            assert running.is_set() and budget.free < budget.total  # still decoding: held
            busy.set()
            for _ in range(100):
                if budget.free == budget.total:
                    break
                await asyncio.sleep(0.01)
            assert budget.free == budget.total  # released when the decode really ended
            x = await decode_admitted(pool, pre, budget, digit, time.monotonic() + 5)
            assert torch.equal(x, pre(digit)) and budget.free == budget.total

    asyncio.run(main())


def test_concurrent_large_images_are_bounded_by_the_budget_and_ordinary_requests_go_on(srv, digit):
    big = png(Image.new("RGBA", (3000, 3000), (90, 90, 90, 200)))  # 82 MB to decode: 2 fit
    too_big = png(Image.new("RGBA", (6300, 6300), (90, 90, 90, 200)))  # 357 MB > the budget
    pid = srv.proc.pid
    assert predict(srv.url, digit).status_code == 200
    base = rss(pid)  # before any large image: main's freed heap would hide its peak otherwise
    reset_peak(pid)
    r = predict(srv.url, too_big)
    assert r.status_code == 413 and f"decode budget of {BUDGET_MB} MB" in r.json()["error"]
    statuses: list[int] = []

    def attacker() -> None:
        for _ in range(2):
            statuses.append(predict(srv.url, big).status_code)

    threads = [threading.Thread(target=attacker) for _ in range(8)]
    for t in threads:
        t.start()
    ordinary = []
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        while any(t.is_alive() for t in threads) and len(ordinary) < 200:
            r = c.post("/predict", content=digit, headers={"content-type": "image/png"})
            ordinary.append(r.status_code)
            assert c.get("/healthz").status_code == 200
    for t in threads:
        t.join(60)
    peak = peak_rss(pid) - base
    assert ordinary and set(ordinary) == {200}, ordinary
    assert set(statuses) <= {200, 429} and statuses.count(200) >= 8, statuses
    # The budget plus request bodies and per-request objects; main decoded the 6300² image.
    assert peak < (BUDGET_MB + 60) * MiB, f"peak rose {peak / MiB:.0f} MiB"
    time.sleep(0.3)
    after = rss(pid) - base
    assert after < 48 * MiB, f"{after / MiB:.0f} MiB still resident after the attack"


# --- connections -------------------------------------------------------------------------------


def test_idle_slow_header_and_slow_body_connections_are_cut_off(srv, digit):
    idle = connect(srv)
    slow_headers = connect(srv)  # an invalid request ID: the 408 carries a new one
    slow_headers.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Request-ID: a b\r\nContent-Ty")
    slow_body = connect(srv)
    slow_body.sendall(
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"X-Request-ID: slow-b\r\nContent-Length: 100000\r\n\r\n\x89PNG"
    )
    assert predict(srv.url, digit).status_code == 200  # served meanwhile
    assert read_all(idle) == b""  # closed, never answered (socket timeout 5 s: raises)
    got = read_all(slow_headers)
    assert got.startswith(b"HTTP/1.1 408") and _rid(got) != "a b", got
    assert re.fullmatch("[0-9a-f]{32}", _rid(got))
    got = read_all(slow_body)
    assert got.startswith(b"HTTP/1.1 408") and _rid(got) == "slow-b", got
    assert predict(srv.url, digit).status_code == 200


def _answer_or_closed(s: socket.socket) -> bytes:
    try:
        return read_all(s)
    except ConnectionResetError:
        return b""


def _rid(answer: bytes) -> str:
    """The X-Request-ID of a raw HTTP answer ('' if it has none)."""
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    m = re.search(r"^x-request-id: (.*)$", head, re.IGNORECASE | re.MULTILINE)
    return m.group(1).strip() if m else ""


def test_a_1mb_header_or_too_many_headers_get_431(srv):
    s = connect(srv)
    with contextlib.suppress(OSError):  # closed while we were still sending: refused too
        big = b"X-Request-ID: big-h\r\nX-Big: " + b"a" * 2**20
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n\r\n")
    got = _answer_or_closed(s)
    assert got == b"" or got.startswith(b"HTTP/1.1 431"), got[:80]
    assert got == b"" or _rid(got) == "big-h", got[:200]  # parsed before the cut: kept
    many = b"".join(b"X-H%d: 1\r\n" % i for i in range(150))
    s = connect(srv)
    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-ID: many-1\r\n" + many + b"\r\n")
    got = _answer_or_closed(s)
    assert got.startswith(b"HTTP/1.1 431") and _rid(got) == "many-1", got[:200]
    assert httpx.get(srv.url + "/healthz").status_code == 200


def test_chunked_over_cap_json_gets_413(srv):
    def chunks():
        yield b'{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": ['
        for _ in range(300):
            yield b"0.0, " * 2000  # 10 kB each: 3 MB in all, over the 2 MiB cap

    r = httpx.post(
        srv.url + "/v2/models/small_cnn/infer",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413, r.text  # main: 400
    assert "limit" in r.json()["error"]


def test_request_id_is_echoed_validated_and_logged(srv):
    r = httpx.get(srv.url + "/healthz", headers={"X-Request-ID": "edge-7:a.b_c"})
    assert r.headers["x-request-id"] == "edge-7:a.b_c"
    for bad in ("has space", "x" * 129, "<script>", ""):
        r = httpx.get(srv.url + "/healthz", headers={"X-Request-ID": bad})
        assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"]), bad
    r = httpx.get(srv.url + "/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])
    over = httpx.post(
        srv.url + "/predict",
        content=b"\0" * (3 * MiB),
        headers={"content-type": "image/png", "X-Request-ID": "big-1"},
    )
    assert over.status_code == 413 and over.headers["x-request-id"] == "big-1"
    bad = predict(srv.url, b"junk", **{"X-Request-ID": "bad-2"})
    assert bad.status_code == 400 and bad.headers["x-request-id"] == "bad-2"
    time.sleep(0.1)
    logged = srv.output()
    assert '"request_id": "edge-7:a.b_c"' in logged and '"request_id": "big-1"' in logged


# --- a low descriptor limit ------------------------------------------------------------------


def test_many_idle_sockets_under_a_low_fd_limit_and_the_request_cap_spare_health(digit):
    env = {"LCS_MAX_CONCURRENT_REQUESTS": "2", "LCS_BODY_TIMEOUT_S": "30"}
    with server(env, nofile=256) as s:
        limits = Path(f"/proc/{s.proc.pid}/limits").read_text()
        assert re.search(r"Max open files\s+256\s+256\s", limits), limits
        idle = [connect(s) for _ in range(400)]  # more than the daemon has descriptors
        try:
            for _ in range(3):
                assert httpx.get(s.url + "/healthz", timeout=5).status_code == 200
                assert predict(s.url, digit, timeout=5).status_code == 200
        finally:
            for sock in idle:
                sock.close()
        held = []
        for _ in range(2):  # two requests in progress: the request cap
            h = connect(s)
            h.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                b"Content-Length: 1000\r\n\r\n"
            )
            held.append(h)
        time.sleep(0.2)
        r = predict(s.url, digit, timeout=5, **{"X-Request-ID": "busy-1"})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.headers["x-request-id"] == "busy-1"
        assert httpx.get(s.url + "/healthz", timeout=5).status_code == 200
        assert httpx.get(s.url + "/readyz", timeout=5).status_code == 200
        for h in held:
            h.close()
        deadline = time.monotonic() + 10
        while predict(s.url, digit, timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "the request cap was never released"
            time.sleep(0.05)


# --- the deadline covers reading the request; connection-layer answers carry request IDs ---

DEADLINE_S = 2
DEADLINE_ENV = {
    "LCS_REQUEST_TIMEOUT_S": str(DEADLINE_S),
    "LCS_HEADER_TIMEOUT_S": "30",  # far beyond the deadline: only the deadline can cut
    "LCS_BODY_TIMEOUT_S": "30",
    "LCS_MAX_CONNECTIONS": "8",
}


def test_request_deadline_counts_from_the_arrival_the_connection_layer_stamped():
    assert request_deadline({"state": {ARRIVAL: 100.0}}, 2.5) == 102.5
    seen: list[float] = []

    async def app(scope, receive, send) -> None:
        seen.append(scope["state"][ARRIVAL])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def call(state: dict) -> None:
        scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "state": state}

        async def send(_: dict) -> None:
            pass

        await RequestLog(app, Metrics())(scope, None, send)

    before = time.monotonic()
    asyncio.run(call({ARRIVAL: 7.0}))  # stamped by the connection layer: kept
    asyncio.run(call({}))  # in-process, no connection layer: stamped on entry
    assert seen[0] == 7.0 and before <= seen[1] <= time.monotonic()


def _head(s: socket.socket) -> bytes:
    out = b""
    while b"\r\n\r\n" not in out:
        chunk = s.recv(1)
        assert chunk, out
        out += chunk
    return out


def test_the_deadline_covers_the_body_and_every_connection_layer_answer_has_an_id(digit):
    """A body trickled in within the body timeout but after the deadline: main read it all,
    only then started the deadline and answered 200 (/v2). The connection-cap 503 (nothing
    parsed: a new ID) and the 408s (the client's ID) carry X-Request-ID."""
    one = {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.5] * 784}
    v2 = json.dumps({"inputs": [one]}).encode()
    with server(DEADLINE_ENV) as s:
        t = connect(s, 10)
        t.sendall(
            b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nX-Request-ID: trickle-1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(v2)
        )
        held = []  # with the trickle, 8 requests in progress: the cap, nothing idle to evict
        for i in range(7):
            h = connect(s, 10)
            h.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nX-Request-ID: held-%d\r\n"
                b"Content-Type: image/png\r\nContent-Length: 1000\r\n"
                b"Expect: 100-continue\r\n\r\n" % i
            )
            assert _head(h).startswith(b"HTTP/1.1 100")  # the app is reading its body
            held.append(h)
        got = _answer_or_closed(connect(s, 10))
        assert got.startswith(b"HTTP/1.1 503"), got[:300]
        assert re.fullmatch("[0-9a-f]{32}", _rid(got)), got[:300]
        step = len(v2) // 6 + 1
        for i in range(6):  # the whole body by 1.5 × the deadline, long before 30 s
            if select.select([t], [], [], DEADLINE_S / 4)[0]:
                break  # answered (and closed): stop sending
            t.sendall(v2[i * step : (i + 1) * step])
        got = _answer_or_closed(t)
        assert got.startswith(b"HTTP/1.1 408") and _rid(got) == "trickle-1", got[:300]
        for i, h in enumerate(held):  # cut by the deadline (the socket timeout is 10 s)
            got = _answer_or_closed(h)
            assert got.startswith(b"HTTP/1.1 408") and _rid(got) == f"held-{i}", got[:300]
        assert predict(s.url, digit).status_code == 200
        time.sleep(0.1)
        lines = [json.loads(x) for x in s.output().splitlines() if x.startswith("{")]
    logged = {x["request_id"]: x["status"] for x in lines if x.get("message") == "request"}
    assert logged["trickle-1"] == 408 and logged["held-0"] == 408  # as answered, not the app's


# --- consistent limits and the audit log ---------------------------------------------------


def test_more_images_than_the_queue_can_hold_get_413_naming_the_limit_never_429(srv):
    """64 is the queue and the per-request cap: 65 could never be served, so retrying a 429
    (what main answered) would go on forever."""
    shape = [65, 1, 28, 28]
    body = {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32",
                        "data": [0.0] * (65 * 784)}]}  # fmt: skip
    r = httpx.post(srv.url + "/v2/models/digits/infer", json=body, timeout=30)
    assert r.status_code == 413 and "64" in r.json()["error"]
    body["inputs"][0]["shape"] = [64, 1, 28, 28]
    body["inputs"][0]["data"] = [0.0] * (64 * 784)
    r = httpx.post(srv.url + "/v2/models/digits/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("value", ["1" + "0" * 400, "1e999", "NaN", "-Infinity"])
def test_numbers_that_do_not_fit_get_422(srv, value):
    data = ", ".join(["0.5"] * 783 + [value])
    text = '{"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", '
    text += f'"data": [{data}]}}]}}'
    r = httpx.post(
        srv.url + "/v2/models/digits/infer",
        content=text,
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 422, r.text
    assert "Traceback" not in srv.output()


def test_the_audit_log_names_the_socket_peer_not_what_the_client_claims(srv):
    forged = "token:<script>evil"
    r = httpx.put(
        srv.url + "/level",
        json={"mode": "auto", "reason": "audit test"},
        headers={"X-Forwarded-For": forged},
        timeout=30,
    )
    assert r.status_code == 200, r.text  # no token configured: loopback is the operator
    lines = [json.loads(x) for x in srv.output().splitlines() if x.startswith("{")]
    audit = [x for x in lines if x.get("message") == "operator policy"]
    assert audit and audit[-1]["who"] == "loopback:127.0.0.1"
    assert "evil" not in srv.output()


def test_get_level_without_a_token_omits_the_operators_address_and_reason(tmp_path):
    env = {**ATTACK_ENV, "LCS_OPERATOR_TOKEN": "audit-token"}
    with server(env) as s:
        auth = {"Authorization": "Bearer audit-token"}
        r = httpx.put(s.url + "/level", json={"mode": "auto", "reason": "night shift"},
                      headers=auth, timeout=30)  # fmt: skip
        assert r.status_code == 200
        public = httpx.get(s.url + "/level", timeout=30).json()["policy"]
        private = httpx.get(s.url + "/level", headers=auth, timeout=30).json()["policy"]
    assert public["set_by"] == "token" and "reason" not in public
    assert private["set_by"] == "token:127.0.0.1" and private["reason"] == "night shift"
