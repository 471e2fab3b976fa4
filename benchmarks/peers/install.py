"""Each peer server in its own venv under ~/.cache/lcs-serve/peers/<peer>, made once and reused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("LCS_PEERS_CACHE", Path.home() / ".cache" / "lcs-serve" / "peers"))
# What every peer script imports (benchmarks/peers/serving.py): the TorchScript and the ONNX
# export of the same network, and the same PNG decoding.
BASE = ("onnxruntime", "pillow", "numpy")


@dataclass(frozen=True)
class Venv:
    name: str
    packages: tuple[str, ...]  # after torch==2.13.0, which goes first (the local CPU build)
    check: str  # imported after install: the venv is only kept if this works
    needs_java: bool = False


VENVS = {
    v.name: v
    for v in (
        # PyTriton bundles tritonserver; tritonclient is what its own examples drive it with.
        Venv("triton", ("nvidia-pytriton", "tritonclient[all]"), "pytriton.triton"),
        # uvloop 0.22+ kills MLServer's inference worker ("no current event loop").
        Venv("mlserver", ("mlserver", "uvloop<0.22"), "mlserver"),
        # Without pyyaml the worker dies on import and restarts forever.
        Venv(
            "torchserve",
            ("torchserve", "torch-model-archiver", "torch-workflow-archiver", "nvgpu", "pyyaml"),
            "ts.model_server",
            needs_java=True,
        ),
        Venv("ray", ("ray[serve]",), "ray.serve"),
        Venv("bentoml", ("bentoml",), "bentoml"),
    )
}


def python(venv: str) -> Path:
    return CACHE / venv / "bin" / "python"


def _stamp(v: Venv) -> str:
    return " ".join(("torch==2.13.0", *BASE, *v.packages))


def installed(venv: str) -> bool:
    stamp = CACHE / venv / ".installed"
    return stamp.exists() and stamp.read_text() == _stamp(VENVS[venv])


def _java() -> bool:
    """A JRE for TorchServe's frontend: openjdk-17-jre-headless from apt if none is on PATH."""
    if shutil.which("java"):
        return True
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    print("  torchserve needs a JDK: apt-get install openjdk-17-jre-headless", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        [*sudo, "apt-get", "update", "-qq"],
        [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends",
         "openjdk-17-jre-headless"],
    ):  # fmt: skip
        if subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL).returncode != 0:
            return False
    return shutil.which("java") is not None


def _pip(py: Path, args: list[str], log: Path, name: str) -> bool:
    """pip with its output in `log`; one progress line per package pip collects or installs."""
    cmd = [str(py), "-m", "pip", "install", "--disable-pip-version-check", *args]
    with log.open("a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if line.startswith(("Collecting", "Installing collected", "Successfully")):
                print(f"  [{name}] {line.rstrip()[:110]}", flush=True)
        return proc.wait() == 0


def ensure(venv: str) -> Path | None:
    """The venv's python, installing it first if absent or made from other packages; None (and
    why, printed) if installing fails: that peer is skipped, the others still run."""
    v = VENVS[venv]
    if installed(venv):
        return python(venv)
    if v.needs_java and not _java():
        print(f"  {venv}: no JDK and apt-get failed: skipped", flush=True)
        return None
    home = CACHE / venv
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    log = home / "install.log"
    t0 = time.monotonic()
    print(f"installing {venv} into {home} (log: {log})", flush=True)
    base = shutil.which("python3") or sys.executable
    ok = subprocess.run([base, "-m", "venv", str(home)], stdout=subprocess.DEVNULL).returncode == 0
    py = python(venv)
    # torch first and alone, from the local CPU build: resolved together with a peer's loose
    # torch requirement, pip would fetch a CUDA build. torchvision never (it does not import
    # beside this torch).
    ok = ok and _pip(py, ["--upgrade", "pip"], log, venv)
    ok = ok and _pip(py, ["torch==2.13.0"], log, venv)
    ok = ok and _pip(py, ["torch==2.13.0", *BASE, *v.packages], log, venv)
    ok = ok and subprocess.run([str(py), "-c", f"import {v.check}"], cwd=home).returncode == 0
    if not ok:
        tail = log.read_text().splitlines()[-15:] if log.exists() else []
        print(f"  {venv}: install FAILED, skipped. Last lines of {log}:", flush=True)
        print("\n".join("    " + line for line in tail), flush=True)
        return None
    (home / ".installed").write_text(_stamp(v))
    print(f"  {venv}: installed in {time.monotonic() - t0:.0f} s", flush=True)
    return py


if __name__ == "__main__":  # `python -m benchmarks.peers.install [venv ...]`: install ahead
    for name in sys.argv[1:] or list(VENVS):
        ensure(name)
