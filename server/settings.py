"""The daemon's settings: the one object that reads LCS_* environment variables."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # a model name: safe in paths and URLs
DEFAULT_MODEL_NAME = "digits"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LCS_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    grpc_port: int = Field(8001, ge=0, le=65535)  # OIP v2 over gRPC on the same host; 0: off
    # Models: NAME=PATH pairs (LCS_MODEL="a=x.safetensors,b=y.safetensors") and/or a model
    # repository whose every *.safetensors file is a model named by its stem. With neither,
    # the bundled default model is served as "digits". `checkpoint` serves one file under
    # `model_name` (default: "digits"), as before several models existed.
    model: Annotated[list[str], NoDecode] = []
    model_repository: Path | None = None
    default_model: str | None = None  # what /predict and /level address; default: the first
    checkpoint: Path | None = None
    model_name: str | None = None
    # Refuse a load that would take resident memory past this; default: 80 % of the cgroup
    # memory limit when there is one, else unbounded.
    memory_budget_mb: float | None = Field(None, gt=0)
    # Compressed levels kept for instant switches (quantization's bit widths), one LRU shared by
    # every model and counted in the memory budget: all six ResNet18 LCS+P widths (43 MB each).
    level_cache_mb: float = Field(256.0, ge=0)
    operator_token: SecretStr | None = None  # bearer token for PUT /level
    log_level: str = "info"

    # Inference
    torch_threads: int | None = Field(None, ge=1)  # default: from the cgroup CPU quota
    max_batch_size: int = Field(16, ge=1, le=1024)
    max_batch_wait_ms: float = Field(0.0, ge=0, le=1000)
    # A lone request whose forward pass is predicted this short runs it on the event loop
    # when nothing else is in the daemon: the hop to the inference thread and back (two
    # wake-ups, a GIL hand-over each way) cost more than such a pass. 0: never.
    inline_forward_max_ms: float = Field(1.0, ge=0, le=10)
    # Such a request, a small image or tensor on /predict or /v2/.../infer, is answered by the
    # connection that read it, with no ASGI task (server/inplace.py); 0: always the app.
    in_place: bool = True
    max_queue: int = Field(64, ge=1)
    request_timeout_s: float = Field(10.0, gt=0)
    drain_timeout_s: float = Field(20.0, ge=0)
    gc_freeze: bool = True  # `lcs serve` freezes start-up's objects out of the collector's reach

    # Input limits
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(40_000_000, ge=1)
    max_batch_images: int = Field(64, ge=1)
    cors_origins: list[str] = []  # closed by default

    # Level and controller
    controller_enabled: bool = True
    controller_policy: str = "latency_headroom"
    # "share": a good neighbour, the most accurate level whose CPU demand fits what other work
    # leaves free; "latency": compress only as far as the latency target needs.
    controller_objective: Literal["share", "latency"] = "share"
    controller_interval_s: float = Field(0.25, gt=0)
    latency_target_ms: float = Field(50.0, gt=0)
    min_alpha: float | None = Field(None, ge=0, le=1)
    max_alpha: float | None = Field(None, ge=0, le=1)
    initial_alpha: float | None = Field(None, ge=0, le=1)  # default: the most accurate level
    profile_levels: int = Field(7, ge=2, le=50)

    # Tier 2: the settled level served from an ONNX Runtime session (tier 1, PyTorch, meanwhile)
    tier2_enabled: bool = True
    tier2_settle_s: float = Field(1.0, ge=0)  # a level left sooner is never prepared
    tier2_cache_mb: float = Field(256.0, ge=0)  # LRU budget of cached sessions' ONNX bytes
    # ORT intra-op threads for tier-2 sessions; unset: the daemon's torch thread count.
    tier2_threads: int | None = Field(None, ge=1)
    # Let ORT's pool threads spin between runs: more throughput under concurrency, ~30 ms of
    # a core burnt after each run when traffic is sparse (README, "Two tiers").
    tier2_spin: bool = False
    # The export process (350-560 MB resident) exits after this long without work.
    tier2_exporter_idle_s: float = Field(30.0, gt=0)
    tier2_tolerance: float = Field(
        1e-3, gt=0
    )  # max |Δlogits| vs tier 1, relative to max(1, |logits|)
    # int8: each settled structured width also quantized (ONNX Runtime static, calibrated on
    # the checkpoint's held-out split) in the export process; admitted only if its top-1
    # agreement with tier 1 there is at least min_agreement (above 1: never admitted). The
    # controller may then choose the (width, int8) point. Off by default: int8 answers differ
    # from fp32 on up to 1 % of inputs, which an operator opts into (LCS_TIER2_INT8=1).
    tier2_int8: bool = False
    tier2_int8_min_agreement: float = Field(0.99, ge=0)
    tier2_int8_format: Literal["qdq", "qoperator"] = "qoperator"  # faster here (BENCHMARKS.md)
    tier2_int8_calibration: int = Field(256, ge=1)  # images that set the activation ranges

    # Proxies whose X-Forwarded-For is trusted (uvicorn's forwarded_allow_ips); none by default.
    forwarded_allow_ips: str = ""
    # Connection and decode limits (issue 20)
    # Bytes of images being decoded at once (decoded pixels and conversion copies, from the
    # header); unset: a quarter of the cgroup memory limit, else 512 (server/admission.py).
    decode_budget_mb: float | None = Field(None, gt=0)
    max_header_bytes: int = Field(16 * 1024, ge=1024)  # request line + headers → 431
    max_headers: int = Field(100, ge=4)  # header lines → 431
    idle_timeout_s: float = Field(10.0, gt=0)  # a new connection sends nothing → closed
    header_timeout_s: float = Field(10.0, gt=0)  # first byte → end of headers, else 408
    # headers → whole body; 8 MiB at 2.5 Mbit/s fits, a client trickling bytes does not → 408
    body_timeout_s: float = Field(30.0, gt=0)
    keep_alive_s: int = Field(5, ge=1)  # between requests on one connection (uvicorn's)
    # Open connections; unset: the file-descriptor limit (raised to its hard limit at start)
    # minus a reserve for model files, the exporter's pipes and logs. At the cap the connection
    # idle longest is closed to make room, so a flood of idle sockets cannot lock anyone out.
    max_connections: int | None = Field(None, ge=8)
    # Requests in progress; over it → 503 + Retry-After, except the health endpoints.
    max_concurrent_requests: int = Field(512, ge=1)

    # Tracing (issue 17)
    # OTLP/HTTP collector base URL (e.g. http://collector:4318) → tracing on; the standard
    # OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_TRACES_EXPORTER=otlp do the same (server/tracing.py).
    otel_endpoint: str | None = None

    def decode_budget_bytes(self) -> int:
        from server.admission import default_budget_bytes

        if self.decode_budget_mb is None:
            return default_budget_bytes()
        return int(self.decode_budget_mb * 2**20)

    @field_validator("model", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return [p for p in v.split(",") if p.strip()] if isinstance(v, str) else v

    def model_sources(self) -> dict[str, Path | None]:
        """name → checkpoint (None: the bundled default), in order; the repository's files
        after the named ones. Raises ValueError for a bad name, pair or duplicate."""
        out: dict[str, Path | None] = {}

        def add(name: str, path: Path | None) -> None:
            if not NAME.match(name):
                raise ValueError(f"model name {name!r}: use letters, digits, '_', '.', '-'")
            if name in out:
                raise ValueError(f"model {name!r} is given twice")
            out[name] = path

        for pair in self.model:
            name, sep, path = pair.strip().partition("=")
            if not sep or not path:
                raise ValueError(f"--model {pair!r}: expected NAME=PATH")
            add(name, Path(path))
        if self.checkpoint is not None or not (self.model or self.model_repository):
            add(self.model_name or DEFAULT_MODEL_NAME, self.checkpoint)
        if self.model_repository is not None:
            if not self.model_repository.is_dir():
                raise ValueError(f"model repository {self.model_repository} is not a directory")
            for f in sorted(self.model_repository.glob("*.safetensors")):
                if f.stem not in out:
                    add(f.stem, f)
        return out


# Options the command line may override; every one also reads LCS_<NAME> from the environment.
CLI_OPTIONS = {
    "host": str,
    "port": int,
    "grpc_port": int,
    "checkpoint": str,
    "model_repository": str,
    "default_model": str,
    "memory_budget_mb": float,
    "log_level": str,
    "torch_threads": int,
    "max_batch_size": int,
    "max_queue": int,
    "latency_target_ms": float,
    "controller_policy": str,
    "controller_objective": str,
    "drain_timeout_s": float,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    for name, typ in CLI_OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, type=typ, default=None, help=f"(env LCS_{name.upper()})")
    p.add_argument(
        "--model",
        action="append",
        metavar="NAME=PATH",
        help="serve a model (repeatable; env LCS_MODEL)",
    )
    p.add_argument("--no-controller", action="store_true", help="(env LCS_CONTROLLER_ENABLED=0)")
    p.add_argument("--no-tier2", action="store_true", help="(env LCS_TIER2_ENABLED=0)")


def from_args(args: argparse.Namespace) -> Settings:
    overrides = {k: getattr(args, k) for k in CLI_OPTIONS if getattr(args, k, None) is not None}
    if getattr(args, "model", None):
        overrides["model"] = args.model
    if getattr(args, "no_controller", False):
        overrides["controller_enabled"] = False
    if getattr(args, "no_tier2", False):
        overrides["tier2_enabled"] = False
    return Settings(**overrides)
