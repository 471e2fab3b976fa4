"""ONNX Runtime's telemetry store stays empty when the server opens sessions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT

# ORT records nothing under a CI (measured: with CI=true plain onnxruntime writes no store),
# so the subprocess gets a user's environment: none of these.
NOT_A_USERS = {"ORT_DISABLE_TELEMETRY", "ORT_RUNNING_UNIT_TESTS", "CI", "CONTINUOUS_INTEGRATION",
               "GITHUB_ACTIONS", "TF_BUILD", "BUILD_ID", "GITLAB_CI", "JENKINS_URL"}  # fmt: skip

SESSION = """
import numpy as np
from onnx import TensorProto, helper
{imports}
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
assert s.run(None, {{"x": np.ones(1, np.float32)}})[0][0] == 1.0
"""


def files_written(tmp_path: Path, imports: str) -> list[Path]:
    """Open and run one session in a fresh interpreter whose home is `tmp_path`; the files
    the process left there."""
    env = {k: v for k, v in os.environ.items() if k not in NOT_A_USERS}
    env |= {"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / ".cache")}
    code = SESSION.format(imports=imports)
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=120)
    return [p for p in tmp_path.rglob("*") if p.is_file()]


def test_the_server_opens_sessions_without_a_telemetry_store(tmp_path):
    assert files_written(tmp_path, "from server.tier2 import ort") == []


def test_plain_onnx_runtime_writes_one_so_the_check_above_can_fail(tmp_path):
    written = {p.name for p in files_written(tmp_path, "import onnxruntime as ort")}
    assert "onnxruntime.db" in written, written
