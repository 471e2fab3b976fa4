"""`lcs profile --tier onnx`: levels timed on ONNX Runtime sessions; models/ never loads ORT."""

from __future__ import annotations

import json
import subprocess
import sys

import torch

from models import LevelCompressor, SubspaceSpec, create_model
from server.profile_tier import onnx_runner
from tests.helpers import ROOT


def test_onnx_runner_times_the_session_that_reproduces_the_level():
    net = create_model("small_cnn", SubspaceSpec("structured")).eval().requires_grad_(False)
    level = LevelCompressor(net, cache=True)(0.5)
    x = torch.randn(1, 1, 28, 28)
    run, tier = onnx_runner(1)(net, level, x)
    assert tier == "onnx"
    probabilities = torch.as_tensor(run())
    with torch.inference_mode():
        expected = net(x, level).softmax(-1)
    assert torch.allclose(probabilities, expected, atol=1e-5)


def test_a_level_tier_2_refuses_is_timed_on_the_tier_that_serves_it():
    net = create_model("small_cnn", SubspaceSpec("quantization")).eval().requires_grad_(False)
    net.act_quant_enabled.fill_(True)  # activation fake-quantization: tier 2 refuses the level
    level = LevelCompressor(net)(0.5)
    assert any(p.act_bits is not None for p in level.params.values())
    _, tier = onnx_runner(1)(net, level, torch.randn(1, 1, 28, 28))
    assert tier == "torch"


def test_profile_cli_onnx_by_default_without_onnxruntime_in_models():
    code = (
        "import sys, models.commands, models.profile; "
        "assert 'onnxruntime' not in sys.modules, 'models/ imported onnxruntime'; "
        "from server.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    args = ["profile", "small_cnn", "--levels", "1.0", "0.25", "--repeats", "3", "--json"]
    r = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads(r.stdout)
    assert [x["tier"] for x in rows] == ["onnx", "onnx"]
    assert [x["gamma"] for x in rows] == [1.0, 0.25] and rows[0]["speedup"] == 1.0
    assert rows[0]["mmacs"] > rows[1]["mmacs"] > 0
