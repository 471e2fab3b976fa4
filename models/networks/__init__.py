"""Architecture registry: `create_model(arch, spec)` is the one way networks are built."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from models.levels import SubspaceSpec
from models.networks.base import LayerFactory, SubspaceNet
from models.networks.preresnet import CPreResNet
from models.networks.resnet import ResNet18
from models.networks.small_cnn import SmallCNN
from models.networks.vgg import VGG19


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[..., SubspaceNet]
    input_size: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    description: str


ARCHITECTURES: dict[str, Architecture] = {}


def register(name: str, input_size: tuple[int, int, int], num_classes: int, description: str):
    def deco(build: Callable[..., SubspaceNet]) -> Callable[..., SubspaceNet]:
        ARCHITECTURES[name] = Architecture(name, build, input_size, num_classes, description)
        return build

    return deco


@register("small_cnn", (1, 28, 28), 10, "5-conv CNN for 28×28 grey digits (default model)")
def small_cnn(spec: SubspaceSpec, num_classes: int = 10, in_channels: int = 1) -> SubspaceNet:
    return SmallCNN(spec, num_classes, in_channels)


@register("cpreresnet20", (3, 32, 32), 10, "pre-activation bottleneck ResNet-20 for CIFAR-10")
def cpreresnet20(spec: SubspaceSpec, num_classes: int = 10, in_channels: int = 3) -> SubspaceNet:
    net = CPreResNet(spec, 20, num_classes, in_channels)
    net.arch = "cpreresnet20"
    return net


@register("resnet18", (3, 224, 224), 1000, "ResNet-18 for 224×224 ImageNet")
def resnet18(spec: SubspaceSpec, num_classes: int = 1000, in_channels: int = 3) -> SubspaceNet:
    return ResNet18(spec, num_classes, in_channels)


@register("vgg19", (3, 224, 224), 1000, "VGG-19 for 224×224 ImageNet, global-pool head")
def vgg19(spec: SubspaceSpec, num_classes: int = 1000, in_channels: int = 3) -> SubspaceNet:
    return VGG19(spec, num_classes, in_channels)


def create_model(
    arch: str, spec: SubspaceSpec, num_classes: int | None = None, in_channels: int | None = None
) -> SubspaceNet:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    a = ARCHITECTURES[arch]
    return a.build(
        spec,
        num_classes=a.num_classes if num_classes is None else num_classes,
        in_channels=a.input_size[0] if in_channels is None else in_channels,
    )


__all__ = ["ARCHITECTURES", "LayerFactory", "SubspaceNet", "create_model"]
