"""Hog reaction: `stress-ng --cpu N` under paced traffic; time to compress and to recover and the
daemon's CPU during the hog, `share` objective vs `latency` objective vs pinned at full width."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.common import save
from tests.helpers import digits, encode, live_server, make_checkpoint

MODES = ("share", "latency", "pinned")


class Traffic:
    """One client thread: paced requests to one model; (time sent, latency s, α served)."""

    def __init__(self, url: str, model: str, png: bytes, rate: float) -> None:
        self.url, self.model, self.png, self.period = url, model, png, 1.0 / rate
        self.samples: list[tuple[float, float, float]] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(40)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            nxt = time.monotonic()
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    r = c.post(
                        f"/models/{self.model}/predict",
                        content=self.png,
                        headers={"content-type": "image/png"},
                    )
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    self.samples.append((t0, time.monotonic() - t0, r.json()["level"]["alpha"]))
                else:
                    self.errors += 1
                nxt = max(nxt + self.period, time.monotonic())
                self._stop.wait(nxt - time.monotonic())


class Sampler:
    """A thread reading, every `period_s`, each model's served α and each daemon's CPU
    seconds (process tree, psutil) and the machine's idle seconds (/proc/stat)."""

    def __init__(self, urls: dict[str, str], pids: list[int], period_s: float = 0.1):
        self.urls, self.period = urls, period_s  # model → the URL of the daemon serving it
        self.procs = [psutil.Process(p) for p in pids]
        self.rows: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(20)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as c:
            while not self._stop.is_set():
                row: dict[str, Any] = {"t": time.monotonic(), "cpu_s": cpu_seconds(self.procs)}
                row["idle_s"] = idle_seconds()
                for m, url in self.urls.items():
                    with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                        row[m] = c.get(f"{url}/models/{m}/level").json()["alpha"]
                self.rows.append(row)
                self._stop.wait(self.period)


