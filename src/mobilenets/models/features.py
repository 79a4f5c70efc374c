"""Backbones: a classifier's intermediate feature maps, for detection and segmentation heads.

Every zoo model keeps its body in ``model.features`` (a plain ``nn.Sequential``), so a
feature map is named by where it is taken in that sequence - a *tap*:

* ``"14"`` (or ``14``) - the output of ``features[14]``; negative indices count from the end;
* ``"14.expansion"`` - *inside* the inverted residual ``features[14]``, after its 1x1
  expansion and before its depthwise conv.  This is where SSDLite takes its first map
  (V2 paper, section 6.2: "the expansion of layer 15", 576 channels at stride 16 for
  MobileNetV2; the paper counts the stem as layer 1, so its layer 15 is ``features[14]``),
  and where torchvision's SSDLite and LR-ASPP tap MobileNetV3's C4 block.

:class:`FeatureExtractor` keeps ``features`` under the same name and with the same
modules as the classifier, cut after the deepest tap, so a classifier's weights
(ours or torchvision's) load into it unchanged, and its :attr:`~FeatureExtractor.feature_info`
lists each map's channels and stride, as timm's ``features_only`` models do::

    backbone = mobilenets.create_model("mobilenet_v2", features_only=True, out_indices=["14.expansion", -1])
    [(f.channels, f.stride) for f in backbone.feature_info]   # [(576, 16), (1280, 32)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..weights import torchvision_key_map
from .base import ImageClassifier

__all__ = ["EXPANSION", "FeatureExtractor", "FeatureInfo", "available_features", "default_taps"]

EXPANSION = "expansion"


@dataclass(frozen=True)
class FeatureInfo:
    """One feature map a backbone can return."""

    tap: str  # "14" or "14.expansion", as out_indices takes it
    layer: int  # index in ``features``
    expansion: bool  # inside the block, after its 1x1 expansion
    channels: int
    stride: int  # input side / map side

    @property
    def name(self) -> str:
        return f"features.{self.tap}"


def _body(model: nn.Module) -> nn.Sequential:
    body = getattr(model, "features", None)
    if not isinstance(body, nn.Sequential):
        name = (getattr(model, "arch", None) or {}).get("name", type(model).__name__)
        raise ConfigError(
            f"{name} keeps no `features` sequence to take feature maps from "
            "(the zoo's models, torchvision's VGG, MobileNets and EfficientNets do)"
        )
    return body


def _has_expansion(layer: nn.Module) -> bool:
    return callable(getattr(layer, "expanded", None)) and getattr(layer, "expand", None) is not None


def available_features(model: nn.Module) -> list[FeatureInfo]:
    """Every map ``model`` can return: each layer's output and each block's expansion.

    Channels and strides are measured by one pass of a small blank image through
    ``features`` (on the meta device when the model is there), so they hold for
    converted layers and torchvision's modules alike.
    """
    body = _body(model)
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    side = 2 * getattr(model, "total_stride", 32)
    x = torch.zeros(1, getattr(model, "in_channels", 3), side, side, device=device, dtype=dtype)
    found: list[FeatureInfo] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, layer in enumerate(body):
                if _has_expansion(layer):
                    wide = layer.expanded(x)
                    found.append(FeatureInfo(f"{i}.{EXPANSION}", i, True, wide.shape[1], side // wide.shape[-1]))
                    x = layer.forward_from_expansion(x, wide)
                else:
                    x = layer(x)
                found.append(FeatureInfo(str(i), i, False, x.shape[1], side // x.shape[-1]))
    finally:
        model.train(was_training)
    return found


def default_taps(model: nn.Module, features: list[FeatureInfo] | None = None) -> list[str]:
    """The last layer output at each stride, as timm's ``features_only`` returns (C1..C5);
    ``features``: ``available_features(model)`` if already measured."""
    outputs = [f for f in (features or available_features(model)) if not f.expansion]
    last_at_stride = {f.stride: f.tap for f in outputs}
    return list(last_at_stride.values())


def _normalise(spec: Any, layers: int) -> str:
    """``14`` / ``"14"`` / ``-1`` / ``"14.expansion"`` -> ``"14"`` / ``"14.expansion"``."""
    text = str(spec).strip()
    index, _, point = text.partition(".")
    try:
        position = int(index)
    except ValueError:
        position = None
    if position is None or point not in ("", EXPANSION) or isinstance(spec, bool):
        raise ConfigError(
            f"feature tap {spec!r} is not a layer index or 'INDEX.expansion' (e.g. 14, -1, '14.expansion')"
        )
    if not -layers <= position < layers:
        raise ConfigError(f"feature tap {spec!r} is outside features[0..{layers - 1}]")
    position %= layers
    return f"{position}.{point}" if point else str(position)


class FeatureExtractor(nn.Module):
    """A classifier's body returning the maps at ``taps`` (list, shallowest first).

    Args:
        model: a zoo classifier (or any module with ``features``), possibly converted.
        taps: where to take maps (see the module docstring); default: the last
            layer at each stride.
        features: ``available_features(model)``, when the caller has measured it already.

    ``features`` is the classifier's own sequence cut after the deepest tap, so
    parameter names are the classifier's and its weights load directly.
    """

    check_input = ImageClassifier.check_input

    def __init__(
        self,
        model: nn.Module,
        taps: Sequence[Any] | None = None,
        *,
        features: list[FeatureInfo] | None = None,
    ) -> None:
        super().__init__()
        # how the whole classifier's keys in torchvision's layout map to ours (None: no twin),
        # kept so that a classifier's published weights load into this body
        self.torchvision_keys = torchvision_key_map(model)
        body = _body(model)
        features = features or available_features(model)  # one probe for the defaults and the check
        wanted = [_normalise(t, len(body)) for t in (taps if taps is not None else default_taps(model, features))]
        if not wanted:
            raise ConfigError("out_indices is empty: name at least one feature map")
        if len(set(wanted)) != len(wanted):
            raise ConfigError(f"out_indices names a feature map twice: {wanted}")
        known = {f.tap: f for f in features}
        for tap in wanted:
            if tap not in known:
                layer = body[int(tap.split(".")[0])]
                raise ConfigError(
                    f"features[{tap.split('.')[0]}] ({type(layer).__name__}) has no 1x1 expansion to tap; "
                    "expansion taps exist in inverted-residual blocks with an expansion factor above 1"
                )
        self.feature_info = sorted((known[t] for t in wanted), key=lambda f: (f.layer, not f.expansion))
        last = max(f.layer for f in self.feature_info)
        self.features = body[: last + 1]
        self.in_channels = getattr(model, "in_channels", 3)
        self.total_stride = max(f.stride for f in self.feature_info)
        self.default_resolution = getattr(model, "default_resolution", 224)
        self.arch: dict[str, Any] = dict(getattr(model, "arch", None) or {})
        self._taps = {(f.layer, f.expansion): n for n, f in enumerate(self.feature_info)}

    @property
    def out_channels(self) -> list[int]:
        return [f.channels for f in self.feature_info]

    def forward(self, x: Tensor) -> list[Tensor]:
        self.check_input(x)
        maps: list[Tensor | None] = [None] * len(self.feature_info)
        for i, layer in enumerate(self.features):
            if (i, True) in self._taps:
                wide = layer.expanded(x)
                maps[self._taps[(i, True)]] = wide
                x = layer.forward_from_expansion(x, wide)
            else:
                x = layer(x)
            if (i, False) in self._taps:
                maps[self._taps[(i, False)]] = x
        return maps  # type: ignore[return-value]

    def adapt_state_dict(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """A classifier's weights for this backbone: torchvision's names mapped to ours,
        then the layers past the deepest tap and the classifier left out."""
        own = self.state_dict()
        if not set(own) <= set(state):
            mapping = self.torchvision_keys
            if mapping is not None and set(state) == set(mapping):
                state = {mapping[k]: v for k, v in state.items()}
        if set(own) <= set(state):
            return {k: state[k] for k in own}
        return state
