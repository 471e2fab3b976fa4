"""Soak: sustained load with level changes (memory growth, errors), or --attack: ordinary
clients at a steady rate while issue 20's attackers come and go (latency, errors, memory)."""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from benchmarks.attackers import Attackers, Target, attacks
from benchmarks.common import save
from benchmarks.load import hey
from tests.helpers import digits, encode, live_server
from tests.server.attack import peak_rss, reset_peak

LOADED = (
    "2-core development machine shared with other agents' jobs while this ran; attackers, "
    "ordinary clients and the daemon competed for the same 2 cores"
)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--minutes", type=float, default=None, help="default 5; with --attack 2")
    p.add_argument("--concurrency", type=int, default=None, help="default 32; --attack 8")
    p.add_argument("--attack", action="store_true", help="alternate calm and attack phases")
    p.add_argument("--phase-s", type=float, default=15.0, help="--attack: seconds per phase")
    p.add_argument("--rate", type=float, default=10.0, help="--attack: req/s per ordinary client")
    p.add_argument("--decode-budget-mb", type=float, default=200.0, help="--attack: the daemon's")
    p.add_argument("--note", default=LOADED, help="--attack: saved with the results")
    p.add_argument(
        "--only", default="", help="--attack: only attackers whose name contains this (to isolate)"
    )
    args = p.parse_args(argv)
    if args.attack:
        return attack_main(args)
    args.minutes = 5.0 if args.minutes is None else args.minutes
    args.concurrency = args.concurrency or 32
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


# --- under attack -----------------------------------------------------------------------------

# The daemon's connection limits, set explicitly (they are the defaults) so the attackers know
# how long a limit may take to cut them before they call a connection "held".
ATTACK_ENV = {
    "LCS_LOG_LEVEL": "warning",
    "LCS_IDLE_TIMEOUT_S": "10",
    "LCS_HEADER_TIMEOUT_S": "10",
    "LCS_BODY_TIMEOUT_S": "30",
    "LCS_REQUEST_TIMEOUT_S": "10",
    "LCS_MAX_BODY_BYTES": str(8 * 2**20),
    # A fixed level: with the controller on, the daemon would compress to absorb the attack and
    # the with/without comparison would show the controller, not the limits. No tier-2 exporter
    # process either (350-560 MB on a shared box): the limits are in front of both tiers.
    "LCS_CONTROLLER_ENABLED": "0",
    "LCS_TIER2_ENABLED": "0",
}


