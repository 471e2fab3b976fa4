"""A network frozen at one Level as a plain static module, and its ONNX export (torch only)."""

from __future__ import annotations

import copy
import io
import warnings

import torch
from torch import Tensor, nn

from models.compression import Level
from models.layers import LayerParams
from models.networks import SubspaceNet


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
        params = {}
        for i, (key, p) in enumerate(level.params.items()):
            # clone() outside inference mode: a Level built for serving holds inference tensors.
            w = p.weight.detach().clone().contiguous()
            b = None if p.bias is None else p.bias.detach().clone().contiguous()
            self.register_buffer(f"weight_{i}", w)
            if b is not None:
                self.register_buffer(f"bias_{i}", b)
            params[key] = LayerParams(w, b, p.groups, p.act_bits)
        self.level = Level(level.alpha, level.gamma, level.family, level.kind, params)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, classes) logits
        return self.net(x, self.level)


def to_onnx(net: SubspaceNet, level: Level, example: Tensor, opset: int = 18) -> bytes:
    """The ONNX model of `net` at `level`: input "x" (batch axis dynamic), output "logits".

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
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
        )
    return buf.getvalue()
