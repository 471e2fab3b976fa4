"""Load generation with `hey` against a server on loopback: requests/s, percentiles, errors."""

from __future__ import annotations

import csv
import io
import shutil
import statistics
import subprocess
import time
from pathlib import Path

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
    latencies = sorted(float(r["response-time"]) for r in rows)
    ok = [r for r in rows if r["status-code"] == "200"]
    # hey's CSV has each request's offset from the start; the span gives the throughput.
    span = max(float(r["offset"]) + float(r["response-time"]) for r in rows) if rows else 1.0
    q = (
        statistics.quantiles(latencies, n=100, method="inclusive")
        if len(latencies) > 1
        else [0] * 99
    )
    return {
        "concurrency": concurrency,
        "requests": len(rows),
        "ok": len(ok),
        "errors": len(rows) - len(ok),
        "rps": len(ok) / span,
        "p50_ms": 1e3 * q[49],
        "p99_ms": 1e3 * q[98],
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
