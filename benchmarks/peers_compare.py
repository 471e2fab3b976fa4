"""This daemon against a plain FastAPI server and LitServe: same model, images, load generator."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import save
from benchmarks.load import hey, wait_for_tier
from tests.helpers import ROOT, digits, encode, free_port

BOUNDARY = "lcsbenchboundary"


def multipart(png: bytes) -> bytes:
    """One multipart/form-data body with the image in field "file": every server accepts it."""
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="digit.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        + png
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def start(name: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "LCS_PORT": str(port),
        "LCS_CONTROLLER_ENABLED": "0",
        "LCS_LOG_LEVEL": "warning",
        "LCS_MAX_QUEUE": "256",
    }
    cmd = {
        "lcs-serve": [sys.executable, "-m", "server.cli", "serve"],
        "plain-fastapi": [
            sys.executable,
            "-m",
            "benchmarks.peers.plain_server",
            "--port",
            str(port),
        ],
        "litserve": [sys.executable, "-m", "benchmarks.peers.litserve_server", "--port", str(port)],
    }[name]
    # Its own session: LitServe's worker processes outlive a signal to its main process alone.
    return subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the whole process group, then SIGKILL whatever is left of it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(1.0)  # the group's other members exit after the main process


def wait(url: str, path: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        try:
            if httpx.get(url + path, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--servers", nargs="+", default=["lcs-serve", "plain-fastapi", "litserve"])
    args = p.parse_args(argv)
    body = Path(tempfile.mkdtemp()) / "digit.multipart"
    body.write_bytes(multipart(encode(digits(1)[0][0])))
    ctype = f"multipart/form-data; boundary={BOUNDARY}"
    rows = []
    for name in args.servers:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start(name, port)
        try:
            wait(url, "/readyz" if name == "lcs-serve" else "/health", proc)
            check = httpx.post(
                url + "/predict", content=body.read_bytes(), headers={"content-type": ctype}
            )
            assert check.status_code == 200, (name, check.text[:200])
            hey(url + "/predict", body, 8, 300, content_type=ctype)  # warm-up
            # lcs-serve measured as it settles: on tier 2 unless LCS_TIER2_ENABLED=0.
            tier = wait_for_tier(url) if name == "lcs-serve" else None
            for c in args.concurrency:
                r = hey(url + "/predict", body, c, args.requests, content_type=ctype)
                rows.append({"server": name, **r} | ({"tier": tier} if tier else {}))
                print(
                    f"{name:14} c={c:<3} {r['rps']:7.0f} req/s  p50 {r['p50_ms']:7.2f} ms  "
                    f"p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}",
                    flush=True,
                )
        finally:
            stop(proc)
    print("saved", save("peers", {"rows": rows, "requests": args.requests}))


if __name__ == "__main__":
    main()
