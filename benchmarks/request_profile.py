"""Where a request's CPU goes at concurrency 1: py-spy (per component) and perf (per library)."""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

from benchmarks.common import RESULTS, machine
from tests.helpers import digits, encode, live_server


def _compiled(patterns: list[tuple[str, str]]) -> list[tuple[str, re.Pattern[str]]]:
    return [(name, re.compile(pattern)) for name, pattern in patterns]


# The route each --api drives (its body: request() below).
REQUESTS = {
    "oip": "/v2/models/digits/infer",  # OIP v2 JSON, one 28×28 tensor
    "predict": "/predict",  # one PNG digit
}
# A sample belongs to the first component found walking from its innermost frame outward, so
# json.loads under oip.parse_http is "OIP parse", and a lock under Engine submit is "engine hop".
COMPONENTS = _compiled(
    [
        ("forward (ONNX Runtime / torch)", r"Session\.run|InferenceService\.forward|Module\._call"),
        ("OIP encode", r"^(encode_http|outputs_for|response_parameters) "),
        ("OIP parse", r"server/oip\.py"),
        ("image decode (/predict)", r"server/preprocess\.py|server/admission\.py|PIL/"),
        (
            "engine hop (submit, wake, result)",
            r"ThreadPoolExecutor\.submit|_WorkItem\.run|Future\.set_result|_chain_future"
            r"|call_soon_threadsafe|server/engine\.py",
        ),
        ("inference service (admit, results)", r"server/inference\.py"),
        ("metrics (prometheus_client)", r"prometheus_client"),
        ("access log", r"logging/|server/logs\.py"),
        ("controller", r"controller/"),
        ("lcs routes (hot path, handlers)", r"server/routes/"),
        ("in-place answer (server/inplace.py)", r"server/inplace\.py"),
        ("lcs middleware", r"server/middleware\.py"),
        # the response's send(2): on loopback the kernel runs the client's TCP receive in it
        (
            "socket write (send syscall, kernel TCP)",
            r"^(OneWrite\.(write|flush)|LimitedProtocol\._write) ",
        ),
        ("FastAPI/Starlette routing + deps", r"fastapi/|starlette/|anyio/"),
        ("HTTP parsing (uvicorn, the connection layer)", r"uvicorn/|server/main\.py|httptools"),
        ("asyncio (tasks, futures)", r"asyncio/"),
    ]
)
# perf's CPU-clock samples by the shared object they ran in, grouped. perf counts only time on
# a CPU, where py-spy also samples a thread that is runnable but not running (the woken client
# preempting the daemon in send(2) reads as time in send): the two views differ there.
LIBRARIES = _compiled(
    [
        ("ONNX Runtime", r"onnxruntime"),
        ("kernel (syscalls, TCP, scheduling)", r"^\[kernel"),
        ("Python interpreter", r"^libpython"),
        ("PyTorch", r"^libtorch|^libc10"),
        ("numpy", r"^_multiarray|numpy"),
        ("uvloop", r"^loop\.cpython"),
        ("parsers (orjson, httptools)", r"^orjson|^parser\.cpython|^url_parser"),
        ("grpc", r"cygrpc|_message\.abi3"),
        ("libc, libstdc++, loader", r"^libc\.|^libstdc|^ld-linux|^libm\.|^\[vdso"),
    ]
)
# Leaves where a thread waits in C (py-spy cannot tell these from work): uvloop's run loop in
# epoll, an idle pool worker in its queue's get. Their CPU is in the process total below.
WAITING = re.compile(
    r"^(Runner\.run|_worker|InferenceThread\._work|Condition\.wait|Queue\.get|Event\.wait) "
)


def classify(frames: list[str]) -> str | None:
    if WAITING.match(frames[-1]):
        return None
    for frame in reversed(frames):
        for name, pattern in COMPONENTS:
            if pattern.search(frame):
                return name
    return "other"


