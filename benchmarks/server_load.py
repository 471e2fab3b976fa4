"""Requests/s and p50/p99 of the daemon at several concurrencies, with the split of a request."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import save
from benchmarks.load import hey
from tests.helpers import digits, encode, live_server


def split(url: str, png: bytes, n: int = 300) -> dict[str, float]:
    """Median time per stage of one request at concurrency 1: HTTP is what is left over."""
    parts: dict[str, list[float]] = {"total": [], "decode": [], "queue": [], "forward": []}
    with httpx.Client(base_url=url) as c:
        for _ in range(n):
            t0 = time.perf_counter()
            r = c.post("/predict", content=png, headers={"content-type": "image/png"})
            parts["total"].append(1e3 * (time.perf_counter() - t0))
            for k in ("decode", "queue", "forward"):
                parts[k].append(r.json()["timing_ms"][k])
    med = {k: statistics.median(v) for k, v in parts.items()}
    med["http_and_framework"] = med["total"] - med["decode"] - med["queue"] - med["forward"]
    return med


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--gammas", type=float, nargs="+", default=[1.0, 0.25])
    p.add_argument("--threads", default="2")
    args = p.parse_args(argv)
    png = encode(digits(1)[0][0])
    body = Path(tempfile.mkdtemp()) / "digit.png"
    body.write_bytes(png)
    rows, splits = [], {}
    env = {
        "LCS_CONTROLLER_ENABLED": "0",
        "LCS_TORCH_THREADS": args.threads,
        "LCS_LOG_LEVEL": "warning",
        "LCS_MAX_QUEUE": "256",
    }
    with live_server(env) as srv:
        for gamma in args.gammas:
            httpx.put(srv.url + "/level", json={"mode": "fixed", "gamma": gamma})
            hey(srv.url + "/predict", body, 8, 300)  # warm-up
            splits[gamma] = split(srv.url, png)
            for c in args.concurrency:
                r = hey(srv.url + "/predict", body, c, args.requests) | {"gamma": gamma}
                rows.append(r)
                print(
                    f"γ={gamma:<5} c={c:<3} {r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.2f} ms"
                    f"  p99 {r['p99_ms']:6.2f} ms  errors {r['errors']}",
                    flush=True,
                )
            s = splits[gamma]
            print(
                f"γ={gamma:<5} split at c=1 (median ms): total {s['total']:.2f} = decode "
                f"{s['decode']:.2f} + queue {s['queue']:.2f} + forward {s['forward']:.2f} "
                f"+ HTTP/framework {s['http_and_framework']:.2f}",
                flush=True,
            )
    print("saved", save("server_load", {"rows": rows, "split_ms": splits, "threads": args.threads}))


if __name__ == "__main__":
    main()
