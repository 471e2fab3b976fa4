"""The exported graph of one level: plain ops, per-channel norms as single nodes, softmax inside."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from models import LevelCompressor
from models.export import OUTPUTS, to_onnx
from models.layers import SNorm
from models.levels import SubspaceSpec
from models.networks import create_model

INPUT = {"small_cnn": (1, 28, 28), "resnet18": (3, 32, 32)}  # 32²: a 1×1 map in the last stage


def _ops(model: bytes) -> Counter[str]:
    return Counter(node.op_type for node in onnx.load_from_string(model).graph.node)


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18"])
def test_one_group_per_channel_exports_as_one_instance_norm_node(arch: str):
    torch.manual_seed(0)
    net = create_model(arch, SubspaceSpec("structured", "point"), num_classes=10).eval()
    norms = sum(type(m) is SNorm for m in net.modules())
    x = torch.randn(2, *INPUT[arch])
    level = LevelCompressor(net)(0.5)
    model = to_onnx(net, level, x)
    ops = _ops(model)
    assert ops["InstanceNormalization"] == norms > 0
    # GroupNorm's export wraps each InstanceNormalization in Reshape … Reshape, Mul, Add.
    assert ops["Reshape"] < norms and ops["Mul"] == 0
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    logits, probs = session.run(list(OUTPUTS), {"x": x.numpy()})
    with torch.inference_mode():
        expected = net(x, level)  # F.group_norm, as tier 1 runs it
    np.testing.assert_allclose(logits, expected.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(probs, torch.softmax(expected, 1).numpy(), rtol=0, atol=1e-5)


def test_group_norm_with_fewer_groups_than_channels_is_left_as_group_norm():
    torch.manual_seed(0)
    net = create_model("small_cnn", SubspaceSpec("structured", "point"), num_classes=10).eval()
    level = LevelCompressor(net)(1.0)
    params = dict(level.params)
    norm_keys = [m.key for m in net.modules() if type(m) is SNorm]
    for key in norm_keys:  # two channels per group: not an instance norm
        p = params[key]
        params[key] = p._replace(groups=p.weight.numel() // 2)
    level = type(level)(level.alpha, level.gamma, level.family, level.kind, params)
    x = torch.randn(2, 1, 28, 28)
    model = to_onnx(net, level, x)
    assert _ops(model)["Mul"] >= len(norm_keys)  # the affine after the grouped normalisation
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = net(x, level)
    np.testing.assert_allclose(session.run(["logits"], {"x": x.numpy()})[0], expected, atol=1e-4)
