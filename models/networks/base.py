"""SubspaceNet: a network built from subspace layers, and the factory that builds its layers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from models.layers import SBatchNorm, SConv2d, SLinear, SNorm, SubspaceLayer
from models.levels import SubspaceSpec

if TYPE_CHECKING:
    from models.compression import Level


class SubspaceNet(nn.Module):
    """Base of every architecture: `forward(x, level)` runs the network compressed to `level`."""

    arch = ""

    def __init__(self, spec: SubspaceSpec, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.spec = spec
        self.num_classes = num_classes
        self.in_channels = in_channels
        # Set once training has observed activation ranges; only quantization uses it.
        self.act_quant_enabled: Tensor
        self.register_buffer("act_quant_enabled", torch.zeros((), dtype=torch.bool))
        self._layers: list[SubspaceLayer] = []

    def finish(self) -> None:
        """Name every subspace layer by its module path (the key of its LayerParams)."""
        self._layers = []
        for name, module in self.named_modules():
            if isinstance(module, SubspaceLayer):
                module.key = name
                self._layers.append(module)

    def subspace_layers(self) -> list[SubspaceLayer]:
        return self._layers

    def forward(self, x: Tensor, level: Level) -> Tensor:
        raise NotImplementedError


class LayerFactory:
    """Builds layers for one subspace spec, so architectures never branch on family or kind."""

    def __init__(self, spec: SubspaceSpec, norm_groups: int | str | None = "family") -> None:
        """`norm_groups`: "family" for the family's choice (the reference's 32 groups capped at
        C; structured compression uses one per kept channel whatever this says), None for one
        group per channel (InstanceNorm) in every family, or a count (1 where it does not
        divide C)."""
        self.spec = spec
        self.norm_groups = norm_groups

    def conv(self, cin: int, cout: int, k: int, stride: int = 1, role: str = "hidden") -> SConv2d:
        return SConv2d(
            cin,
            cout,
            k,
            stride=stride,
            line=self.spec.line_weights,
            role=role,
            quantizable=self.spec.handler.observes_activations(role),
        )

    def norm(self, channels: int) -> SNorm:
        if self.spec.norm == "batch":
            return SBatchNorm(channels)
        if self.norm_groups is None:
            groups = channels
        elif self.norm_groups == "family":
            groups = self.spec.handler.norm_groups(channels)
        else:
            n = int(self.norm_groups)
            groups = n if channels % n == 0 else 1
        return SNorm(channels, groups, line=self.spec.line_norms)

    def linear(self, cin: int, cout: int) -> SLinear:
        return SLinear(cin, cout, line=self.spec.line_weights, role="last")
