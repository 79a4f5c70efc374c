"""MobileNetV2 (Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear
Bottlenecks").

A 3x3 stem conv, seventeen inverted-residual bottlenecks described by the paper's
Table 2 as ``(t, c, n, s)`` stages - expansion factor, output channels, repeats,
stride of the first repeat - a 1x1 conv to 1280 channels, pooling and a classifier.

* **width multiplier** (``width_mult``, 0.35-1.4 published): channels x alpha,
  rounded to multiples of 8.  The last 1x1 conv keeps 1280 channels below 1.0
  (the paper's choice: it is cheap and helps small models) and grows above it.
  1.0 -> 300M mult-adds / 3.5M params, 0.5 -> 97M / 2.0M, 1.4 -> 582M / 6.1M.
* **resolution** (96-224 published): mult-adds scale with its square, params do
  not: at width 1.0, 224 -> 300M, 160 -> 154M, 96 -> 56M.

Ablations from the paper are options, not separate code: ``activation``
(``relu6`` as published, or ``relu``), ``linear_bottleneck=False`` (ReLU6 after
the projection) and ``residual=False`` (no shortcuts).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..layers import ConvBNAct, InvertedResidual, check_width_mult, make_divisible
from .base import ImageClassifier, apply_cifar_strides, assemble
from .registry import register_model

__all__ = ["MOBILENET_V2_STAGES", "mobilenet_v2"]

STEM_CHANNELS = 32
LAST_CHANNELS = 1280

# Table 2: (expansion t, output channels c, repeats n, stride s of the first repeat).
MOBILENET_V2_STAGES: list[tuple[int, int, int, int]] = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def _torchvision_twin(arch: Mapping[str, Any]) -> nn.Module:
    import torchvision

    return torchvision.models.mobilenet_v2(width_mult=arch["width_mult"], num_classes=arch["num_classes"])


@register_model(
    "mobilenet_v2",
    summary="MobileNetV2 (Sandler et al. 2018): inverted residuals with linear bottlenecks",
    default_resolution=224,
    torchvision_twin=_torchvision_twin,
)
def mobilenet_v2(
    *,
    num_classes: int = 1000,
    width_mult: float = 1.0,
    dropout: float = 0.2,
    resolution: int = 224,
    activation: str = "relu6",
    linear_bottleneck: bool = True,
    residual: bool = True,
    cifar: bool = False,
    in_channels: int = 3,
    output_stride: int = 32,
) -> ImageClassifier:
    """MobileNetV2.

    Args:
        num_classes: classifier outputs.
        width_mult: alpha; channels ``make_divisible(alpha * c, 8)``. Cost ~ alpha**2.
        dropout: dropout before the classifier (0.2 as in torchvision).
        resolution: input side the model is meant for (any side >= total stride works).
        activation: non-linearity inside the blocks; ``relu6`` as published.
        linear_bottleneck: keep the projection linear (False: activation after it).
        residual: shortcuts between bottlenecks of equal shape.
        cifar: stem and first stride-2 stage at stride 1 (pytorch-cifar's
            adaptation; total stride 8, a 32x32 image ends at 4x4).
        in_channels: image channels.
        output_stride: 32 as published; 16 or 8 for dense prediction (Mobile DeepLabv3,
            V2 paper section 6.3): the stages that would shrink the map further run at
            stride 1 with dilated depthwise convs, so maps stay at 1/16 or 1/8 (cost grows
            with the larger maps: x4 per halving in those stages).
    """
    width_mult = check_width_mult(width_mult)
    strides = [2] + [s for *_, s in MOBILENET_V2_STAGES]
    if cifar:
        strides = apply_cifar_strides(strides)
    if output_stride not in (8, 16, 32):
        raise ConfigError(f"output_stride must be 32, 16 or 8, got {output_stride}")
    dilations, reached, dilation = [], strides[0], 1
    for i, stride in enumerate(strides[1:], 1):
        if reached * stride > output_stride:  # dilate instead of striding
            dilation, strides[i] = dilation * stride, 1
        reached *= strides[i]
        dilations.append(dilation)
    channels = make_divisible(STEM_CHANNELS * width_mult)
    layers: list[nn.Module] = [ConvBNAct(in_channels, channels, 3, strides[0], activation=activation)]
    for (expansion, out, repeats, _), first_stride, dilation in zip(MOBILENET_V2_STAGES, strides[1:], dilations):
        out = make_divisible(out * width_mult)
        for i in range(repeats):
            layers.append(
                InvertedResidual(
                    channels,
                    out,
                    first_stride if i == 0 else 1,
                    expanded_channels=int(round(channels * expansion)),
                    activation=activation,
                    linear_bottleneck=linear_bottleneck,
                    residual=residual,
                    dilation=dilation,
                )
            )
            channels = out
    last = make_divisible(LAST_CHANNELS * max(1.0, width_mult))
    layers.append(ConvBNAct(channels, last, 1, activation=activation))
    return assemble(
        layers,
        nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes)),
        strides=strides,
        in_channels=in_channels,
        resolution=resolution,
    )
