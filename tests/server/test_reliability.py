"""Hostile input, overload, broken clients and broken checkpoints against a real server."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import psutil
import pytest
from PIL import Image

from server.preprocess import Preprocessor
from tests.helpers import ROOT, digits, encode, live_server, make_checkpoint
from tests.server.hostile import corpus

pytestmark = pytest.mark.integration


def post(url: str, body: bytes, ctype: str) -> httpx.Response:
    return httpx.post(url + "/predict", content=body, headers={"content-type": ctype}, timeout=30)


def test_hostile_corpus_gets_predictions_or_clear_4xx_with_bounded_memory():
    cases = corpus()
    with live_server({"LCS_CONTROLLER_ENABLED": "0"}) as srv:
        proc = psutil.Process(srv.proc.pid)
        for _name, body, ctype, _expected in cases:  # warm every code path once
            post(srv.url, body, ctype)
        rss0 = proc.memory_info().rss
        for _ in range(3):
            for name, body, ctype, expected in cases:
                r = post(srv.url, body, ctype)
                if expected == "ok":
                    assert r.status_code == 200, (name, r.text)
                    assert len(r.json()["predictions"]) == 5
                else:
                    assert r.status_code == expected, (name, r.status_code, r.text)
                    err = r.json()["error"]
                    assert err and "Traceback" not in err and "/work" not in err, (name, err)
        growth = proc.memory_info().rss - rss0
        assert httpx.get(srv.url + "/readyz").status_code == 200
    assert growth < 64 * 2**20, f"resident memory grew {growth / 2**20:.1f} MiB"


def test_exif_orientation_is_applied():
    arr = np.zeros((28, 28), np.uint8)
    arr[:, :7] = 255  # a bar on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90° clockwise: the bar ends up on top
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", exif=exif)
    pre = Preprocessor(1, 28, 28, (0.0,), (1.0,), 10**6)
    x = pre(buf.getvalue())[0]
    assert x[:7].mean() > 0.9 and x[-7:].mean() < 0.1


def test_overload_gets_429_with_retry_after_and_accepted_requests_complete(tmp_path):
    ckpt = make_checkpoint(tmp_path / "r18.safetensors", "resnet18")  # ~50 ms per forward
    env = {
        "LCS_CHECKPOINT": str(ckpt),
        "LCS_CONTROLLER_ENABLED": "0",
        "LCS_MAX_QUEUE": "4",
        "LCS_MAX_BATCH_SIZE": "1",
        "LCS_REQUEST_TIMEOUT_S": "30",
    }
    png = encode(digits(1)[0][0], "PNG", "RGB")
    with live_server(env, timeout=120) as srv:
        results: list[httpx.Response] = []
        lock = threading.Lock()

        def client():
            r = post(srv.url, png, "image/png")
            with lock:
                results.append(r)

        threads = [threading.Thread(target=client) for _ in range(24)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert httpx.get(srv.url + "/readyz").status_code == 200
    codes = [r.status_code for r in results]
    assert len(codes) == 24 and set(codes) <= {200, 429}
    assert codes.count(429) >= 1 and codes.count(200) >= 5
    for r in results:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "1" and "queue full" in r.json()["error"]


def test_clients_that_disconnect_mid_upload_or_mid_response():
    png = encode(digits(1)[0][0])
    with live_server({"LCS_CONTROLLER_ENABLED": "0"}) as srv:
        host, port = srv.url[7:].split(":")
        for _ in range(20):
            with socket.create_connection((host, int(port))) as s:  # mid-upload
                s.sendall(
                    b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                    b"Content-Length: 100000\r\n\r\n" + png[:50]
                )
            with socket.create_connection((host, int(port))) as s:  # before the response
                s.sendall(
                    b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                    + f"Content-Length: {len(png)}\r\n\r\n".encode()
                    + png
                )
                s.shutdown(socket.SHUT_WR)
        time.sleep(0.5)
        r = post(srv.url, png, "image/png")
        assert r.status_code == 200 and srv.proc.poll() is None
        assert "Traceback" not in srv.output()


@pytest.mark.parametrize("problem", ["truncated", "flipped-byte", "other-architecture"])
def test_broken_checkpoints_refuse_to_start(tmp_path, problem):
    good = make_checkpoint(tmp_path / "good.safetensors", "small_cnn")
    data = bytearray(good.read_bytes())
    bad = tmp_path / "bad.safetensors"
    if problem == "truncated":
        bad.write_bytes(bytes(data[: len(data) - 1000]))
    elif problem == "flipped-byte":
        data[-50] ^= 0xFF
        bad.write_bytes(bytes(data))
    else:
        from models import checkpoint

        net, meta, _ = checkpoint.load(good)
        meta.arch = "cpreresnet20"
        meta.input_size = [3, 32, 32]
        checkpoint.save(bad, net, meta)  # valid file, tensors of the wrong network
    r = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--checkpoint", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    message = r.stderr.strip().splitlines()
    assert len(message) == 1 and str(bad) in message[0]
    assert {
        "truncated": "truncated",
        "flipped-byte": "sha256",
        "other-architecture": "does not fit",
    }[problem] in message[0]


def test_security_defaults():
    token = "tok-" + "x" * 20
    with live_server({"LCS_CONTROLLER_ENABLED": "0", "LCS_OPERATOR_TOKEN": token}) as srv:
        c = httpx.Client(base_url=srv.url)
        assert c.put("/level", json={"mode": "fixed", "gamma": 0.5}).status_code == 401
        assert (
            c.put(
                "/level",
                json={"mode": "fixed", "gamma": 0.5},
                headers={"Authorization": "Bearer " + token[:-1]},
            ).status_code
            == 403
        )
        r = c.put(
            "/level",
            json={"mode": "fixed", "gamma": 0.5, "reason": "test"},
            headers={"Authorization": "Bearer " + token},
        )
        assert r.status_code == 200
        pre = c.options(
            "/predict",
            headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert "access-control-allow-origin" not in pre.headers  # CORS closed by default
        huge = c.post("/predict", content=b"x" * (9 * 2**20), headers={"content-type": "image/png"})
        assert huge.status_code == 413  # the body cap is on by default (8 MiB)
        log = srv.output()
    assert token not in log and token not in r.text
    assert "token:" in log  # who changed the level is logged, never the token itself
