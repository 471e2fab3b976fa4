"""One digit through each transport the daemon speaks — /predict (PNG), OIP v2 JSON, OIP v2
binary tensors, gRPC — at concurrency 1/8/32 (requests/s, p50, p99), and the parse time of a
64×1×28×28 FP32 request in JSON and in binary."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import save
from benchmarks.load import grpc_frame, h2load_grpc, hey, summary, wait_for_tier
from tests.helpers import digits, encode, free_port, live_server

HEADER = "Inference-Header-Content-Length"


def oip_json(x: np.ndarray) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "data": x.flatten().tolist(),
                }
            ]
        }
    ).encode()


def oip_binary(x: np.ndarray) -> tuple[bytes, int]:
    raw = x.astype(np.float32).tobytes()
    head = {
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
    }  # fmt: skip
    text = json.dumps(head).encode()
    return text + raw, len(text)


GRPC_CLIENTS = ("h2load", "python")


def grpc_request(x: np.ndarray) -> Any:
    """The ModelInferRequest of one FP32 tensor, its bytes raw (as tritonclient sends them)."""
    from server.protocol import inference_pb2 as pb

    req = pb.ModelInferRequest(model_name="digits")
    req.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.astype(np.float32).tobytes())
    return req


def grpc_call(port: int, req: Any) -> Any:
    """One checked ModelInfer call (raises if the server refuses it)."""
    import grpc

    from server.protocol import inference_pb2_grpc as pb_grpc

    async def call() -> Any:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            return await pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(req, timeout=30)

    return asyncio.run(call())


def grpc_load(
    port: int, x: np.ndarray, concurrency: int, requests: int, client: str = "h2load"
) -> dict[str, Any]:
    """A bounded closed loop of `concurrency` unary ModelInfer callers: h2load (C; each
    answer checked by its size against one checked call's), or grpc.aio callers in this
    process (the client is then Python and may be the limit at high concurrency)."""
    req = grpc_request(x)
    if client == "h2load":
        answer = len(grpc_frame(grpc_call(port, req).SerializeToString()))
        target = f"http://127.0.0.1:{port}/inference.GRPCInferenceService/ModelInfer"
        return h2load_grpc(target, req.SerializeToString(), answer, concurrency, requests)
    return grpc_python_load(port, req, concurrency, requests)


def grpc_python_load(port: int, req: Any, concurrency: int, requests: int) -> dict[str, Any]:
    import grpc

    from server.protocol import inference_pb2_grpc as pb_grpc

    async def run() -> tuple[list[float], int, float]:
        latencies: list[float] = []
        errors = 0
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = pb_grpc.GRPCInferenceServiceStub(ch)
            left = requests

            async def worker() -> None:
                nonlocal left, errors
                while left > 0:
                    left -= 1
                    t0 = time.perf_counter()
                    try:
                        await stub.ModelInfer(req, timeout=20)
                        latencies.append(time.perf_counter() - t0)
                    except grpc.aio.AioRpcError:
                        errors += 1

            start = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return latencies, errors, time.perf_counter() - start

    latencies, errors, span = asyncio.run(run())
    ok = len(latencies)
    return summary(concurrency, ok + errors, ok, span, latencies) | {"client": "python"}


def parse_times(repeats: int) -> dict[str, float]:
    """Median seconds to turn a 64-image FP32 request into the model's tensor, as the server
    does (server/oip.py), JSON against the binary extension."""
    from server import oip

    x = np.random.default_rng(0).standard_normal((64, 1, 28, 28)).astype(np.float32)
    limits = oip.Limits((1, 28, 28), 64)
    body_json = oip_json(x)
    body_bin, length = oip_binary(x)
    out = {}
    for name, body, n in (("json", body_json, None), ("binary", body_bin, str(length))):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            oip.parse_http(body, n, limits, "digits")
            times.append(time.perf_counter() - t0)
        out[f"{name}_ms"] = 1e3 * statistics.median(times)
        out[f"{name}_bytes"] = len(body)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--parse-repeats", type=int, default=50)
    p.add_argument("--grpc-client", choices=GRPC_CLIENTS, default="h2load")
    args = p.parse_args(argv)
    arr = digits(1)[0][0]
    x = (arr.astype(np.float32) / 255).reshape(1, 1, 28, 28)
    grpc_port = free_port()
    env = {"LCS_CONTROLLER_ENABLED": "0", "LCS_LOG_LEVEL": "warning",
           "LCS_GRPC_PORT": str(grpc_port), "LCS_MAX_QUEUE": "256"}  # fmt: skip
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, live_server(env, timeout=120) as srv:
        folder = Path(tmp)
        (folder / "png").write_bytes(encode(arr))
        (folder / "json").write_bytes(oip_json(x))
        binary, length = oip_binary(x)
        (folder / "binary").write_bytes(binary)
        tier = wait_for_tier(srv.url)
        http = {
            "/predict PNG": (srv.url + "/predict", "png", "image/png", []),
            "OIP JSON": (srv.url + "/v2/models/digits/infer", "json", "application/json", []),
            "OIP binary": (
                srv.url + "/v2/models/digits/infer",
                "binary",
                "application/octet-stream",
                ["-H", f"{HEADER}: {length}"],
            ),
        }
        for c in args.concurrency:
            for name, (url, file, ctype, extra) in http.items():
                r = hey(url, folder / file, c, args.requests, content_type=ctype, extra=extra)
                rows.append({"transport": name, **r})
                print(f"{name:14} c={c:3}: {r['rps']:6.0f} req/s, p50 {r['p50_ms']:.2f} ms, "
                      f"p99 {r['p99_ms']:.2f} ms, {r['errors']} errors", flush=True)  # fmt: skip
            r = grpc_load(grpc_port, x, c, args.requests, args.grpc_client)
            rows.append({"transport": "gRPC", **r})
            print(f"{'gRPC':14} c={c:3}: {r['rps']:6.0f} req/s, p50 {r['p50_ms']:.2f} ms, "
                  f"p99 {r['p99_ms']:.2f} ms, {r['errors']} errors", flush=True)  # fmt: skip
    parse = parse_times(args.parse_repeats)
    print(f"parse 64×1×28×28 FP32: JSON {parse['json_ms']:.2f} ms ({parse['json_bytes']} B), "
          f"binary {parse['binary_ms']:.3f} ms ({parse['binary_bytes']} B)")  # fmt: skip
    save("protocols", {"tier": tier, "rows": rows, "parse": parse})


if __name__ == "__main__":
    main()
