"""A network frozen at one Level as a plain static module, and its ONNX export (torch only)."""

from __future__ import annotations

import copy
import io
import warnings
from functools import partial

import torch
from torch import Tensor, nn

from models.compression import Level
from models.layers import NORM_EPS, SNorm
from models.networks import SubspaceNet

OUTPUTS = ("logits", "probabilities")


class StaticNet(nn.Module):
    """f(ω*(α), γ(α)) with nothing left to compute per level: each layer's tensors are the Level's
    own (structured: the sliced channels; unstructured: the pruned weights; quantization: the
    fake-quantized weights), copied contiguous and held as buffers, so a trace of `forward`
    records a plain network whose weights are graph initializers."""

    def __init__(self, net: SubspaceNet, level: Level) -> None:
        super().__init__()
        # A private copy: tracing hooks every submodule, and the served network must never see
        # a hook registered or removed from another thread mid-forward.
        self.net = copy.deepcopy(net).eval()
        self.level = level.detached()
        params = self.level.params
        for i, p in enumerate(params.values()):
            self.register_buffer(f"weight_{i}", p.weight)
            if p.bias is not None:
                self.register_buffer(f"bias_{i}", p.bias)
        for m in self.net.modules():
            if type(m) is SNorm and params[m.key].groups == params[m.key].weight.numel():
                m.forward = partial(_instance_norm, m)  # type: ignore[method-assign]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # (B, C, H, W) -> 2 × (B, classes)
        logits = self.net(x, self.level)
        # Softmax inside the graph: in ORT it is one fused kernel, where a separate
        # torch.softmax call on each request costs more than the op itself.
        return logits, torch.softmax(logits, dim=1)


def _instance_norm(norm: SNorm, x: Tensor, level: Level) -> Tensor:
    """GroupNorm with one group per channel, which is InstanceNorm with a per-channel affine.
    Written as such it exports as one InstanceNormalization node; as group_norm it exports as
    Reshape, InstanceNormalization, Reshape, Mul, Add: four more passes over the activations
    (measured: ResNet18 at width 0.25 on ONNX Runtime 2.91 → 2.59 ms, same logits)."""
    p = level[norm.key]
    # The aten op, not F.instance_norm: that refuses a 1×1 map, which GroupNorm accepts (the
    # output is the bias) and which small inputs reach in ResNet18's last stage.
    return torch.instance_norm(x, p.weight, p.bias, None, None, True, 0.0, NORM_EPS, False)


def to_onnx(net: SubspaceNet, level: Level, example: Tensor, opset: int = 18) -> bytes:
    """The ONNX model of `net` at `level`: input "x" (batch axis dynamic), outputs "logits" and
    "probabilities" (their softmax).

    The TorchScript exporter (dynamo=False): the dynamo exporter cannot trace these networks.
    Activation fake-quantization exports as its own Div/Round/Clip ops, so the graph computes
    the same math as the PyTorch forward pass.
    """
    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings on as_tensor of constant buffers
        torch.onnx.export(
            StaticNet(net, level),
            (example,),
            buf,  # type: ignore[arg-type]  # the TorchScript exporter writes to any binary file
            dynamo=False,
            opset_version=opset,
            input_names=["x"],
            output_names=list(OUTPUTS),
            dynamic_axes={name: {0: "batch"} for name in ("x", *OUTPUTS)},
        )
    return buf.getvalue()
