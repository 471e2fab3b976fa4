"""Requests/s and p50/p99 of the daemon at several concurrencies, with the split of a request."""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import save
from benchmarks.load import hey, wait_for_tier
from server.inference import OVERLAP_HOLD_S
from tests.helpers import digits, encode, live_server


def split(url: str, png: bytes, n: int = 300) -> dict[str, float]:
    """Median and mean time per stage of one request at concurrency 1, as the daemon reports
    it: decode, queue, forward, and `in_app`, its whole time from the route receiving the
    request to the response it returns (`…_mean` the means). `client_total` is httpx's round
    trip: it holds httpx's own ~0.7 ms too, so the report takes a request's total from hey at
    c = 1 instead."""
    parts: dict[str, list[float]] = {
        "client_total": [], "in_app": [], "decode": [], "queue": [], "forward": []
    }  # fmt: skip
    with httpx.Client(base_url=url) as c:
        # Right after concurrent load the inline gate stays closed for OVERLAP_HOLD_S (the
        # requests then queue for the inference thread): wait it out, then some untimed ones.
        time.sleep(2 * OVERLAP_HOLD_S)
        for _ in range(n // 2):
            c.post("/predict", content=png, headers={"content-type": "image/png"})
        for _ in range(n):
            t0 = time.perf_counter()
            r = c.post("/predict", content=png, headers={"content-type": "image/png"})
            parts["client_total"].append(1e3 * (time.perf_counter() - t0))
            body = r.json()
            parts["in_app"].append(body["latency_ms"])
            for k in ("decode", "queue", "forward"):
                parts[k].append(body["timing_ms"][k])
    medians = {k: statistics.median(v) for k, v in parts.items()}
    return medians | {f"{k}_mean": statistics.fmean(v) for k, v in parts.items()}


def settle(url: str, gamma: float, tier: str) -> None:
    """Pin γ, then wait until the tier under test serves it (tier 2 prepares in the background)."""
    httpx.put(url + "/level", json={"mode": "fixed", "gamma": gamma})
    wait_for_tier(url, tier)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--gammas", type=float, nargs="+", default=[1.0, 0.25])
    p.add_argument("--threads", default="2")
    p.add_argument(
        "--tiers",
        nargs="+",
        choices=["onnx", "torch"],
        default=["onnx", "torch"],
        help="one server per tier (torch: tier 2 off); their runs alternate",
    )
    p.add_argument("--rounds", type=int, default=2, help="runs per tier, γ and concurrency")
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
    with contextlib.ExitStack() as stack:
        servers = {
            tier: stack.enter_context(
                live_server(env | {"LCS_TIER2_ENABLED": "1" if tier == "onnx" else "0"})
            )
            for tier in args.tiers
        }
        for gamma in args.gammas:
            for tier, srv in servers.items():
                settle(srv.url, gamma, tier)
                hey(srv.url + "/predict", body, 8, 300)  # warm-up
                splits[f"{tier} {gamma:g}"] = split(srv.url, png)
            for c in args.concurrency:
                # Rounds alternate between the servers: load drift on the machine hits both.
                for _ in range(args.rounds):
                    for tier, srv in servers.items():
                        r = hey(srv.url + "/predict", body, c, args.requests)
                        rows.append(r | {"gamma": gamma, "tier": tier})
                        print(
                            f"{tier:>5} γ={gamma:<5} c={c:<3} {r['rps']:8.0f} req/s  "
                            f"p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:6.2f} ms  "
                            f"errors {r['errors']}",
                            flush=True,
                        )
            for tier in servers:
                s = splits[f"{tier} {gamma:g}"]
                print(
                    f"{tier:>5} γ={gamma:<5} split at c=1 (median ms): in the app "
                    f"{s['in_app']:.2f} = decode {s['decode']:.2f} + queue {s['queue']:.2f} + "
                    f"forward {s['forward']:.2f} + the rest; httpx round trip "
                    f"{s['client_total']:.2f}",
                    flush=True,
                )
    result: dict[str, object] = {"rows": rows, "split_ms": splits, "threads": args.threads}
    print("saved", save("server_load", result))


if __name__ == "__main__":
    main()
