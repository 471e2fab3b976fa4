"""VGG19 for 224×224 ImageNet, with norms after every convolution and a global-pool head."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch.nn.functional as F
from torch import Tensor, nn

from models.levels import SubspaceSpec
from models.networks.base import LayerFactory, SubspaceNet

if TYPE_CHECKING:
    from models.compression import Level

# Channels per convolution; 0 is a 2×2 max-pool.
PLAN = (64, 64, 0, 128, 128, 0, 256, 256, 256, 256, 0, 512, 512, 512, 512, 0, 512, 512, 512, 512, 0)


class VGG19(SubspaceNet):
    arch = "vgg19"

    def __init__(self, spec: SubspaceSpec, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__(spec, num_classes, in_channels)
        f = LayerFactory(spec)
        convs: list[nn.Module] = []
        norms: list[nn.Module] = []
        cin = in_channels
        for cout in (c for c in PLAN if c):
            convs.append(f.conv(cin, cout, 3, role="first" if not convs else "hidden"))
            norms.append(f.norm(cout))
            cin = cout
        self.convs, self.norms = nn.ModuleList(convs), nn.ModuleList(norms)
        # Global average pool + one linear layer: the reference's 1×1 head on a 7×7 map is broken.
        self.fc = f.linear(cin, num_classes)
        self.finish()

    def forward(self, x: Tensor, level: Level) -> Tensor:  # (B, 3, 224, 224) -> (B, classes)
        i = 0
        for c in PLAN:
            if c == 0:
                x = F.max_pool2d(x, 2)
                continue
            x = F.relu(self.norms[i](self.convs[i](x, level), level))
            i += 1
        return self.fc(x.mean((2, 3)), level)
