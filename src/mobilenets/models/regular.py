"""Regular-convolution networks: what MobileNets and network decoupling are measured against.

``vgg16`` and ``resnet18`` here are the conv bodies of Simonyan & Zisserman's
VGG-16 (with batch norm) and He et al.'s ResNet-18, written as tables like the
MobileNets.  With ``cifar=True`` they are the 32x32 variants used throughout the
CIFAR literature (pytorch-cifar): VGG-16 with a global-pool linear head, ResNet-18
with a 3x3 stride-1 stem and no max-pool.  They give network decoupling
(:mod:`mobilenets.decouple`) real, trainable regular convolutions to convert.
torchvision's own ImageNet models work with ``decouple`` directly, and
torchvision ResNet-18 state dicts load into ``resnet18`` (``cifar=False``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..layers import BasicResidual, ConvBNAct, check_width_mult, scale_channels
from .base import ImageClassifier, assemble
from .registry import register_model

__all__ = ["RESNET18_STAGES", "VGG16_LAYERS", "resnet18", "vgg16"]

# VGG-16 "D": 3x3 conv widths, "pool" = 2x2 max-pool.
VGG16_LAYERS: list[int | str] = [64, 64, "pool", 128, 128, "pool", 256, 256, 256, "pool"]
VGG16_LAYERS += [512, 512, 512, "pool", 512, 512, 512, "pool"]

# ResNet-18: (output channels, BasicResidual blocks, stride of the first block) per stage.
RESNET18_STAGES: list[tuple[int, int, int]] = [(64, 2, 1), (128, 2, 2), (256, 2, 2), (512, 2, 2)]


@register_model("vgg16", summary="VGG-16 conv body with batch norm, global-pool head (regular 3x3 convs)")
def vgg16(
    *,
    num_classes: int = 1000,
    width_mult: float = 1.0,
    dropout: float = 0.0,
    resolution: int = 224,
    cifar: bool = False,
    in_channels: int = 3,
) -> ImageClassifier:
    """VGG-16 (13 3x3 convs, 5 max-pools) with BN and a global-average-pool linear head.

    ``cifar`` changes nothing in the layers (five pools take 32x32 to 1x1) and is
    accepted so CIFAR recipes can ask for it.  15.4G mult-adds at 224, 313M at 32.
    """
    check_width_mult(width_mult)
    layers: list[nn.Module] = []
    channels, strides = in_channels, []
    for i, spec in enumerate(VGG16_LAYERS):
        if spec == "pool":
            layers.append(nn.MaxPool2d(2))
            strides.append(2)
        else:
            out = scale_channels(int(spec), width_mult, layer=f"conv {i}")
            layers.append(ConvBNAct(channels, out, 3))
            channels = out
    head = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))
    return assemble(layers, head, strides=strides, in_channels=in_channels, resolution=32 if cifar else resolution)


def _resnet18_twin(arch: Mapping[str, Any]) -> nn.Module | None:
    from torchvision.models import resnet18 as tv_resnet18

    if arch.get("cifar") or arch.get("width_mult", 1.0) != 1.0 or arch.get("in_channels", 3) != 3:
        return nn.Identity()  # no torchvision equivalent: key mapping fails cleanly
    return tv_resnet18(num_classes=arch.get("num_classes", 1000))


@register_model(
    "resnet18",
    summary="ResNet-18 (regular 3x3 convs, residual blocks); torchvision weights load at cifar=False",
    torchvision_twin=_resnet18_twin,
)
def resnet18(
    *,
    num_classes: int = 1000,
    width_mult: float = 1.0,
    resolution: int = 224,
    cifar: bool = False,
    in_channels: int = 3,
) -> ImageClassifier:
    """ResNet-18: a stem, four stages of two :class:`BasicResidual` blocks, global pool, linear.

    ImageNet stem: 7x7 stride-2 conv + 3x3 stride-2 max-pool (1.82G mult-adds at
    224).  ``cifar=True``: a 3x3 stride-1 stem without the pool (556M at 32x32).
    """
    check_width_mult(width_mult)
    width = scale_channels(64, width_mult, layer="stem")
    if cifar:
        layers: list[nn.Module] = [ConvBNAct(in_channels, width, 3)]
        strides = [1]
    else:
        stem = ConvBNAct(in_channels, width, 7, stride=2)
        stem.conv.padding = (3, 3)
        layers = [stem, nn.MaxPool2d(3, stride=2, padding=1)]
        strides = [2, 2]
    channels = width
    for out, blocks, stride in RESNET18_STAGES:
        out = scale_channels(out, width_mult, layer=f"{out}-channel stage")
        for b in range(blocks):
            layers.append(BasicResidual(channels, out, stride if b == 0 else 1))
            channels = out
        strides.append(stride)
    head = nn.Sequential(nn.Linear(channels, num_classes))
    return assemble(layers, head, strides=strides, in_channels=in_channels, resolution=32 if cifar else resolution)
