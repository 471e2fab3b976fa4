"""A model replaced under load in a live daemon: no request fails, every answer is the network
of the version it names, and the old versions are freed."""

from __future__ import annotations

import shutil
import threading
import time

import httpx
import psutil
import pytest
import torch

from models import LevelCompressor, checkpoint
from tests.helpers import ROOT, digits, encode, live_server

pytestmark = pytest.mark.integration
TOKEN = "replace-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WEIGHTS = ROOT / "models" / "weights"
VERSIONS = {  # file in the repository → the checkpoint it is a copy of
    "digits.safetensors": WEIGHTS / "digits_structured_point.safetensors",
    "other.safetensors": WEIGHTS / "digits_quantization_point.safetensors",
}
CLIENTS, MAX_PER_CLIENT, REPLACEMENTS = 8, 400, 6


def reference(path, arrs):
    """Each file's answers at every level it can report, computed without the server."""
    net, meta, digest = checkpoint.load(path)
    levels = LevelCompressor(net, cache=True)
    x = torch.from_numpy(arrs).float().unsqueeze(1) / 255
    x = (x - meta.mean[0]) / meta.std[0]
    out = {}
    with torch.inference_mode():
        for alpha in meta.spec.calc.grid(7):
            level = levels(alpha)
            out[level.alpha] = torch.softmax(net(x, level), 1)
    return digest[:16], out


def test_replacement_under_load_fails_no_request_and_frees_the_old_version(tmp_path):
    repo = tmp_path / "repository"
    repo.mkdir()
    for name, src in VERSIONS.items():
        shutil.copy(src, repo / name)
    arrs, _ = digits(16)
    import numpy as np

    stack = np.stack(arrs)
    refs = dict(reference(src, stack) for src in VERSIONS.values())
    pngs = [encode(a) for a in arrs]
    env = {
        "LCS_MODEL_REPOSITORY": str(repo),
        "LCS_MODEL": f"digits={repo / 'digits.safetensors'}",
        "LCS_OPERATOR_TOKEN": TOKEN,
        "LCS_CONTROLLER_ENABLED": "0",
        "LCS_TIER2_ENABLED": "0",
        "LCS_PROFILE_LEVELS": "3",
    }
    answers: list[tuple[int, dict]] = []
    failures: list[str] = []
    lock, stop = threading.Lock(), threading.Event()
    with live_server(env) as srv:
        rss = psutil.Process(srv.proc.pid).memory_info().rss

        def client(k: int) -> None:
            with httpx.Client(base_url=srv.url, timeout=30) as c:
                for i in range(MAX_PER_CLIENT):  # until the replacements are over
                    if stop.is_set():
                        return
                    j = (k + i) % len(pngs)
                    r = c.post(
                        "/models/digits/predict",
                        content=pngs[j],
                        headers={"content-type": "image/png"},
                    )
                    with lock:
                        if r.status_code == 200:
                            answers.append((j, r.json()))
                        else:
                            failures.append(f"{r.status_code} {r.text}")

        threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        loads = []
        with httpx.Client(base_url=srv.url, timeout=60, headers=AUTH) as op:
            for n in range(REPLACEMENTS):
                file = "other.safetensors" if n % 2 == 0 else "digits.safetensors"
                r = op.post(
                    "/v2/repository/models/digits/load",
                    json={"parameters": {"checkpoint": file}},
                )
                loads.append(r.status_code)
                time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(120)
        time.sleep(1.0)  # old versions are freed once their last requests are answered
        grown = psutil.Process(srv.proc.pid).memory_info().rss - rss
        log = srv.output()
    assert loads == [200] * REPLACEMENTS
    assert failures == []
    assert len(answers) >= 100
    versions = {body["model"]["version"] for _, body in answers}
    assert len(versions) >= 3, versions  # requests really ran across the replacements
    for j, body in answers:
        probs = refs[body["model"]["checksum"]][body["level"]["alpha"]][j]
        top = body["predictions"][0]
        assert top["index"] == int(probs.argmax())
        assert abs(top["probability"] - float(probs.max())) < 1e-5
    assert log.count('"model freed"') == REPLACEMENTS
    # Six loads of a 1.1 MB model: what stays is the allocator's, not six models.
    assert grown < 150 * 2**20, grown / 2**20
