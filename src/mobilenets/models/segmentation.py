"""Semantic segmentation on MobileNet backbones: Mobile DeepLabv3 and LR-ASPP.

A segmenter labels every pixel.  The backbone runs at output stride 16 (its last
stride-2 stage dilated instead, ``output_stride=16``) so the coarse map keeps more
detail; a head turns it into per-class scores, upsampled (bilinear) to the input.

* ``lraspp_mobilenet_v3_large`` / ``_small`` - V3 paper section 6.3, Lite R-ASPP: on the
  stride-16 map, a 1x1 conv (128 channels) gated by a global-pooled sigmoid branch,
  upsampled and added to a 1x1 classifier on the stride-8 map.  ``large`` is
  torchvision's network layer for layer (3,221,538 parameters at 21 classes); the paper
  also halves the tail (``reduced_tail=True``), torchvision does not.
* ``deeplabv3_mobilenet_v3_large`` - torchvision's DeepLabv3 on the dilated V3-Large
  (11,025,477 parameters; 11,029,328 with ``aux_loss=True``'s FCN head on the stride-8 map).
* ``deeplabv3_mobilenet_v2`` - Mobile DeepLabv3 (V2 paper section 6.3): MobileNetV2 at
  output stride 16 (or 8), the DeepLabv3 head on its last bottleneck (320 channels, not
  the 1280-wide conv after it), with ASPP (atrous rates 6/12/18 at stride 16, 12/24/36
  at 8) or without it (``aspp=False``: only the 1x1 and image-pooling branches, the
  paper's cheap variant), the class scores straight from the ASPP's projection as in
  DeepLab's own code: 2,113,557 parameters and 2.74G mult-adds at 513x513 without ASPP.

The heads are torchvision's modules (``LRASPP``, ``DeepLabHead``, ``ASPP``, ``FCNHead``)
on our backbones (:mod:`mobilenets.models.features`), so any
classifier weights the registry takes (ours, torchvision's ImageNet files) start them.
The model takes a batch (N, 3, H, W) normalised as its backbone was (ImageNet
statistics) and returns ``{"out": (N, classes, H, W)}`` (and ``"aux"`` with ``aux_loss``).
``num_classes`` counts the background (21 for Pascal VOC's 20 + background).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabHead, DeepLabV3
from torchvision.models.segmentation.fcn import FCNHead
from torchvision.models.segmentation.lraspp import LRASPP

from .features import FeatureExtractor, FeatureInfo, available_features
from .registry import create_model, register_model

__all__ = ["NamedMaps"]

ASPP_CHANNELS = 256  # DeepLabv3's branch and projection width


class NamedMaps(nn.Module):
    """A backbone whose maps come out as the dict torchvision's segmentation models read
    (``{"low": ..., "high": ...}`` for LR-ASPP, ``{"out": ..., "aux": ...}`` for DeepLabv3)."""

    def __init__(self, body: FeatureExtractor, names: list[str]) -> None:
        super().__init__()
        self.body = body
        self.names = names

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return OrderedDict(zip(self.names, self.body(x)))


def _tap(features: list[FeatureInfo], stride: int | None) -> str:
    """torchvision's choice: the block that first reaches ``stride`` (its C2 at 1/8), or
    with ``None`` the body's last layer (C5)."""
    outputs = [f for f in features if not f.expansion]
    return outputs[-1].tap if stride is None else next(f.tap for f in outputs if f.stride == stride)


def _backbone(name: str, width_mult: float, output_stride: int, taps: dict[str, int | None], **options) -> NamedMaps:
    """The classifier body at ``output_stride`` with a map per name in ``taps`` (name -> stride
    of the block that first reaches it, or None for the last layer), deepest last."""
    classifier = create_model(name, width_mult=width_mult, output_stride=output_stride, **options)
    features = available_features(classifier)
    chosen = {key: _tap(features, stride) for key, stride in taps.items()}
    order = sorted(chosen, key=lambda k: int(chosen[k]))
    body = FeatureExtractor(classifier, [chosen[k] for k in order], features=features)
    return NamedMaps(body, order)


def _lraspp(backbone: str, num_classes: int, width_mult: float, resolution: int, reduced_tail: bool) -> nn.Module:
    """LR-ASPP on ``backbone`` dilated to 1/16: its 1/8 map (low) and its last layer (high)."""
    maps = _backbone(backbone, width_mult, 16, {"low": 8, "high": None}, reduced_tail=reduced_tail)
    low, high = maps.body.out_channels
    return _finish(LRASPP(maps, low, high, num_classes), resolution)


def _finish(model: nn.Module, resolution: int) -> nn.Module:
    model.in_channels, model.default_resolution = 3, resolution
    return model


