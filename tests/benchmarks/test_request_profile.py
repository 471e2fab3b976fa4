"""The request profile's attribution: innermost component wins, waits are left out, shares sum."""

from __future__ import annotations

import pytest

from benchmarks.request_profile import classify, summarise

LOOP = "Runner.run (asyncio/runners.py:118)"
ROUTE = "APIRoute.handle (fastapi/routing.py:1373)"
PARSE = "parse_http (server/oip.py:301)"
JSON = "loads (json/__init__.py:346)"
SUBMIT = "ThreadPoolExecutor.submit (concurrent/futures/thread.py:176)"
RUN = "Session.run (onnxruntime/capi/onnxruntime_inference_collection.py:266)"
WORKER = "_worker (concurrent/futures/thread.py:81)"


def test_the_innermost_component_owns_a_sample():
    assert classify([LOOP, ROUTE, PARSE, JSON]) == "OIP parse"
    assert classify([LOOP, ROUTE]) == "FastAPI/Starlette routing + deps"
    assert classify([LOOP, "Engine._run (server/engine.py:120)", SUBMIT]).startswith("engine hop")
    assert classify(["Thread.run (threading.py:982)", WORKER, RUN]).startswith("forward")
    assert classify(["encode_http (server/oip.py:400)"]) == "OIP encode"
    assert classify(["frob (somewhere/else.py:1)"]) == "other"
    # an answer in place: parsed by the connection layer, then the in-place path and its write
    HELD = "LimitedProtocol.on_message_complete (server/main.py:300)"
    ANSWER = "InPlace.answer (server/inplace.py:90)"
    assert classify([LOOP, HELD]).startswith("HTTP parsing")
    assert classify([LOOP, HELD, ANSWER]).startswith("in-place answer")
    assert classify([LOOP, HELD, ANSWER, PARSE]) == "OIP parse"
    write = "LimitedProtocol._write (server/main.py:340)"
    assert classify([LOOP, HELD, write]).startswith("socket write")


def test_waiting_leaves_are_not_work():
    assert classify([LOOP]) is None
    assert classify(["Thread.run (threading.py:982)", WORKER]) is None


def test_the_process_cpu_is_shared_by_sample_counts(tmp_path):
    raw = tmp_path / "p.txt"
    raw.write_text(
        "\n".join(
            [
                f"{LOOP};{ROUTE};{PARSE};{JSON} 30",
                f"{LOOP};{ROUTE} 10",
                f"{LOOP} 500",  # the loop waiting in epoll: not counted
                f"Thread.run (threading.py:982);{WORKER};{RUN} 60",
            ]
        )
    )
    per = summarise(raw, total_us=1000.0)
    assert per == pytest.approx(
        {
            "forward (ONNX Runtime / torch)": 600.0,
            "OIP parse": 300.0,
            "FastAPI/Starlette routing + deps": 100.0,
        }
    )
