"""ResNet18 for 224×224 ImageNet, with GroupNorm / InstanceNorm in place of BatchNorm."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.levels import SubspaceSpec
from models.networks.base import LayerFactory, SubspaceNet

if TYPE_CHECKING:
    from models.compression import Level


class BasicBlock(nn.Module):
    def __init__(self, f: LayerFactory, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.norm1 = f.conv(cin, cout, 3, stride), f.norm(cout)
        self.conv2, self.norm2 = f.conv(cout, cout, 3), f.norm(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.ModuleList([f.conv(cin, cout, 1, stride), f.norm(cout)])

    def forward(self, x: Tensor, level: Level) -> Tensor:
        out = F.relu(self.norm1(self.conv1(x, level), level))
        out = self.norm2(self.conv2(out, level), level)
        skip = x if self.down is None else self.down[1](self.down[0](x, level), level)
        return F.relu(out + skip)


class ResNet18(SubspaceNet):
    arch = "resnet18"

    def __init__(self, spec: SubspaceSpec, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__(spec, num_classes, in_channels)
        f = LayerFactory(spec)
        self.conv1 = f.conv(in_channels, 64, 7, 2, role="first")
        self.norm1 = f.norm(64)
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            blocks += [BasicBlock(f, cin, cout, stride), BasicBlock(f, cout, cout, 1)]
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.fc = f.linear(cin, num_classes)
        self.finish()

    def forward(self, x: Tensor, level: Level) -> Tensor:  # (B, 3, 224, 224) -> (B, classes)
        x = F.relu(self.norm1(self.conv1(x, level), level))
        # PyTorch's CPU max-pool is 5-8x faster on channels_last than on NCHW (measured for
        # (32, 16..64, 112, 112)); the layout round trip costs less than it saves.
        x = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), 3, 2, 1).contiguous()
        for block in self.blocks:
            x = block(x, level)
        return self.fc(x.mean((2, 3)), level)
