"""cPreResNet20: the pre-activation bottleneck ResNet of the Network Slimming code, for CIFAR-10."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor, nn

from models.levels import SubspaceSpec
from models.networks.base import LayerFactory, SubspaceNet

if TYPE_CHECKING:
    from models.compression import Level

EXPANSION = 4


class Bottleneck(nn.Module):
    def __init__(self, f: LayerFactory, cin: int, planes: int, stride: int) -> None:
        super().__init__()
        cout = planes * EXPANSION
        self.norm1, self.conv1 = f.norm(cin), f.conv(cin, planes, 1)
        self.norm2, self.conv2 = f.norm(planes), f.conv(planes, planes, 3, stride)
        self.norm3, self.conv3 = f.norm(planes), f.conv(planes, cout, 1)
        # As in Network Slimming: a bare 1×1 convolution on the block's raw input.
        self.down = f.conv(cin, cout, 1, stride) if stride != 1 or cin != cout else None

    def forward(self, x: Tensor, level: Level) -> Tensor:
        out = self.conv1(F.relu(self.norm1(x, level)), level)
        out = self.conv2(F.relu(self.norm2(out, level)), level)
        out = self.conv3(F.relu(self.norm3(out, level)), level)
        return out + (x if self.down is None else self.down(x, level))


class CPreResNet(SubspaceNet):
    def __init__(
        self, spec: SubspaceSpec, depth: int = 20, num_classes: int = 10, in_channels: int = 3
    ) -> None:
        super().__init__(spec, num_classes, in_channels)
        if (depth - 2) % 9:
            raise ValueError("depth must be 9n + 2 for the bottleneck pre-activation ResNet")
        n, f = (depth - 2) // 9, LayerFactory(spec)
        self.conv1 = f.conv(in_channels, 16, 3, role="first")
        blocks, cin = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                blocks.append(Bottleneck(f, cin, planes, stride if i == 0 else 1))
                cin = planes * EXPANSION
        self.blocks = nn.ModuleList(blocks)
        self.norm = f.norm(cin)
        self.fc = f.linear(cin, num_classes)
        self.finish()

    def forward(self, x: Tensor, level: Level) -> Tensor:  # (B, 3, 32, 32) -> (B, classes)
        x = self.conv1(x, level)
        for block in self.blocks:
            x = block(x, level)
        x = F.relu(self.norm(x, level))
        return self.fc(x.mean((2, 3)), level)