def request(api: str) -> tuple[str, bytes, str]:
    if api == "predict":
        return REQUESTS[api], encode(digits(1)[0][0]), "image/png"
    x = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    inp = {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": x.ravel().tolist()}
    return REQUESTS[api], json.dumps({"inputs": [inp]}).encode(), "application/json"


def drive(url: str, seconds: float, done: list[float] | None = None, api: str = "oip") -> int:
    """Sequential requests for `seconds`; each one's completion time goes to `done`."""
    n, (path, payload, ctype) = 0, request(api)
    with httpx.Client(base_url=url, timeout=30) as c:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            r = c.post(path, content=payload, headers={"content-type": ctype})
            assert r.status_code == 200, r.text
            n += 1
            if done is not None:
                done.append(time.monotonic())
    return n


def wait_tier2(url: str, timeout: float = 120) -> str:
    """Traffic until the settled level is served by tier 2 (what users get by default)."""
    deadline = time.monotonic() + timeout
    tier = "torch"
    while time.monotonic() < deadline and tier != "onnx":
        drive(url, 1.0)
        tier = httpx.get(url + "/level").json()["tier"]
    return tier


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    p.add_argument("--api", choices=sorted(REQUESTS), default="oip")
    p.add_argument("--perf-seconds", type=float, default=10, help="perf's window, after py-spy's")
    p.add_argument("--out", type=Path, default=RESULTS / "request_profile.json")
    args = p.parse_args()
    env = {"LCS_GRPC_PORT": "0", "LCS_LOG_LEVEL": "warning"}
    raw = Path(tempfile.mkdtemp()) / "profile.txt"
    with live_server(env, timeout=120) as server:
        url = server.url
        tier = wait_tier2(url)
        done: list[float] = []
        drive_s = args.seconds + args.perf_seconds + 6
        client = threading.Thread(target=drive, args=(url, drive_s, done, args.api))
        client.start()
        time.sleep(1.0)  # the client is in its stride before sampling starts
        proc = psutil.Process(server.proc.pid)
        cpu0 = sum(proc.cpu_times()[:2])
        loop0 = _thread_cpu(proc, proc.pid)
        subprocess.run(
            [_py_spy(), "record", "-p", str(server.proc.pid), "-r", str(args.rate), "-d",
             str(int(args.seconds)), "-f", "raw", "-o", str(raw), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
        )  # fmt: skip
        stopped = time.monotonic()
        cpu = sum(proc.cpu_times()[:2]) - cpu0
        loop = _thread_cpu(proc, proc.pid) - loop0
        # perf after py-spy, not beside it: the two together doubled the CPU per request.
        perf_t0, perf_cpu0 = time.monotonic(), sum(proc.cpu_times()[:2])
        perf = _perf_start(server.proc.pid, args.perf_seconds, raw.with_name("perf.data"))
        libraries = _perf_libraries(perf, raw.with_name("perf.data"))
        perf_t1, perf_cpu = time.monotonic(), sum(proc.cpu_times()[:2]) - perf_cpu0
        client.join()
        # py-spy samples for `seconds` once attached: the window ends when it exits.
        requests = sum(1 for t in done if stopped - args.seconds <= t <= stopped)
        perf_requests = sum(1 for t in done if perf_t0 <= t <= perf_t1)
    total = 1e6 * cpu / requests  # the daemon process's CPU, all threads, user + system
    # The event loop's own share (the main thread): what bounds throughput under concurrency.
    on_loop = 1e6 * loop / requests
    per = summarise(raw, total)
    out = {
        "machine": machine(),
        "api": args.api,
        "tier": tier,
        "requests": requests,
        "seconds": args.seconds,
        "cpu_us_per_request": total,
        "loop_thread_cpu_us_per_request": on_loop,
        "components": per,
        # perf's shares of the daemon's CPU in its own window (None: no perf, or not permitted)
        "libraries": libraries,
        # the CPU per request in perf's window, its sampling's cost included
        "perf_cpu_us_per_request": 1e6 * perf_cpu / perf_requests if perf_requests else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"{requests} requests in {args.seconds:g} s on tier {tier}: {total:.0f} µs of CPU each"
          f" ({on_loop:.0f} µs of it on the event loop's thread)")  # fmt: skip
    for name, us in per.items():
        print(f"{us:8.1f} µs  {name}")
    if out["libraries"] is not None:
        print(f"share by library (perf, CPU-clock samples, its own window: "
              f"{out['perf_cpu_us_per_request']:.0f} µs of CPU a request):")  # fmt: skip
        for name, share in out["libraries"].items():
            print(f"{100 * share:7.1f} %  {name}")


def _perf_start(pid: int, seconds: float, data: Path) -> subprocess.Popen[bytes] | None:
    """`perf record` of the daemon for the sampling window, if perf is installed."""
    exe = shutil.which("perf")
    if exe is None:
        return None
    cmd = [exe, "record", "-F", "199", "-p", str(pid), "-o", str(data), "--", "sleep",
           str(int(seconds))]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _perf_libraries(perf: subprocess.Popen[bytes] | None, data: Path) -> dict[str, float] | None:
    """Each library group's share of perf's samples, largest first."""
    if perf is None or perf.wait(60) != 0 or not data.exists():
        return None
    report = subprocess.run(
        ["perf", "report", "-i", str(data), "--sort", "dso", "--stdio", "-g", "none"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    shares: dict[str, float] = collections.defaultdict(float)
    for line in report.stdout.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)", line)
        if m:
            lib = m.group(2)
            group = next((n for n, pat in LIBRARIES if pat.search(lib)), "other native code")
            shares[group] += float(m.group(1)) / 100
    total = sum(shares.values())
    ordered = sorted(shares.items(), key=lambda kv: -kv[1])
    return {k: v / total for k, v in ordered} if total else None


def _thread_cpu(proc: psutil.Process, tid: int) -> float:
    """One thread's CPU seconds so far, user + system."""
    t = next(t for t in proc.threads() if t.id == tid)
    return t.user_time + t.system_time


def _py_spy() -> str:
    """py-spy from PATH, else beside this interpreter (the venv's bin is often not on PATH)."""
    return shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))


def summarise(raw: Path, total_us: float) -> dict[str, float]:
    """The process's CPU per request shared out by the components' share of py-spy's samples
    (a sample counts a thread that runs or waits for the GIL, so raw counts are wall time;
    the shares are what the profile knows). Work uvloop does in C shows as its run loop's
    leaf, which is also where it waits in epoll: it cannot be told apart and is left out."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        part = classify(stack.split(";")) if stack else None
        if part is not None:
            counts[part] += int(n)
    seen = sum(counts.values())
    return {k: total_us * v / seen for k, v in counts.most_common()}


if __name__ == "__main__":
    main()
