"""MobileNetV3 Large and Small (Howard et al. 2019, "Searching for MobileNetV3").

Inverted-residual blocks found by architecture search, with squeeze-and-excite
in some blocks, 5x5 depthwise kernels, and the h-swish activation
(``x * ReLU6(x + 3) / 6``, a cheap stand-in for swish) in the later layers.
The tables below are the paper's Tables 1 and 2, one row per bottleneck.

* ``width_mult`` scales every layer's output channels (rounded to multiples of
  8); each block's expansion keeps its *ratio* to the block's (rounded) input,
  and the final 1280/1024-wide layer is not narrowed below 1.0.  This is the
  convention that reproduces the published narrow models: Large 1.0 -> 217M
  mult-adds / 5.5M params, 0.75 -> 155M / 4.0M; Small 1.0 -> 57M / 2.5M,
  0.75 -> 44M / 2.0M.  torchvision instead narrows expansions and head
  directly; the two agree at width 1.0, the only width with published weights.
* Batch norm uses eps 1e-3 and momentum 0.01, as in the TF reference and torchvision.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from torch import nn

from ..errors import ConfigError
from ..layers import ConvBNAct, InvertedResidual, check_width_mult, make_divisible
from .base import ImageClassifier, apply_cifar_strides, assemble
from .registry import register_model

__all__ = ["MOBILENET_V3_LARGE", "MOBILENET_V3_SMALL", "mobilenet_v3_large", "mobilenet_v3_small"]

BN = {"bn_eps": 1e-3, "bn_momentum": 0.01}


class Bneck(NamedTuple):
    """One row of the V3 tables."""

    kernel: int
    expanded: int
    out: int
    squeeze_excite: bool
    activation: str  # "relu" (RE in the paper) or "hardswish" (HS)
    stride: int


RE, HS = "relu", "hardswish"

# Table 1 (Large): stem 16 channels h-swish; head 960 -> pool -> 1280 -> classes.
MOBILENET_V3_LARGE: list[Bneck] = [
    Bneck(3, 16, 16, False, RE, 1),
    Bneck(3, 64, 24, False, RE, 2),
    Bneck(3, 72, 24, False, RE, 1),
    Bneck(5, 72, 40, True, RE, 2),
    Bneck(5, 120, 40, True, RE, 1),
    Bneck(5, 120, 40, True, RE, 1),
    Bneck(3, 240, 80, False, HS, 2),
    Bneck(3, 200, 80, False, HS, 1),
    Bneck(3, 184, 80, False, HS, 1),
    Bneck(3, 184, 80, False, HS, 1),
    Bneck(3, 480, 112, True, HS, 1),
    Bneck(3, 672, 112, True, HS, 1),
    Bneck(5, 672, 160, True, HS, 2),
    Bneck(5, 960, 160, True, HS, 1),
    Bneck(5, 960, 160, True, HS, 1),
]

# Table 2 (Small): stem 16 channels; head 576 -> pool -> 1024 -> classes.
MOBILENET_V3_SMALL: list[Bneck] = [
    Bneck(3, 16, 16, True, RE, 2),
    Bneck(3, 72, 24, False, RE, 2),
    Bneck(3, 88, 24, False, RE, 1),
    Bneck(5, 96, 40, True, HS, 2),
    Bneck(5, 240, 40, True, HS, 1),
    Bneck(5, 240, 40, True, HS, 1),
    Bneck(5, 120, 48, True, HS, 1),
    Bneck(5, 144, 48, True, HS, 1),
    Bneck(5, 288, 96, True, HS, 2),
    Bneck(5, 576, 96, True, HS, 1),
    Bneck(5, 576, 96, True, HS, 1),
]

STEM_CHANNELS = 16


def _build(
    table: list[Bneck],
    head_channels: int,
    *,
    num_classes: int,
    width_mult: float,
    dropout: float,
    resolution: int,
    cifar: bool,
    in_channels: int,
    reduced_tail: bool = False,
    output_stride: int = 32,
) -> ImageClassifier:
    width_mult = check_width_mult(width_mult)
    if output_stride not in (16, 32):
        raise ConfigError(f"output_stride must be 32 or 16 for MobileNetV3, got {output_stride}")
    if reduced_tail:
        # Section 6.2 (detection): the layers after C4 at half width - the last stage's
        # outputs and the expansions inside it (C4's own expansion, the tapped map, stays).
        c4 = max(i for i, row in enumerate(table) if row.stride == 2)
        table = [
            row._replace(out=row.out // 2, expanded=row.expanded // 2 if i > c4 else row.expanded) if i >= c4 else row
            for i, row in enumerate(table)
        ]
        head_channels //= 2
    strides = [2] + [row.stride for row in table]
    if cifar:
        strides = apply_cifar_strides(strides)
    # output_stride 16 (segmentation, torchvision's dilated=True): the last stage keeps the C4
    # map's size - its stride-2 depthwise runs at stride 1 and the stage's depthwise convs
    # see a twice wider neighbourhood (dilation 2) instead.
    c4 = max(i for i, row in enumerate(table) if row.stride == 2)
    dilations = [2 if output_stride == 16 and i >= c4 else 1 for i in range(len(table))]
    if output_stride == 16:
        strides[1 + c4] = 1
    channels = make_divisible(STEM_CHANNELS * width_mult)
    layers: list[nn.Module] = [ConvBNAct(in_channels, channels, 3, strides[0], activation=HS, **BN)]
    channels_at_width_1 = STEM_CHANNELS
    for row, stride, dilation in zip(table, strides[1:], dilations):
        # The tables give absolute widths; the paper's narrower models keep each
        # block's expansion *ratio* and apply it to the already-rounded input.
        expanded = make_divisible(channels * row.expanded / channels_at_width_1)
        out = make_divisible(row.out * width_mult)
        channels_at_width_1 = row.out
        layers.append(
            InvertedResidual(
                channels,
                out,
                stride,
                expanded_channels=expanded,
                dilation=dilation,
                kernel_size=row.kernel,
                activation=row.activation,
                # The squeeze is a quarter of the expanded width (section 5.3).
                se_channels=make_divisible(expanded // 4) if row.squeeze_excite else 0,
                **BN,
            )
        )
        channels = out
    last_conv = 6 * channels
    layers.append(ConvBNAct(channels, last_conv, 1, activation=HS, **BN))
    # Like V2's last layer, the head is not narrowed below width 1.0.
    head = make_divisible(head_channels * max(1.0, width_mult))
    classifier = nn.Sequential(
        nn.Linear(last_conv, head),
        nn.Hardswish(inplace=True),
        nn.Dropout(dropout),
        nn.Linear(head, num_classes),
    )
    return assemble(layers, classifier, strides=strides, in_channels=in_channels, resolution=resolution)


def _torchvision_twin(builder_name: str):
    def twin(arch: Mapping[str, Any]) -> nn.Module:
        import torchvision

        builder = getattr(torchvision.models, builder_name)
        return builder(
            width_mult=arch["width_mult"],
            num_classes=arch["num_classes"],
            reduced_tail=arch.get("reduced_tail", False),
            dilated=arch.get("output_stride", 32) == 16,
        )

    return twin


@register_model(
    "mobilenet_v3_large",
    summary="MobileNetV3-Large (Howard et al. 2019): SE, h-swish, 5x5 depthwise",
    default_resolution=224,
    torchvision_twin=_torchvision_twin("mobilenet_v3_large"),
)
def mobilenet_v3_large(
    *,
    num_classes: int = 1000,
    width_mult: float = 1.0,
    dropout: float = 0.2,
    resolution: int = 224,
    cifar: bool = False,
    in_channels: int = 3,
    reduced_tail: bool = False,
    output_stride: int = 32,
) -> ImageClassifier:
    """MobileNetV3-Large: 219M mult-adds / 5.4M params published (75.2 % top-1).

    Args as :func:`mobilenets.models.mobilenet_v2.mobilenet_v2`; the activations
    and SE placement are fixed by the searched architecture.  ``reduced_tail``
    halves the channels after the C4 block, as the paper's detection and
    segmentation backbones do (section 6.2; torchvision's ``reduced_tail``).
    ``output_stride=16`` dilates the last stage instead of striding it (the
    segmentation backbones; torchvision's ``dilated=True``): maps stay at 1/16.
    """
    return _build(
        MOBILENET_V3_LARGE,
        1280,
        num_classes=num_classes,
        width_mult=width_mult,
        dropout=dropout,
        resolution=resolution,
        cifar=cifar,
        in_channels=in_channels,
        reduced_tail=reduced_tail,
        output_stride=output_stride,
    )


@register_model(
    "mobilenet_v3_small",
    summary="MobileNetV3-Small (Howard et al. 2019): for low-resource budgets",
    default_resolution=224,
    torchvision_twin=_torchvision_twin("mobilenet_v3_small"),
)
def mobilenet_v3_small(
    *,
    num_classes: int = 1000,
    width_mult: float = 1.0,
    dropout: float = 0.2,
    resolution: int = 224,
    cifar: bool = False,
    in_channels: int = 3,
    reduced_tail: bool = False,
    output_stride: int = 32,
) -> ImageClassifier:
    """MobileNetV3-Small: 56M mult-adds / 2.5M params published (67.4 % top-1).

    Args as :func:`mobilenet_v3_large`.
    """
    return _build(
        MOBILENET_V3_SMALL,
        1024,
        num_classes=num_classes,
        width_mult=width_mult,
        dropout=dropout,
        resolution=resolution,
        cifar=cifar,
        in_channels=in_channels,
        reduced_tail=reduced_tail,
        output_stride=output_stride,
    )
