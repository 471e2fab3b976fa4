"""Soak: sustained load at concurrency 32 with level changes; resident memory growth and errors."""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

from benchmarks.common import save
from benchmarks.load import hey
from tests.helpers import digits, encode, live_server


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=32)
    args = p.parse_args(argv)
    body = Path(tempfile.mkdtemp()) / "digit.png"
    body.write_bytes(encode(digits(1)[0][0]))
    with live_server({"LCS_LOG_LEVEL": "warning", "LCS_MAX_QUEUE": "256"}) as srv:
        proc = psutil.Process(srv.proc.pid)
        stop = threading.Event()

        def switch_levels() -> None:  # the operator flips the level every 200 ms
            gammas = [1.0, 0.25, 0.625, 0.375, 0.875, 0.5]
            with httpx.Client(base_url=srv.url) as c:
                i = 0
                while not stop.is_set():
                    c.put("/level", json={"mode": "fixed", "gamma": gammas[i % len(gammas)]})
                    i += 1
                    time.sleep(0.2)

        switcher = threading.Thread(target=switch_levels)
        switcher.start()
        # Warm-up under the same conditions (level changes included), then the baseline.
        hey(srv.url + "/predict", body, args.concurrency, 5000)
        rss0 = proc.memory_info().rss
        rounds, end = [], time.monotonic() + 60 * args.minutes
        while time.monotonic() < end:
            r = hey(srv.url + "/predict", body, args.concurrency, 5000)
            r["rss_mb"] = proc.memory_info().rss / 1e6
            rounds.append(r)
            print(
                f"{len(rounds):3d}: {r['rps']:6.0f} req/s p99 {r['p99_ms']:6.1f} ms "
                f"errors {r['errors']} rss {r['rss_mb']:.1f} MB",
                flush=True,
            )
        stop.set()
        switcher.join()
        rss1 = proc.memory_info().rss
    growth = (rss1 - rss0) / rss0
    errors = sum(r["errors"] for r in rounds)
    print(
        f"resident memory after warm-up {rss0 / 1e6:.1f} MB → {rss1 / 1e6:.1f} MB "
        f"({100 * growth:+.1f} %, goal < 10 %); errors {errors} of "
        f"{sum(r['requests'] for r in rounds)}"
    )
    save(
        "soak",
        {
            "rounds": rounds,
            "rss_start_mb": rss0 / 1e6,
            "rss_end_mb": rss1 / 1e6,
            "growth": growth,
            "errors": errors,
        },
    )


if __name__ == "__main__":
    main()
