"""Several models per daemon: resident memory per extra model, time to replace one, and the
latency of requests while it is replaced against steady state (live daemons on loopback)."""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.common import save
from models.checkpoint import DEFAULT_CHECKPOINT
from tests.helpers import digits, encode, live_server, make_checkpoint

TOKEN = "bench"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUIET = {"LCS_CONTROLLER_ENABLED": "0", "LCS_LOG_LEVEL": "warning", "LCS_OPERATOR_TOKEN": TOKEN}


def checkpoint_for(arch: str, folder: Path) -> Path:
    if arch == "small_cnn":
        return DEFAULT_CHECKPOINT
    return make_checkpoint(folder / f"{arch}.safetensors", arch)


def memory(arch: str, counts: list[int], tier2: bool, folder: Path) -> list[dict[str, Any]]:
    """Resident memory of a daemon serving 1, 2, 3 … copies of one model, after warm-up
    (and, with tier 2, after each model's start-up level has its ONNX session)."""
    src = checkpoint_for(arch, folder)
    rows = []
    for n in counts:
        repo = folder / f"{arch}-{n}"
        repo.mkdir(exist_ok=True)
        for i in range(n):
            shutil.copy(src, repo / f"m{i}.safetensors")
        env = {**QUIET, "LCS_MODEL_REPOSITORY": str(repo), "LCS_TIER2_ENABLED": str(int(tier2))}
        with live_server(env, timeout=300) as srv:
            if tier2:
                wait_for_tier2(srv.url, [f"m{i}" for i in range(n)])
            proc = psutil.Process(srv.proc.pid)
            own = proc.memory_info().rss
            children = sum(c.memory_info().rss for c in proc.children(recursive=True))
        rows.append({"models": n, "rss_mb": own / 2**20, "children_mb": children / 2**20})
        print(f"{arch} tier2={tier2} models={n}: {own / 2**20:.0f} MB "
              f"(+{children / 2**20:.0f} MB export process)", flush=True)  # fmt: skip
    return rows


def wait_for_tier2(url: str, names: list[str], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    for name in names:
        while httpx.get(f"{url}/models/{name}/level", timeout=30).json()["tier"] != "onnx":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} never reached tier 2")
            time.sleep(0.2)


def replacement(arch: str, replacements: int, clients: int, folder: Path) -> dict[str, Any]:
    """Clients at steady load; the model is replaced `replacements` times in the middle.
    Latencies of requests that overlapped a replacement against those that did not."""
    src = checkpoint_for(arch, folder)
    repo = folder / f"{arch}-replace"
    repo.mkdir(exist_ok=True)
    shutil.copy(src, repo / "m.safetensors")
    png = encode(digits(1)[0][0], "PNG", "RGB" if arch != "small_cnn" else None)
    env = {**QUIET, "LCS_MODEL_REPOSITORY": str(repo), "LCS_TIER2_ENABLED": "0"}
    samples: list[tuple[float, float]] = []  # (start, seconds)
    windows: list[tuple[float, float]] = []  # replacements: (start, end)
    failures = 0
    stop = threading.Event()
    lock = threading.Lock()
    with live_server(env, timeout=300) as srv:

        def client() -> None:
            nonlocal failures
            with httpx.Client(base_url=srv.url, timeout=60) as c:
                while not stop.is_set():
                    t0 = time.monotonic()
                    r = c.post("/models/m/predict", content=png,
                               headers={"content-type": "image/png"})  # fmt: skip
                    with lock:
                        samples.append((t0, time.monotonic() - t0))
                        failures += r.status_code != 200

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads:
            t.start()
        time.sleep(3)  # steady state before the first replacement
        with httpx.Client(base_url=srv.url, timeout=300, headers=AUTH) as op:
            for _ in range(replacements):
                t0 = time.monotonic()
                r = op.post("/v2/repository/models/m/load")
                windows.append((t0, time.monotonic()))
                assert r.status_code == 200, r.text
                time.sleep(2)
        stop.set()
        for t in threads:
            t.join(60)
    during = [s for t0, s in samples if any(a <= t0 <= b for a, b in windows)]
    steady = [s for t0, s in samples if not any(a - 0.5 <= t0 <= b + 0.5 for a, b in windows)]
    out = {
        "arch": arch,
        "clients": clients,
        "replacements": replacements,
        "requests": len(samples),
        "failures": failures,
        "replace_s": [b - a for a, b in windows],
        "replace_median_s": statistics.median(b - a for a, b in windows),
        "steady": quantiles(steady),
        "during": quantiles(during),
    }
    print(
        f"{arch}: replace median {out['replace_median_s']:.2f} s; {len(samples)} requests, "
        f"{failures} failed; p50/p99 steady {out['steady']['p50_ms']:.1f}/"
        f"{out['steady']['p99_ms']:.1f} ms, during {out['during']['p50_ms']:.1f}/"
        f"{out['during']['p99_ms']:.1f} ms",
        flush=True,
    )
    return out


def quantiles(seconds: list[float]) -> dict[str, float]:
    if len(seconds) < 2:
        return {"n": len(seconds), "p50_ms": float("nan"), "p99_ms": float("nan")}
    q = statistics.quantiles(seconds, n=100, method="inclusive")
    return {"n": len(seconds), "p50_ms": 1e3 * q[49], "p99_ms": 1e3 * q[98]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--archs", nargs="+", default=["small_cnn", "resnet18"])
    p.add_argument("--counts", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--replacements", type=int, default=3)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--no-tier2", action="store_true", help="memory without tier 2 only")
    args = p.parse_args(argv)
    result: dict[str, Any] = {"memory": [], "replacement": []}
    with tempfile.TemporaryDirectory(prefix="lcs-bench-models-") as tmp:
        folder = Path(tmp)
        for arch in args.archs:
            for tier2 in (False,) if args.no_tier2 else (False, True):
                rows = memory(arch, args.counts, tier2, folder)
                extra = rows[-1]["models"] - rows[0]["models"]
                per_model = (rows[-1]["rss_mb"] - rows[0]["rss_mb"]) / extra if extra else None
                result["memory"].append(
                    {"arch": arch, "tier2": tier2, "rows": rows, "per_extra_model_mb": per_model}
                )
            result["replacement"].append(replacement(arch, args.replacements, args.clients, folder))
    save("models", result)


if __name__ == "__main__":
    main()
