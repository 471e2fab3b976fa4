"""lcs-serve against the servers users would pick instead (Triton, MLServer, TorchServe, Ray Serve,
BentoML, LitServe, plain FastAPI): the same exported model, threads, requests and load generator,
servers alternated in rounds; medians, ratios to the best peer, CPU per request, p50/p99."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from benchmarks.common import save
from benchmarks.load import hey, wait_for_tier
from benchmarks.peers import install
from benchmarks.peers.export import export
from benchmarks.peers.serving import Model
from benchmarks.protocols import (
    GRPC_CLIENTS,
    HEADER,
    grpc_call,
    grpc_load,
    grpc_request,
    oip_binary,
    oip_json,
)
from tests.helpers import ROOT, digits, encode, free_port

BOUNDARY = "lcsbenchboundary"
PNG, JSON, BINARY, GRPC = "PNG", "OIP JSON", "OIP binary", "gRPC"


def multipart(png: bytes) -> bytes:
    """One multipart/form-data body with the image in field "file"."""
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="digit.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        + png
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


@dataclass
class Peer:
    """How one server starts (in its venv), which of the requests it takes, and its settings."""

    venv: str | None  # None: this interpreter's venv (lcs-serve, FastAPI, LitServe)
    protocols: tuple[str, ...]
    png: tuple[str, str] = ("/predict", "multipart")  # natural API: path, raw PNG or multipart
    settings: str = ""  # workers/threads, for the report
    backend: str | None = "ort"  # None: lcs-serve (its own tiers)


PEERS: dict[str, Peer] = {
    "lcs-serve": Peer(None, (PNG, JSON, BINARY, GRPC), ("/predict", "raw"),
                      "defaults; LCS_TORCH_THREADS=1 (ORT tier 2 uses as many)", None),
    "triton": Peer("triton", (JSON, BINARY, GRPC), settings=(
        "PyTriton, 1 model instance, dynamic batcher (max batch 64), ORT 1 thread")),
    "triton-torch": Peer("triton", (JSON,), settings=(
        "PyTriton, 1 model instance, dynamic batcher (max batch 64), TorchScript 1 thread"),
        backend="torch"),
    "mlserver": Peer("mlserver", (JSON, GRPC), settings=(
        "custom runtime, parallel_workers default (1), no adaptive batching, ORT 1 thread")),
    "torchserve": Peer("torchserve", (PNG,), ("/predictions/digits", "raw"),
                       "default workers (one per core), batch size 1, 1 intra-op thread"),
    "ray": Peer("ray", (PNG,), ("/predict", "raw"),
                "1 replica, max_ongoing_requests 5 (defaults), async __call__, 1 intra-op thread"),
    "bentoml": Peer("bentoml", (PNG,), settings="workers default (1), sync API, 1 intra-op thread"),
    "litserve": Peer(None, (PNG,), settings="defaults (1 worker per device), 1 intra-op thread"),
    "plain-fastapi": Peer(None, (PNG,), settings="uvicorn 1 process, sync route, 1 thread"),
}  # fmt: skip


@dataclass
class Running:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    grpc_port: int | None
    log: Path
    # Every process of its tree or session seen so far, pid → start time (a reused pid is not it).
    seen: dict[int, float] = field(default_factory=dict)


def members(r: Running) -> list[psutil.Process]:
    """The server's processes: its tree and anything else in its session (some peers re-parent
    workers to init)."""
    found: dict[int, psutil.Process] = {}
    try:
        root = psutil.Process(r.proc.pid)
        found[root.pid] = root
        for c in root.children(recursive=True):
            found[c.pid] = c
    except psutil.Error:
        pass
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == r.proc.pid:
                found[p.pid] = p
        except (OSError, psutil.Error):
            continue
    for pid, p in found.items():
        with contextlib.suppress(psutil.Error):
            r.seen.setdefault(pid, p.create_time())
    return list(found.values())


def cpu_seconds(r: Running) -> float:
    total = 0.0
    for p in members(r):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def start(
    name: str, py: Path | None, model: Path, work: Path, backend: str, controller: bool = True
) -> Running:
    peer = PEERS[name]
    work.mkdir(parents=True, exist_ok=True)
    port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    exe = str(py or sys.executable)
    bindir = str(Path(exe).parent)
    env = {
        **os.environ,
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "LCS_PEER_MODEL": str(model),
        "LCS_PEER_THREADS": "1",
        "LCS_PEER_BACKEND": peer.backend if peer.backend == "torch" else backend,
        "OMP_NUM_THREADS": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "BENTOML_HOME": str(work / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    cwd = ROOT
    if name == "lcs-serve":
        env |= {"LCS_PORT": str(port), "LCS_HOST": "127.0.0.1", "LCS_GRPC_PORT": str(grpc_port),
                "LCS_LOG_LEVEL": "warning", "LCS_TORCH_THREADS": "1",
                "LCS_CONTROLLER_ENABLED": "1" if controller else "0"}  # fmt: skip
        cmd = [exe, "-m", "server.cli", "serve"]
    elif name in ("plain-fastapi", "litserve", "ray"):
        module = {"plain-fastapi": "plain_server", "litserve": "litserve_server"}.get(
            name, "ray_server"
        )
        cmd = [exe, "-m", f"benchmarks.peers.{module}", "--port", str(port)]
    elif name.startswith("triton"):
        # Its Python-backend stub links libpython: without this it loads Debian's 3.11.2
        # against this interpreter's 3.11.7 standard library and the model stays UNAVAILABLE.
        libdir = subprocess.run(
            [exe, "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        env["LD_LIBRARY_PATH"] = libdir + os.pathsep + os.environ.get("LD_LIBRARY_PATH", "")
        cmd = [exe, "-m", "benchmarks.peers.triton_server", "--port", str(port),
               "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port)]  # fmt: skip
    elif name == "mlserver":
        home = work / "mlserver"
        (home / "digits").mkdir(parents=True, exist_ok=True)
        (home / "settings.json").write_text(json.dumps({
            "host": "127.0.0.1", "http_port": port, "grpc_port": grpc_port,
            "metrics_port": metrics_port, "debug": False}))  # fmt: skip
        runtime = "benchmarks.peers.mlserver_model.Digits"
        (home / "digits" / "model-settings.json").write_text(
            json.dumps({"name": "digits", "implementation": runtime})
        )
        cmd = [f"{bindir}/mlserver", "start", str(home)]
    elif name == "torchserve":
        cwd = work / "torchserve"
        (cwd / "store").mkdir(parents=True, exist_ok=True)
        extra = [ROOT / "benchmarks/peers/serving.py", *(model / f for f in
                 ("model.onnx", "model.pt", "meta.json"))]  # fmt: skip
        subprocess.run(
            [f"{bindir}/torch-model-archiver", "--model-name", "digits", "--version", "1.0",
             "--handler", str(ROOT / "benchmarks/peers/torchserve_handler.py"),
             "--extra-files", ",".join(map(str, extra)), "--export-path", "store", "--force"],
            cwd=cwd, env=env, check=True, capture_output=True,
        )  # fmt: skip
        (cwd / "config.properties").write_text(
            f"inference_address=http://127.0.0.1:{port}\n"
            f"management_address=http://127.0.0.1:{free_port()}\n"
            f"metrics_address=http://127.0.0.1:{metrics_port}\n"
            "disable_token_authorization=true\nenable_envvars_config=false\n"
        )
        cmd = [f"{bindir}/torchserve", "--foreground", "--start", "--ncs",
               "--disable-token-auth", "--model-store", "store", "--ts-config",
               "config.properties", "--models", "digits=digits.mar"]  # fmt: skip
    elif name == "bentoml":
        cmd = [f"{bindir}/bentoml", "serve", "benchmarks.peers.bentoml_service:Digits",
               "--host", "127.0.0.1", "--port", str(port), "--working-dir", str(ROOT)]  # fmt: skip
    else:
        raise ValueError(name)
    log = work / f"{name}.log"
    with log.open("ab") as out:
        # Its own session: killpg reaches every worker it spawns, and members() finds them.
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    grpc = grpc_port if GRPC in peer.protocols else None
    return Running(name, proc, f"http://127.0.0.1:{port}", grpc, log)


def stop(r: Running) -> list[int]:
    """SIGTERM to the process group; after the main process exits (or 20 s), 3 s of grace, then
    SIGKILL to every process of its tree or session seen, re-scanned each time
    (TorchServe's frontend respawns workers while it shuts down); returns the pids still alive
    after 15 s more (should be none)."""
    members(r)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(r.proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        r.proc.wait(20)
    now = time.monotonic()
    grace, deadline = now + 3, now + 15
    while True:
        members(r)
        alive = []
        for pid, started in r.seen.items():
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                if p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
        if not alive or time.monotonic() > deadline:
            break
        if time.monotonic() > grace:  # by pid and start time: nothing but what it started
            for p in alive:
                with contextlib.suppress(psutil.Error):
                    p.kill()
        time.sleep(0.2)
    if r.proc.poll() is None:
        r.proc.wait(5)
    return [p.pid for p in alive]


# --- the requests and how each answer is read -------------------------------------------------


@dataclass
class Bodies:
    folder: Path
    x: np.ndarray  # (1, C, H, W), the PNG after the servers' own preprocessing
    binary_length: int


def bodies(folder: Path, png: bytes, x: np.ndarray) -> Bodies:
    (folder / "raw").write_bytes(png)
    (folder / "multipart").write_bytes(multipart(png))
    (folder / "json").write_bytes(oip_json(x))
    binary, length = oip_binary(x)
    (folder / "binary").write_bytes(binary)
    return Bodies(folder, x, length)


def http_request(r: Running, protocol: str, b: Bodies) -> tuple[str, str, str, list[str]]:
    """(url, body file, content type, extra hey headers) of one protocol against one server."""
    if protocol == PNG:
        path, kind = PEERS[r.name].png
        ctype = "image/png" if kind == "raw" else f"multipart/form-data; boundary={BOUNDARY}"
        return r.url + path, kind, ctype, []
    url = r.url + "/v2/models/digits/infer"
    if protocol == JSON:
        return url, "json", "application/json", []
    return url, "binary", "application/octet-stream", ["-H", f"{HEADER}: {b.binary_length}"]


def answer(r: Running, protocol: str, b: Bodies) -> int:
    """The class index the server gives for the digit over `protocol` (raises if it fails)."""
    if protocol == GRPC:
        return grpc_answer(r.grpc_port or 0, b.x)
    url, file, ctype, extra = http_request(r, protocol, b)
    headers = {"content-type": ctype, **({HEADER: str(b.binary_length)} if extra else {})}
    resp = httpx.post(url, content=(b.folder / file).read_bytes(), headers=headers, timeout=30)
    resp.raise_for_status()
    if protocol == PNG:
        return int(resp.json()["predictions"][0]["index"])
    if HEADER.lower() in resp.headers:  # binary outputs after a JSON header
        n = int(resp.headers[HEADER.lower()])
        head, offset = json.loads(resp.content[:n]), n
        for out in head["outputs"]:
            size = out["parameters"]["binary_data_size"]
            if out["name"] == "probabilities":
                probs = np.frombuffer(resp.content[offset : offset + size], np.float32)
                return int(probs.argmax())
            offset += size
        raise ValueError("no probabilities output")
    outs = {o["name"]: o for o in resp.json()["outputs"]}
    return int(np.argmax(outs["probabilities"]["data"]))


def grpc_answer(port: int, x: np.ndarray) -> int:
    resp = grpc_call(port, grpc_request(x))
    for i, out in enumerate(resp.outputs):
        if out.name == "probabilities":
            if resp.raw_output_contents:
                return int(np.frombuffer(resp.raw_output_contents[i], np.float32).argmax())
            return int(np.argmax(out.contents.fp32_contents))
    raise ValueError("no probabilities output")


def wait_ready(r: Running, protocol: str, b: Bodies, timeout: float) -> None:
    """Until the server answers the real request (every peer's health route differs, and some
    say healthy before their model has loaded)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if r.proc.poll() is not None:
            raise RuntimeError(f"exited with status {r.proc.returncode}")
        try:
            answer(r, protocol, b)
            return
        except Exception as e:  # not up yet: refused, 404/503 while loading, …
            last = e
            time.sleep(0.5)
    raise TimeoutError(f"no answer in {timeout:.0f} s ({last})")


def load(
    r: Running, protocol: str, b: Bodies, c: int, n: int, client: str = "h2load"
) -> dict[str, Any]:
    """`n` requests, rounded up to a multiple of `c` (hey gives each worker n // c); gRPC
    driven by `client` (protocols.GRPC_CLIENTS)."""
    n = -(-n // c) * c
    if protocol == GRPC:
        return grpc_load(r.grpc_port or 0, b.x, c, n, client)
    url, file, ctype, extra = http_request(r, protocol, b)
    return hey(url, b.folder / file, c, n, content_type=ctype, extra=extra)


# --- one round of one server, and the whole run -------------------------------------------------


def run_server(
    r: Running, b: Bodies, expected: int, args: argparse.Namespace, round_no: int
) -> list[dict[str, Any]]:
    peer = PEERS[r.name]
    t0 = time.monotonic()
    wait_ready(r, peer.protocols[0], b, args.start_timeout)
    startup = time.monotonic() - t0
    extra: dict[str, Any] = {}
    for protocol in peer.protocols:
        got = answer(r, protocol, b)
        if got != expected:
            raise RuntimeError(f"{protocol}: answered class {got}, expected {expected}")
        load(r, protocol, b, 8, args.warmup, args.grpc_client)
    if r.name == "lcs-serve":  # measured as it settles: tier 2 (ONNX Runtime) at γ = 1
        extra["tier"] = wait_for_tier(r.url)
    print(f"  {r.name}: answering after {startup:.1f} s", flush=True)
    rows = []
    for c in args.concurrency:
        for protocol in peer.protocols:
            before = level(r)
            cpu0 = cpu_seconds(r)
            res = load(r, protocol, b, c, args.requests, args.grpc_client)
            cpu = cpu_seconds(r) - cpu0
            got = answer(r, protocol, b)  # still the right answer after the load
            row = {"server": r.name, "protocol": protocol, "round": round_no, **res,
                   "cpu_s": cpu, "cpu_ms_per_request": 1e3 * cpu / max(res["ok"], 1),
                   "answer": got, "expected": expected, "correct": got == expected,
                   "startup_s": startup, **extra}  # fmt: skip
            if before is not None:  # lcs-serve: the tier after, the lowest γ before or after
                after = level(r) or before
                row |= {"tier": after[0], "gamma": min(before[1], after[1])}
            rows.append(row)
            print(
                f"  {r.name:13} {protocol:10} c={c:<3} {res['rps']:7.0f} req/s  p50 "
                f"{res['p50_ms']:7.2f} ms  p99 {res['p99_ms']:7.2f} ms  "
                f"CPU {row['cpu_ms_per_request']:.2f} ms/req  errors {res['errors']}"
                + ("" if row["correct"] else f"  WRONG ANSWER {got}")
                + (f"  γ = {row['gamma']:.2f}: the controller compressed (machine busy? "
                   "--controller-off)" if row.get("gamma", 1.0) < 1.0 else ""),
                flush=True,
            )  # fmt: skip
    return rows


def level(r: Running) -> tuple[str, float] | None:
    """lcs-serve's (tier, γ) now; None for a peer."""
    if r.name != "lcs-serve":
        return None
    d = httpx.get(r.url + "/level", timeout=10).json()
    return d["tier"], d["gamma"]


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians over rounds per (server, protocol, concurrency), and lcs-serve's ratio to the
    best peer on the same protocol and concurrency (throughput: higher is better; p99: lower)."""
    keys = dict.fromkeys((r["server"], r["protocol"], r["concurrency"]) for r in rows)
    out = []
    for s, p, c in keys:
        rs = [r for r in rows if (r["server"], r["protocol"], r["concurrency"]) == (s, p, c)]
        row = {"server": s, "protocol": p, "concurrency": c, "rounds": len(rs)}
        for k in ("rps", "p50_ms", "p99_ms", "cpu_ms_per_request"):
            row[k] = statistics.median(r[k] for r in rs)
        row["errors"] = sum(r["errors"] for r in rs)
        row["correct"] = all(r["correct"] for r in rs)
        if "gamma" in rs[0]:  # lcs-serve: the most compressed level any of its rows ran at
            row["gamma"] = min(r["gamma"] for r in rs)
        out.append(row)
    for row in out:
        if row["server"] != "lcs-serve":
            continue
        key = (row["protocol"], row["concurrency"])
        same = [o for o in out if key == (o["protocol"], o["concurrency"])]
        peers = [o for o in same if o["server"] != "lcs-serve"]
        if peers:
            best = max(peers, key=lambda o: o["rps"])
            row |= {"best_peer": best["server"], "rps_ratio": row["rps"] / best["rps"],
                    "p99_ratio": row["p99_ms"] / min(o["p99_ms"] for o in peers)}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    others = [n for n in PEERS if n != "lcs-serve"]
    p.add_argument("--peers", nargs="+", default=others,
                   help=f"beside lcs-serve (which always runs): {' '.join(others)}")  # fmt: skip
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=1000, help="per row")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=int, default=100, help="requests per protocol per start")
    p.add_argument("--backend", choices=["ort", "torch"], default="ort",
                   help="the peers' forward (triton-torch: always TorchScript)")  # fmt: skip
    p.add_argument("--no-install", action="store_true", help="skip peers not installed")
    p.add_argument("--controller-off", action="store_true",
                   help="lcs-serve without its controller: γ = 1 on a busy machine")  # fmt: skip
    p.add_argument("--start-timeout", type=float, default=120)
    p.add_argument("--grpc-client", choices=GRPC_CLIENTS, default="h2load",
                   help="gRPC's load generator: h2load (C), or grpc.aio here")  # fmt: skip
    args = p.parse_args(argv)
    unknown = set(args.peers) - set(PEERS)
    if unknown:
        p.error(f"unknown peers: {' '.join(sorted(unknown))}")
    t_start = time.monotonic()
    names = ["lcs-serve", *dict.fromkeys(n for n in args.peers if n != "lcs-serve")]
    pythons: dict[str, Path | None] = {}
    skipped: dict[str, str] = {}
    for name in names:  # install every peer first: a failed one is reported and skipped
        venv = PEERS[name].venv
        if venv is None:
            pythons[name] = None
        elif install.installed(venv):
            pythons[name] = install.python(venv)
        elif args.no_install:
            skipped[name] = "not installed (--no-install)"
        elif (py := install.ensure(venv)) is None:
            skipped[name] = f"install failed (see {install.CACHE / venv / 'install.log'})"
        else:
            pythons[name] = py
    names = [n for n in names if n not in skipped]
    for name, why in skipped.items():
        print(f"skipping {name}: {why}", flush=True)
    imgs, labels = digits(200)
    k = next(i for i, v in enumerate(labels) if v != 0)  # a digit whose answer is not class 0
    png = encode(imgs[k])
    rows: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    leftovers: list[int] = []
    with tempfile.TemporaryDirectory(prefix="lcs-peers-") as tmp:
        work = Path(tmp)
        model = export(work / "model")
        ref = Model("ort", model)
        x = ref.preprocess(png)[None]
        expected = int(ref(x)[0].argmax())
        assert expected == labels[k], (expected, labels[k])  # the export answers as trained
        b = bodies(work, png, x)
        print(f"servers: {' '.join(names)}; {args.rounds} rounds × {args.concurrency} × "
              f"{args.requests} requests", flush=True)  # fmt: skip
        for rnd in range(args.rounds):
            # Alternate the order: each server follows a different one in each round.
            order = names if rnd % 2 == 0 else names[::-1]
            for name in order:
                print(f"round {rnd + 1}/{args.rounds}: {name} "
                      f"({time.monotonic() - t_start:.0f} s elapsed)", flush=True)  # fmt: skip
                try:
                    r = start(name, pythons[name], model, work / f"{name}-{rnd}", args.backend,
                              not args.controller_off)  # fmt: skip
                except (OSError, subprocess.CalledProcessError) as e:
                    print(f"  {name} did not start: {e}", flush=True)
                    failures.append({"server": name, "round": rnd, "error": str(e)[:500]})
                    continue
                try:
                    rows += run_server(r, b, expected, args, rnd)
                except Exception as e:  # one peer failing does not lose the others' rows
                    tail = r.log.read_text(errors="replace").splitlines()[-8:]
                    print(f"  {name} FAILED: {e}\n" + "\n".join("    " + t for t in tail))
                    failures.append({"server": name, "round": rnd, "error": str(e)[:500]})
                finally:
                    left = stop(r)
                    if left:
                        print(f"  {name}: processes left after stop: {left}", flush=True)
                        leftovers += left
    summary = summarise(rows)
    for row in summary:
        if "rps_ratio" in row:
            print(f"lcs-serve {row['protocol']:10} c={row['concurrency']:<3} "
                  f"{row['rps_ratio']:.2f}× req/s of {row['best_peer']}, "
                  f"p99 {row['p99_ratio']:.2f}× the best peer's"
                  + (f" (NOT comparable: γ = {row['gamma']:.2f} in a round)"
                     if row.get("gamma", 1.0) < 1.0 else ""), flush=True)  # fmt: skip
    path = save("peers", {
        "rows": rows, "summary": summary, "requests": args.requests, "rounds": args.rounds,
        "concurrency": args.concurrency, "backend": args.backend, "skipped": skipped,
        "lcs_controller": "off" if args.controller_off else "on",
        "failures": failures, "leftover_pids": leftovers,
        "settings": {n: PEERS[n].settings for n in names},
        "natural_png": {n: PEERS[n].png[1] for n in names if PNG in PEERS[n].protocols},
        "seconds": time.monotonic() - t_start,
    })  # fmt: skip
    print(f"saved {path} after {time.monotonic() - t_start:.0f} s", flush=True)
    if leftovers:
        raise SystemExit(f"processes left behind: {leftovers}")
    if any(f["server"] == "lcs-serve" for f in failures):  # the one server never skipped
        raise SystemExit("lcs-serve failed: see above")


if __name__ == "__main__":
    main()
