"""Load generation on loopback, requests/s, percentiles and errors: hey (HTTP), h2load (gRPC)."""

from __future__ import annotations

import csv
import io
import re
import shutil
import statistics
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx


def hey(
    url: str,
    body: Path,
    concurrency: int,
    requests: int,
    timeout_s: int = 20,
    content_type: str = "image/png",
    extra: list[str] | None = None,
) -> dict[str, float]:
    """Run a bounded `hey` load (count and per-request timeout) and summarise its CSV."""
    exe = shutil.which("hey")
    if exe is None:
        raise SystemExit("hey is not installed: run `make system-deps` (apt-get install hey)")
    cmd = [
        exe,
        "-n",
        str(requests),
        "-c",
        str(concurrency),
        "-m",
        "POST",
        "-T",
        content_type,
        "-D",
        str(body),
        "-t",
        str(timeout_s),
        "-o",
        "csv",
        *(extra or []),
        url,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=requests * timeout_s)
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    ok = sum(r["status-code"] == "200" for r in rows)
    # hey's CSV has each request's offset from the start; the span gives the throughput.
    span = max(float(r["offset"]) + float(r["response-time"]) for r in rows) if rows else 1.0
    latencies = [float(r["response-time"]) for r in rows]
    return summary(concurrency, len(rows), ok, span, latencies)


def summary(
    concurrency: int, requests: int, ok: int, span_s: float, latencies_s: list[float]
) -> dict[str, Any]:
    """One load row, whichever client ran it: answers per second over the span, and the
    latency percentiles and mean in ms (0 with fewer than two latencies). The mean keeps
    what hey's 0.1 ms resolution rounds off a percentile."""
    q = (
        statistics.quantiles(sorted(latencies_s), n=100, method="inclusive")
        if len(latencies_s) > 1
        else [0] * 99
    )
    return {
        "concurrency": concurrency,
        "requests": requests,
        "ok": ok,
        "errors": requests - ok,
        "rps": ok / span_s,
        "p50_ms": 1e3 * q[49],
        "p99_ms": 1e3 * q[98],
        "mean_ms": 1e3 * statistics.fmean(latencies_s) if latencies_s else 0.0,
    }


def wait_for_tier(url: str, tier: str | None = None, timeout_s: float = 120) -> str:
    """Wait until lcs-serve answers on `tier` (default: tier 2 if it is on, else tier 1),
    and return it: tier 2 prepares a level in the background after the settle delay."""
    level = httpx.get(url + "/level").json()
    want = tier or ("torch" if level["tier2"] is None else "onnx")
    deadline = time.monotonic() + timeout_s
    while level["tier"] != want:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} never served on {want}")
        time.sleep(0.05)
        level = httpx.get(url + "/level").json()
    return want


def h2load_grpc(
    target: str,
    message: bytes,
    answer_bytes: int,
    concurrency: int,
    requests: int,
    timeout_s: int = 20,
) -> dict[str, Any]:
    """A bounded unary gRPC load with `h2load` (nghttp2's C client: a Python grpc client took
    0.3 of the machine's 2 cores at c = 8, beside the server it measures): `concurrency`
    connections of one stream each, POSTing one serialised request message to
    `target` (http://host:port/package.Service/Method). h2load counts HTTP 200s, and a gRPC
    error is an HTTP 200 whose status rides in its trailers with no message, so an answer
    is counted only by the bytes of DATA: every call is expected to return `answer_bytes`
    (the framed message one checked call returned), and the calls short of that total are
    errors."""
    exe = shutil.which("h2load")
    if exe is None:
        raise SystemExit("h2load is not installed: run `make system-deps` (nghttp2-client)")
    with tempfile.TemporaryDirectory(prefix="lcs-h2load-") as tmp:
        body, log = Path(tmp) / "body", Path(tmp) / "log"
        body.write_bytes(grpc_frame(message))
        cmd = [exe, "-n", str(requests), "-c", str(concurrency), "-m", "1", "-d", str(body),
               "-H", "content-type: application/grpc", "-H", "te: trailers",
               "--log-file", str(log), target]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=requests * timeout_s)
        rows = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    data = re.search(r"\((\d+)\) data", out.stdout)
    if data is None:
        raise RuntimeError(f"h2load gave no traffic line: {out.stdout[-500:]} {out.stderr[-500:]}")
    answered = int(data.group(1)) // answer_bytes
    starts = [int(r[0]) for r in rows]
    ends = [int(r[0]) + int(r[2]) for r in rows]
    ok = min(answered, sum(r[1] == "200" for r in rows))
    span = (max(ends) - min(starts)) / 1e6 if rows else 1.0
    latencies = [int(r[2]) / 1e6 for r in rows]
    return summary(concurrency, requests, ok, span, latencies) | {"client": "h2load"}


def grpc_frame(message: bytes) -> bytes:
    """gRPC's length-prefixed message: a 0 byte (not compressed), the length, the bytes."""
    return b"\0" + struct.pack(">I", len(message)) + message
