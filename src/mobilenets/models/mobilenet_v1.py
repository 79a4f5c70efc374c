"""MobileNetV1 (Howard et al. 2017, "MobileNets: Efficient Convolutional Neural
Networks for Mobile Vision Applications"), and its standard-convolution twin.

The network is Table 1 of the paper: a 3x3 convolution with stride 2, thirteen
depthwise separable layers, global average pooling and a fully connected layer,
with batch norm and ReLU after every convolution.

Two knobs trade accuracy for cost, exactly as in the paper:

* **width multiplier alpha** (``width_mult``) thins every layer to ``alpha * M``
  channels.  Mult-adds and parameters fall roughly with ``alpha**2``:
  1.0 -> 569M mult-adds / 4.2M params, 0.75 -> 325M / 2.6M, 0.5 -> 149M / 1.3M,
  0.25 -> 41M / 0.5M (ImageNet top-1 70.6 / 68.4 / 63.7 / 50.6 %).
* **resolution multiplier rho** is the input size ``224 * rho`` (``resolution``).
  Mult-adds fall with ``rho**2`` and parameters do not change:
  224 -> 569M, 192 -> 418M, 160 -> 290M, 128 -> 186M (70.6 / 69.1 / 67.2 / 64.4 %).

``mobilenet_v1_conv`` is the same network with each depthwise separable layer
replaced by one full 3x3 convolution (the paper's Table 4 baseline: 4866M
mult-adds, 29.3M parameters, 71.7 % top-1): 8.6x the cost for 1.1 points.
"""

from __future__ import annotations

from torch import nn

from ..layers import ConvBNAct, DepthwiseSeparable, check_width_mult, scale_channels
from .base import ImageClassifier, apply_cifar_strides, assemble
from .registry import register_model

__all__ = ["MOBILENET_V1_LAYERS", "mobilenet_v1", "mobilenet_v1_conv"]

STEM_CHANNELS, STEM_STRIDE = 32, 2

# Table 1: (output channels, stride) of each depthwise separable layer.  The
# paper prints stride 2 for the last layer, but its output stays 7x7 and every
# implementation (including the authors' TF-slim code) uses stride 1.
MOBILENET_V1_LAYERS: list[tuple[int, int]] = [
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    *[(512, 1)] * 5,
    (1024, 2),
    (1024, 1),
]


def _build(
    *,
    full_conv: bool,
    num_classes: int,
    width_mult: float,
    dropout: float,
    resolution: int,
    activation: str,
    cifar: bool,
    in_channels: int,
) -> ImageClassifier:
    width_mult = check_width_mult(width_mult)
    strides = [STEM_STRIDE] + [s for _, s in MOBILENET_V1_LAYERS]
    if cifar:
        strides = apply_cifar_strides(strides)
    channels = scale_channels(STEM_CHANNELS, width_mult, layer="the stem conv")
    layers: list[nn.Module] = [ConvBNAct(in_channels, channels, 3, strides[0], activation=activation)]
    for index, ((out, _), stride) in enumerate(zip(MOBILENET_V1_LAYERS, strides[1:]), start=1):
        out = scale_channels(out, width_mult, layer=f"layer {index}")
        if full_conv:
            layers.append(ConvBNAct(channels, out, 3, stride, activation=activation))
        else:
            layers.append(DepthwiseSeparable(channels, out, stride, activation=activation))
        channels = out
    classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(channels, num_classes))
    return assemble(layers, classifier, strides=strides, in_channels=in_channels, resolution=resolution)


@register_model(
    "mobilenet_v1",
    summary="MobileNetV1 (Howard et al. 2017, Table 1): 13 depthwise separable layers",
    default_resolution=224,
)
def mobilenet_v1(
    *,
    num_classes: int = 1000,
    width_mult: float = 1.0,
    dropout: float = 0.001,
    resolution: int = 224,
    activation: str = "relu",
    cifar: bool = False,
    in_channels: int = 3,
) -> ImageClassifier:
    """MobileNetV1.

    Args:
        num_classes: outputs of the final fully connected layer.
        width_mult: alpha; every layer gets ``floor(alpha * channels)`` channels.
            Cost ~ alpha**2 (1.0: 569M mult-adds, 0.25: 41M). Any alpha > 0 whose
            narrowest layer keeps at least one channel.
        dropout: dropout before the classifier (Keras uses 1e-3; the paper
            used "little regularisation").
        resolution: the input side the model is meant for, 224 * rho. The
            network itself accepts any size >= its total stride (32).
        activation: ``relu`` as published; ``relu6`` is the common mobile variant.
        cifar: stem and first stride-2 layer at stride 1, for 32x32 images.
        in_channels: image channels.
    """
    return _build(
        full_conv=False,
        num_classes=num_classes,
        width_mult=width_mult,
        dropout=dropout,
        resolution=resolution,
        activation=activation,
        cifar=cifar,
        in_channels=in_channels,
    )


@register_model(
    "mobilenet_v1_conv",
    summary="MobileNetV1 with full 3x3 convolutions instead of depthwise separable (Table 4 baseline)",
    default_resolution=224,
)
def mobilenet_v1_conv(
    *,
    num_classes: int = 1000,
    width_mult: float = 1.0,
    dropout: float = 0.001,
    resolution: int = 224,
    activation: str = "relu",
    cifar: bool = False,
    in_channels: int = 3,
) -> ImageClassifier:
    """MobileNetV1's standard-convolution twin: same layers and strides, each depthwise
    separable layer replaced by one full 3x3 conv. 4866M mult-adds and 29.3M
    parameters at width 1.0, 224x224: the baseline that shows what depthwise
    separable convolutions save. Arguments as :func:`mobilenet_v1`."""
    return _build(
        full_conv=True,
        num_classes=num_classes,
        width_mult=width_mult,
        dropout=dropout,
        resolution=resolution,
        activation=activation,
        cifar=cifar,
        in_channels=in_channels,
    )