def hey_for(url: str, body: Path, concurrency: int, rate: float, seconds: float) -> dict[str, Any]:
    """`hey -z` at `rate` req/s per client. Its summary, not its CSV: the CSV leaves out
    requests that failed without an answer (reset, refused, timed out), which count here."""
    exe = shutil.which("hey")
    if exe is None:
        raise SystemExit("hey is not installed: run `make system-deps` (apt-get install hey)")
    cmd = [exe, "-z", f"{seconds:g}s", "-c", str(concurrency), "-q", f"{rate:g}", "-t", "20"]
    cmd += ["-m", "POST", "-T", "image/png", "-D", str(body), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    pct = {int(a): 1e3 * float(b) for a, b in re.findall(r"(\d+)% in ([\d.]+) secs", out)}
    statuses = {a: int(b) for a, b in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    failures = sum(int(n) for n in re.findall(r"^\s+\[(\d+)\]\s+(?!\d+ responses)", out, re.M))
    ok = statuses.get("200", 0)
    answered = sum(statuses.values())
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return {
        "requests": answered + failures,
        "ok": ok,
        "errors": answered - ok + failures,
        "no_answer": failures,
        "statuses": statuses,
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50_ms": pct.get(50, float("nan")),
        "p99_ms": pct.get(99, float("nan")),
    }


class Sampler:
    """The daemon's resident memory and open descriptors, sampled every 0.1 s (psutil)."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc, self.rss, self.fds = proc, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                self.rss = max(self.rss, self.proc.memory_info().rss)
                self.fds = max(self.fds, self.proc.num_fds())
            except psutil.Error:
                return

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


def attack_main(args: argparse.Namespace) -> None:
    minutes = 2.0 if args.minutes is None else args.minutes
    concurrency = args.concurrency or 8
    n_phases = max(2, 2 * round(60 * minutes / args.phase_s / 2))  # calm, attack, calm, …
    body = Path(tempfile.mkdtemp()) / "digit.png"
    body.write_bytes(encode(digits(1)[0][0]))
    env = {**ATTACK_ENV, "LCS_DECODE_BUDGET_MB": f"{args.decode_budget_mb:g}"}
    phases: list[dict[str, Any]] = []
    with live_server(env) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        target = Target("127.0.0.1", port, hold_s=35.0, max_body_bytes=8 * 2**20)
        print("building the attackers' payloads …", flush=True)
        every = [a for a in attacks(target) if args.only.lower() in a.name.lower()]
        crowd = Attackers(target, every)
        proc = psutil.Process(srv.proc.pid)
        hey_for(srv.url + "/predict", body, concurrency, args.rate, 3)  # warm-up
        rss0 = proc.memory_info().rss
        for i in range(n_phases):
            kind = "attack" if i % 2 else "calm"
            reset_peak(proc.pid)
            cpu0 = sum(proc.cpu_times()[:2])
            with Sampler(proc) as sampler:
                if kind == "attack":
                    crowd.start(until=time.monotonic() + args.phase_s)
                r = hey_for(srv.url + "/predict", body, concurrency, args.rate, args.phase_s)
                left = crowd.stop() if kind == "attack" else 0
            r |= {
                "phase": i,
                "kind": kind,
                "peak_rss_mb": peak_rss(proc.pid) / 1e6,  # VmHWM since the phase began
                "sampled_rss_mb": sampler.rss / 1e6,
                "max_fds": sampler.fds,
                "cpu_s": sum(proc.cpu_times()[:2]) - cpu0,
                "rss_after_mb": proc.memory_info().rss / 1e6,
                "attackers_left_running": left,
            }
            phases.append(r)
            print(
                f"{i:2d} {kind:6s}: p50 {r['p50_ms']:7.1f} ms p99 {r['p99_ms']:7.1f} ms "
                f"{r['ok']}/{r['requests']} ok ({r['errors']} errors, {r['no_answer']} without "
                f"an answer) peak rss {r['peak_rss_mb']:.0f} MB, fds ≤ {r['max_fds']}, "
                f"daemon cpu {r['cpu_s']:.1f} s",
                flush=True,
            )
        rss1 = proc.memory_info().rss
    result = {
        "phase_s": args.phase_s,
        "concurrency": concurrency,
        "rate_per_client": args.rate,
        "decode_budget_mb": args.decode_budget_mb,
        "rss_start_mb": rss0 / 1e6,
        "rss_end_mb": rss1 / 1e6,
        "phases": phases,
        "summary": {k: summarise(phases, k) for k in ("calm", "attack")},
        "attackers": {
            a.name: {
                "threads": a.threads,
                "outcomes": dict(a.outcomes),
                "expected": sorted(a.expect),
                "unexpected": a.unexpected,
            }
            for a in every
        },
        "note": args.note,
    }
    path = save("soak_attack", result)
    print()
    print(attack_section(result))
    print(f"saved {path}")


def summarise(phases: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """Over the phases of one kind: median p50, worst p99, summed counts, worst memory."""
    ps = [p for p in phases if p["kind"] == kind]
    return {
        "phases": len(ps),
        "p50_ms": statistics.median(p["p50_ms"] for p in ps),
        "p99_ms": max(p["p99_ms"] for p in ps),
        "requests": sum(p["requests"] for p in ps),
        "errors": sum(p["errors"] for p in ps),
        "no_answer": sum(p["no_answer"] for p in ps),
        "peak_rss_mb": max(p["peak_rss_mb"] for p in ps),
        "max_fds": max(p["max_fds"] for p in ps),
    }


def attack_section(d: dict[str, Any]) -> str:
    """Markdown for BENCHMARKS.md; benchmarks.report can list it as ("soak_attack", this)."""
    rows = []
    for kind in ("calm", "attack"):
        s = d["summary"][kind]
        rows.append(
            f"| {kind} | {s['phases']} | {s['p50_ms']:.1f} | {s['p99_ms']:.1f} | "
            f"{s['requests']} | {s['errors']} ({s['no_answer']} unanswered) | "
            f"{s['peak_rss_mb']:.0f} | {s['max_fds']} |"
        )
    attackers = [
        f"| {name} | {a['threads']} | "
        + ", ".join(f"{k}: {n}" for k, n in sorted(a["outcomes"].items()))
        + f" | {a['unexpected']} |"
        for name, a in d["attackers"].items()
    ]
    return "\n".join(
        [
            "## Soak under attack\n",
            f"`python -m benchmarks.soak --attack`: {d['concurrency']} ordinary clients at "
            f"{d['rate_per_client']:g} req/s each on `/predict`, alternating "
            f"{d['phase_s']:g} s phases without and with every attacker below (decode budget "
            f"{d['decode_budget_mb']:g} MB, default connection limits, fixed level). p50: median "
            "over phases; p99: the worst phase; memory: the daemon's peak resident (VmHWM) "
            f"in any phase of the kind, {d['rss_start_mb']:.0f} MB after warm-up and "
            f"{d['rss_end_mb']:.0f} MB at the end.\n",
            "| phase | n | p50 ms | p99 ms | requests | errors | peak RSS MB | max fds |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
            "| attacker | threads | answers | unexpected |",
            "|---|---|---|---|",
            *attackers,
            "",
        ]
    )


if __name__ == "__main__":
    main()
