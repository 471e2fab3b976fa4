"""A real `lcs serve` process on loopback: HTTP, level switching under load, SIGTERM drain."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from tests.helpers import ROOT, digits, encode, live_server, reference_probabilities

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def images():
    arrs, labels = digits(16)
    return arrs, [encode(a) for a in arrs], labels


def test_predictions_stay_consistent_while_the_level_switches(images):
    """Each response's prediction equals the model's at the level the response reports."""
    arrs, pngs, _ = images
    with live_server({"LCS_CONTROLLER_ENABLED": "0"}) as srv:
        stop = threading.Event()
        switches = {"n": 0}

        def switcher():
            rng = random.Random(0)
            with httpx.Client(base_url=srv.url) as c:
                while not stop.is_set():
                    r = c.put(
                        "/level",
                        json={
                            "mode": "fixed",
                            "gamma": rng.choice([0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0]),
                        },
                    )
                    assert r.status_code == 200
                    switches["n"] += 1
                    time.sleep(0.003)

        def client(k: int):
            out = []
            with httpx.Client(base_url=srv.url, timeout=30) as c:
                for i in range(40):
                    j = (k + i) % len(pngs)
                    r = c.post("/predict", content=pngs[j], headers={"content-type": "image/png"})
                    out.append((j, r.status_code, r.json()))
            return out

        t = threading.Thread(target=switcher)
        t.start()
        with ThreadPoolExecutor(8) as pool:
            results = [x for f in [pool.submit(client, k) for k in range(8)] for x in f.result()]
        stop.set()
        t.join()
    assert switches["n"] > 20 and len(results) == 320
    assert all(status == 200 for _, status, _ in results)
    reference = {}
    mismatches = 0
    levels = set()
    for j, _, body in results:
        alpha = body["level"]["alpha"]
        levels.add(alpha)
        if (j, alpha) not in reference:
            reference[(j, alpha)] = reference_probabilities(arrs[j], alpha)
        ref = reference[(j, alpha)]
        top = body["predictions"][0]
        mismatches += (
            top["index"] != int(ref.argmax()) or abs(top["probability"] - float(ref.max())) > 1e-4
        )
    assert len(levels) >= 3 and mismatches == 0


def test_sigterm_during_load_answers_every_accepted_request(images):
    _, pngs, _ = images
    with live_server({"LCS_CONTROLLER_ENABLED": "0", "LCS_DRAIN_TIMEOUT_S": "20"}) as srv:
        outcomes: list[str] = []
        lock = threading.Lock()

        def client(k: int):
            # A fresh connection per request: after SIGTERM, new connections are refused
            # (never accepted), and every request that was accepted must get its answer.
            for i in range(200):
                try:
                    r = httpx.post(
                        srv.url + "/predict",
                        content=pngs[(k + i) % len(pngs)],
                        headers={"content-type": "image/png"},
                        timeout=30,
                    )
                    outcome = f"http {r.status_code}"
                except httpx.ConnectError:
                    outcome = "refused"
                except httpx.HTTPError as e:
                    outcome = f"broken {type(e).__name__}"
                with lock:
                    outcomes.append(outcome)
                if outcome == "refused":
                    return

        # SIGTERM once the load is on (> 10 answers), not after a fixed time
        code, log = srv.sigterm_under_load(client, 8, lambda: outcomes.count("http 200") > 10)
    assert code == 0, log[-2000:]
    # Every request the server accepted (and so logged) reached its client as a response.
    # A connection whose request the server had not read yet when it shut down (still in the
    # kernel's backlog, or accepted but unparsed) is closed: never accepted, not in the log,
    # safe to retry. The count below proves no request the server did accept went unanswered.
    import json

    logged = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
    accepted = [r for r in logged if r.get("path") == "/predict"]
    answered = [o for o in outcomes if o.startswith("http")]
    assert len(accepted) == len(answered), (len(accepted), len(answered))
    assert outcomes.count("http 200") > 10
    unread = {"broken ReadError", "broken RemoteProtocolError"}
    assert set(outcomes) <= {"http 200", "http 503", "refused"} | unread


def test_bad_checkpoint_refuses_to_start_with_one_message(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    r = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--checkpoint", str(bad)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    assert f"checkpoint {bad}" in r.stderr and "Traceback" not in r.stderr


def test_metrics_pass_promtool_and_logs_are_json(images):
    import json
    import shutil

    _, pngs, _ = images
    with live_server() as srv:
        httpx.post(srv.url + "/predict", content=pngs[0], headers={"content-type": "image/png"})
        httpx.post(srv.url + "/predict", content=b"junk", headers={"content-type": "image/png"})
        time.sleep(0.6)  # a few controller ticks
        text = httpx.get(srv.url + "/metrics").text
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(30)
        lines = srv.output().splitlines()
    series = 'lcs_requests_total{endpoint="/predict",model="digits",protocol="http",status="400"}'
    assert series + " 1.0" in text
    assert "lcs_reading_memory_available_bytes" in text
    records = [json.loads(x) for x in lines if x.startswith("{")]
    access = [r for r in records if r["logger"] == "lcs.access" and r["path"] == "/predict"]
    assert {r["status"] for r in access} == {200, 400} and "gamma" in access[0]
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: run `make system-deps`"
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_tier2_in_a_live_process_answers_at_the_reported_level_and_leaves_no_child(images):
    """The default daemon, tier 2 on: responses come from ONNX Runtime at the level they
    report, the export process runs at nice 10, and SIGTERM leaves no process behind."""
    arrs, pngs, _ = images
    results = []
    with live_server({"LCS_CONTROLLER_ENABLED": "0", "LCS_TIER2_SETTLE_S": "0.2"}) as srv:
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            for gamma in (0.5, 0.25, 0.5):  # the second 0.5 comes from the session cache
                assert c.put("/level", json={"mode": "fixed", "gamma": gamma}).status_code == 200
                deadline = time.monotonic() + 120  # a bound on waiting, not a timing check
                while c.get("/level").json()["tier"] != "onnx":
                    assert time.monotonic() < deadline, "tier 2 never served"
                    time.sleep(0.05)
                for j, png in enumerate(pngs):
                    r = c.post("/predict", content=png, headers={"content-type": "image/png"})
                    assert r.status_code == 200
                    results.append((j, r.json()))
            metrics = c.get("/metrics").text
        parent = psutil.Process(srv.proc.pid)
        children = parent.children(recursive=True)
        exporters = [p for p in children if p.nice() == parent.nice() + 10]
        assert len(exporters) == 1, [(p.pid, p.nice(), p.cmdline()) for p in children]
        srv.proc.send_signal(signal.SIGTERM)
        code = srv.proc.wait(30)
    assert code == 0
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
    assert 'lcs_tier2_cache_hits_total{model="digits"} 1.0' in metrics
    assert {body["level"]["tier"] for _, body in results} == {"onnx"}
    for j, body in results:
        ref = reference_probabilities(arrs[j], body["level"]["alpha"])
        top = body["predictions"][0]
        assert top["index"] == int(ref.argmax())
        assert abs(top["probability"] - float(ref.max())) <= 1e-4