@register_model(
    "lraspp_mobilenet_v3_large",
    summary="LR-ASPP on dilated MobileNetV3-Large (V3 paper section 6.3; torchvision's twin)",
    default_resolution=512,
    torchvision_twin=lambda arch: _torchvision_twin("lraspp_mobilenet_v3_large", arch),
    task="segmentation",
)
def lraspp_mobilenet_v3_large(
    *, num_classes: int = 21, width_mult: float = 1.0, resolution: int = 512, reduced_tail: bool = False
) -> nn.Module:
    """LR-ASPP: 1/8 low-level classifier + gated 1/16 high-level branch (128 channels)."""
    return _lraspp("mobilenet_v3_large", num_classes, width_mult, resolution, reduced_tail)


@register_model(
    "lraspp_mobilenet_v3_small",
    summary="LR-ASPP on dilated MobileNetV3-Small (V3 paper section 6.3)",
    default_resolution=512,
    task="segmentation",
)
def lraspp_mobilenet_v3_small(
    *, num_classes: int = 21, width_mult: float = 1.0, resolution: int = 512, reduced_tail: bool = False
) -> nn.Module:
    """As :func:`lraspp_mobilenet_v3_large` on V3-Small."""
    return _lraspp("mobilenet_v3_small", num_classes, width_mult, resolution, reduced_tail)


@register_model(
    "deeplabv3_mobilenet_v3_large",
    summary="DeepLabv3 on dilated MobileNetV3-Large (torchvision's twin)",
    default_resolution=512,
    torchvision_twin=lambda arch: _torchvision_twin("deeplabv3_mobilenet_v3_large", arch),
    task="segmentation",
)
def deeplabv3_mobilenet_v3_large(
    *, num_classes: int = 21, width_mult: float = 1.0, resolution: int = 512, aux_loss: bool = False
) -> nn.Module:
    """DeepLabv3 head (ASPP at rates 12/24/36, torchvision's choice) on the stride-16 map;
    ``aux_loss`` adds torchvision's FCN head on the stride-8 map for an auxiliary loss."""
    taps: dict[str, int | None] = {"aux": 8, "out": None} if aux_loss else {"out": None}
    backbone = _backbone("mobilenet_v3_large", width_mult, 16, taps)
    channels = dict(zip(backbone.names, backbone.body.out_channels))
    aux = FCNHead(channels["aux"], num_classes) if aux_loss else None
    return _finish(DeepLabV3(backbone, DeepLabHead(channels["out"], num_classes), aux), resolution)


@register_model(
    "deeplabv3_mobilenet_v2",
    summary="Mobile DeepLabv3 (V2 paper section 6.3): MobileNetV2 at output stride 16, ASPP optional",
    default_resolution=512,
    task="segmentation",
)
def deeplabv3_mobilenet_v2(
    *,
    num_classes: int = 21,
    width_mult: float = 1.0,
    resolution: int = 512,
    output_stride: int = 16,
    aspp: bool = True,
) -> nn.Module:
    """Mobile DeepLabv3: ``aspp=False`` keeps only the 1x1 and image-pooling branches of the
    head (the paper's cheapest variant); ``output_stride=8`` keeps larger maps (costlier)."""
    # The head reads the last bottleneck (320 channels), not the 1280-channel 1x1 conv after it,
    # which the paper found as good and far cheaper for DeepLabv3 heads (section 6.3).
    classifier = create_model("mobilenet_v2", width_mult=width_mult, output_stride=output_stride)
    backbone = NamedMaps(FeatureExtractor(classifier, [-2]), ["out"])
    (channels,) = backbone.body.out_channels
    rates = () if not aspp else (6, 12, 18) if output_stride == 16 else (12, 24, 36)
    # DeepLab's own head (TF models/research/deeplab): the ASPP's 256-channel projection feeds the
    # 1x1 class scores directly; torchvision's DeepLabHead puts a 3x3 256->256 conv between them
    # (590k parameters, 0.64G mult-adds at 513), which the paper's figures do not include.
    head = nn.Sequential(ASPP(channels, list(rates), ASPP_CHANNELS), nn.Conv2d(ASPP_CHANNELS, num_classes, 1))
    return _finish(DeepLabV3(backbone, head, None), resolution)


def _torchvision_twin(name: str, arch: Mapping[str, Any]) -> nn.Module:
    import torchvision

    if arch.get("width_mult", 1.0) != 1.0 or arch.get("reduced_tail"):
        return nn.Identity()  # torchvision builds width 1.0 with the full tail only: no key mapping
    options = {"aux_loss": True} if arch.get("aux_loss") else {}
    return torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=arch["num_classes"],
                                        **options)  # fmt: skip
