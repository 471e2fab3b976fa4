"""The daemon's settings: the one object that reads LCS_* environment variables."""

from __future__ import annotations

import argparse
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LCS_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    checkpoint: Path | None = None  # None: the bundled default model
    model_name: str | None = None  # OIP v2 model name; default: the architecture
    operator_token: SecretStr | None = None  # bearer token for PUT /level
    log_level: str = "info"

    # Inference
    torch_threads: int | None = Field(None, ge=1)  # default: from the cgroup CPU quota
    max_batch_size: int = Field(16, ge=1, le=1024)
    max_batch_wait_ms: float = Field(0.0, ge=0, le=1000)
    max_queue: int = Field(64, ge=1)
    request_timeout_s: float = Field(10.0, gt=0)
    drain_timeout_s: float = Field(20.0, ge=0)

    # Input limits
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(40_000_000, ge=1)
    max_batch_images: int = Field(64, ge=1)
    cors_origins: list[str] = []  # closed by default

    # Level and controller
    controller_enabled: bool = True
    controller_policy: str = "latency_headroom"
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

    def decode_budget_bytes(self) -> int:
        from server.admission import default_budget_bytes

        if self.decode_budget_mb is None:
            return default_budget_bytes()
        return int(self.decode_budget_mb * 2**20)


# Options the command line may override; every one also reads LCS_<NAME> from the environment.
CLI_OPTIONS = {
    "host": str,
    "port": int,
    "checkpoint": str,
    "log_level": str,
    "torch_threads": int,
    "max_batch_size": int,
    "max_queue": int,
    "latency_target_ms": float,
    "controller_policy": str,
    "drain_timeout_s": float,
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    for name, typ in CLI_OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, type=typ, default=None, help=f"(env LCS_{name.upper()})")
    p.add_argument("--no-controller", action="store_true", help="(env LCS_CONTROLLER_ENABLED=0)")
    p.add_argument("--no-tier2", action="store_true", help="(env LCS_TIER2_ENABLED=0)")


def from_args(args: argparse.Namespace) -> Settings:
    overrides = {k: getattr(args, k) for k in CLI_OPTIONS if getattr(args, k, None) is not None}
    if getattr(args, "no_controller", False):
        overrides["controller_enabled"] = False
    if getattr(args, "no_tier2", False):
        overrides["tier2_enabled"] = False
    return Settings(**overrides)
