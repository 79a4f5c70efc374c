"""The shape every model in the zoo shares: ``features`` -> global pool -> ``classifier``.

Like torchvision's MobileNets, ``features`` is a plain :class:`torch.nn.Sequential`
(so ``model.features[:7]`` is a usable backbone) and ``classifier`` holds the head.
The base class adds what torchvision leaves out: a readable error for input the
network cannot take, and a record of how the model was built (``arch``) so that
saved weights can rebuild their own architecture.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import InputShapeError

__all__ = ["ImageClassifier", "apply_cifar_strides", "assemble", "init_weights"]


class ImageClassifier(nn.Module):
    """``features`` (Sequential) -> adaptive average pool -> ``classifier`` (Sequential).

    Args:
        features: the convolutional body, ending in the last feature map.
        classifier: the head applied to the pooled, flattened features.
        in_channels: channels the first layer expects (3 for RGB).
        total_stride: the product of all strides; inputs smaller than this would
            reach the last stages as zero-padded 1x1 maps, so they are refused.
        default_resolution: the input side the model was built for (224 * rho for
            ImageNet, 32 for the CIFAR variants).  Used by ``profile`` and the
            data pipeline when no size is given; any side >= ``total_stride`` works.
    """

    def __init__(
        self,
        features: nn.Sequential,
        classifier: nn.Sequential,
        *,
        in_channels: int = 3,
        total_stride: int = 32,
        default_resolution: int = 224,
    ) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = classifier
        self.in_channels = in_channels
        self.total_stride = total_stride
        self.default_resolution = default_resolution
        # Filled in by the registry: the name and options that rebuild this model.
        self.arch: dict[str, Any] = {}

    def get_classifier(self) -> nn.Linear:
        """The last fully connected layer (timm's head protocol): what a new task replaces and
        what fine-tuning trains faster than the body."""
        return next(m for m in reversed(list(self.classifier.modules())) if isinstance(m, nn.Linear))

    def reset_classifier(self, num_classes: int) -> None:
        """A freshly initialised last layer for ``num_classes`` (the rest of the head kept)."""
        old = self.get_classifier()
        parent = next(m for m in self.classifier.modules() if any(c is old for c in m.children()))
        name = next(n for n, c in parent.named_children() if c is old)
        new = nn.Linear(old.in_features, num_classes)
        nn.init.normal_(new.weight, 0, 0.01)  # as init_weights
        nn.init.zeros_(new.bias)
        setattr(parent, name, new)
        if self.arch:
            self.arch["num_classes"] = num_classes

    def check_input(self, x: Tensor) -> None:
        """Raise :class:`InputShapeError` for a tensor this network cannot classify."""
        if not isinstance(x, Tensor):
            raise InputShapeError(f"expected a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise InputShapeError(
                f"expected floating-point images, got a {x.dtype} tensor; convert with x.float() / 255 and normalise"
            )
        weight = next(self.parameters(), None)
        if weight is not None and x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise InputShapeError(
                f"the model's weights are {weight.dtype} but the input is {x.dtype}; "
                f"use x.to({weight.dtype}) (or model.to({x.dtype}))"
            )
        if x.dim() != 4:
            hint = " (add a batch dimension with x.unsqueeze(0))" if x.dim() == 3 else ""
            raise InputShapeError(
                f"expected a batch of images shaped (N, {self.in_channels}, H, W), "
                f"got a {x.dim()}-D tensor of shape {tuple(x.shape)}{hint}"
            )
        if x.shape[1] != self.in_channels:
            hint = (
                " - is the tensor channels-last (N, H, W, C)? use x.permute(0, 3, 1, 2)"
                if x.shape[-1] == self.in_channels
                else ""
            )
            raise InputShapeError(
                f"expected {self.in_channels} input channels, got {x.shape[1]} (input shape {tuple(x.shape)}){hint}"
            )
        height, width = x.shape[-2], x.shape[-1]
        if height < self.total_stride or width < self.total_stride:
            raise InputShapeError(
                f"input {height}x{width} is smaller than the network's total stride "
                f"{self.total_stride}; use images of at least {self.total_stride}x{self.total_stride}"
            )
        if not x.is_floating_point():
            raise InputShapeError(
                f"expected a floating-point tensor, got {x.dtype}; convert images with "
                "torchvision.transforms.v2.ToDtype(torch.float32, scale=True) and normalise them"
            )

    def forward_features(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_features(x)
        x = torch.flatten(self.pool(x), 1)
        return self.classifier(x)


def apply_cifar_strides(strides: list[int]) -> list[int]:
    """The usual adaptation of an ImageNet MobileNet to 32x32 images.

    ``strides[0]`` is the stem's stride, the rest are the stages' in order.  The
    stem and the first stride-2 stage run at stride 1 (as in the widely used
    pytorch-cifar MobileNetV2), so the total stride drops from 32 to 8 and a
    32x32 image still ends in a 4x4 feature map instead of 1x1.
    """
    strides = list(strides)
    strides[0] = 1
    for i in range(1, len(strides)):
        if strides[i] == 2:
            strides[i] = 1
            break
    return strides


def assemble(
    layers: list[nn.Module],
    classifier: nn.Sequential,
    *,
    strides: list[int],
    in_channels: int,
    resolution: int,
) -> ImageClassifier:
    """The last step of every builder: wrap the layers, record the stride, initialise."""
    model = ImageClassifier(
        nn.Sequential(*layers),
        classifier,
        in_channels=in_channels,
        total_stride=math.prod(strides),
        default_resolution=resolution,
    )
    init_weights(model)
    return model


def init_weights(model: nn.Module) -> None:
    """The reference implementations' initialisation (torchvision, Keras).

    He-normal (fan-out) for convs, BN as identity, small normal for the classifier.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0, 0.01)
            nn.init.zeros_(module.bias)