def cpu_seconds(procs: list[psutil.Process]) -> float:
    """CPU seconds so far of these processes and their children (the tier-2 exporter)."""
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            for q in [p, *p.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    t = q.cpu_times()
                    total += t.user + t.system
    return total


def idle_seconds() -> float:
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (f[3] + f[4]) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def hog(burners: int, seconds: float) -> Iterator[None]:
    """`stress-ng --cpu N` in its own process group, stopped (group and all) on exit."""
    if burners <= 0:
        yield
        return
    proc = subprocess.Popen(
        ["stress-ng", "--cpu", str(burners), "--timeout", f"{seconds + 30:.0f}s", "--quiet"],
        start_new_session=True,
        stderr=subprocess.DEVNULL,  # its "finished prematurely" when stopped early
    )
    try:
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def rate_of(rows: list[dict[str, Any]], key: str, t0: float, t1: float) -> float | None:
    """d(key)/dt between the samples nearest t0 and t1 (cores for CPU or idle seconds)."""
    inside = [r for r in rows if t0 <= r["t"] <= t1]
    if len(inside) < 2 or inside[-1]["t"] - inside[0]["t"] <= 0:
        return None
    return (inside[-1][key] - inside[0][key]) / (inside[-1]["t"] - inside[0]["t"])


def window(samples: list[tuple[float, float, float]], t0: float, t1: float) -> list[float]:
    return [s[1] for s in samples if t0 <= s[0] < t1]


def p95_ms(lat: list[float]) -> float | None:
    if len(lat) < 2:
        return None
    return 1e3 * statistics.quantiles(lat, n=20, method="inclusive")[18]


def run_mode(mode: str, ckpt: Path, png: bytes, args: argparse.Namespace) -> dict[str, Any]:
    env = {
        "LCS_MODEL": f"m={ckpt}",
        "LCS_LOG_LEVEL": "warning",
        "LCS_TIER2_ENABLED": "0",  # tier 1 only: the exporter's CPU is not the hog's effect
        "LCS_LATENCY_TARGET_MS": f"{args.target_ms}",
        "LCS_CONTROLLER_ENABLED": "0" if mode == "pinned" else "1",
        "LCS_CONTROLLER_OBJECTIVE": "latency" if mode == "latency" else "share",
    }
    with live_server(env, timeout=120) as srv:
        top = httpx.get(srv.url + "/models/m/level").json()["range"]["alpha"][1]
        traffic = Traffic(srv.url, "m", png, args.rate).start()
        sampler = Sampler({"m": srv.url}, [srv.proc.pid]).start()
        try:
            time.sleep(args.before)
            h0 = time.monotonic()
            with hog(args.burners, args.hog):
                time.sleep(args.hog)
            h1 = time.monotonic()
            time.sleep(args.after)
        finally:
            traffic.stop()
            sampler.stop()
    rows = sampler.rows
    before = [r["m"] for r in rows if r["t"] < h0 and "m" in r]
    # a reaction is a compression while the hog runs; recovery is counted only after one
    first_down = next(
        (r["t"] for r in rows if h0 <= r["t"] < h1 and r.get("m", top) < top - 1e-9), None
    )
    back = next((r["t"] for r in rows if r["t"] >= h1 and r.get("m", -1) >= top - 1e-9), None)
    during = [r["m"] for r in rows if h0 <= r["t"] < h1 and "m" in r]
    settled = h0 + min(2.0, args.hog / 2)  # after the reaction: what the daemon uses in the hog
    n_hog = len(window(traffic.samples, settled, h1))
    own = rate_of(rows, "cpu_s", settled, h1)
    out = {
        "mode": mode,
        "at_top_before": bool(before) and before[-1] >= top - 1e-9,
        "compress_s": None if first_down is None else first_down - h0,
        "recover_s": None if back is None or first_down is None else back - h1,
        "min_alpha_hog": min(during) if during else None,
        "mean_alpha_hog": statistics.fmean(during) if during else None,
        "cpu_cores_before": rate_of(rows, "cpu_s", h0 - max(args.before - 1, args.before / 2), h0),
        "cpu_cores_hog": own,
        "cpu_ms_per_request_hog": None
        if own is None or not n_hog
        else 1e3 * own * (h1 - settled) / n_hog,
        "idle_cores_before": rate_of(
            rows, "idle_s", h0 - max(args.before - 1, args.before / 2), h0
        ),
        "idle_cores_hog": rate_of(rows, "idle_s", settled, h1),
        "idle_cores_after": rate_of(rows, "idle_s", h1, h1 + args.after),
        "p95_ms_hog": p95_ms(window(traffic.samples, settled, h1)),
        "requests": len(traffic.samples),
        "errors": traffic.errors,
        "trace": [
            (round(r["t"] - h0, 2), r["m"]) for r in rows if "m" in r
        ],  # α against time from the hog's start, for the plot
        "hog_s": h1 - h0,
    }
    print(
        f"{mode:8} compress {fmt(out['compress_s'])} s  recover {fmt(out['recover_s'])} s  "
        f"daemon {fmt(own)} cores in the hog ({fmt(out['cpu_ms_per_request_hog'])} ms/request)  "
        f"idle before/hog/after {fmt(out['idle_cores_before'])}/{fmt(out['idle_cores_hog'])}/"
        f"{fmt(out['idle_cores_after'])}",
        flush=True,
    )
    return out


def fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--arch", default="cpreresnet20")
    p.add_argument("--rate", type=float, default=20.0, help="requests/s")
    p.add_argument("--burners", type=int, default=2)
    p.add_argument("--before", type=float, default=5.0, help="s of traffic before the hog")
    p.add_argument("--hog", type=float, default=10.0, help="s of hog")
    p.add_argument("--after", type=float, default=15.0, help="s of traffic after it")
    p.add_argument("--target-ms", type=float, default=50.0, help="the daemon's latency target")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    args = p.parse_args(argv)
    ckpt = make_checkpoint(Path(tempfile.mkdtemp()) / f"{args.arch}.safetensors", args.arch)
    png = encode(digits(1)[0][0], "PNG", "RGB")
    rows = [run_mode(m, ckpt, png, args) for m in args.modes]
    print("saved", save("hog", {"rows": rows, **vars(args)}))


if __name__ == "__main__":
    main()
