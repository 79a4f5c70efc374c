"""Building blocks shared by every MobileNet: one class per block kind.

* :class:`ConvBNAct` - a convolution, batch norm and optional activation (the unit
  every layer in the papers is made of: "BN and ReLU after every conv").
* :class:`DepthwiseSeparable` - MobileNetV1's layer: a k x k depthwise conv that
  filters each channel on its own, then a 1 x 1 pointwise conv that mixes channels.
* :class:`SqueezeExcite` - MobileNetV3's channel attention.
* :class:`InvertedResidual` - MobileNetV2/V3's bottleneck: 1 x 1 expand, depthwise,
  (squeeze-excite), linear 1 x 1 project, residual when shapes allow.

Channel rounding helpers (:func:`make_divisible`, :func:`scale_channels`) live here
too, because every builder needs them and they decide whether a width multiplier is
valid at all.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from .errors import ConfigError

__all__ = [
    "ACTIVATIONS",
    "BasicResidual",
    "ConvBNAct",
    "DepthwiseSeparable",
    "InvertedResidual",
    "SqueezeExcite",
    "check_width_mult",
    "make_activation",
    "make_divisible",
    "scale_channels",
]

# Names accepted wherever an activation is configurable.  ``inplace`` saves one
# activation-sized tensor per layer, which matters for the memory figures.
ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "hardswish": lambda: nn.Hardswish(inplace=True),
    "hardsigmoid": lambda: nn.Hardsigmoid(inplace=True),
    "sigmoid": nn.Sigmoid,
    "silu": lambda: nn.SiLU(inplace=True),
    "identity": nn.Identity,
}
_ALIASES = {"hswish": "hardswish", "hsigmoid": "hardsigmoid", "swish": "silu", "linear": "identity"}


def make_activation(name: str | None) -> nn.Module | None:
    """Return a fresh activation module for ``name`` (``None`` means no activation)."""
    if name is None:
        return None
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in ACTIVATIONS:
        choices = ", ".join(sorted(ACTIVATIONS))
        raise ConfigError(f"unknown activation {name!r}; choose one of: {choices}")
    return ACTIVATIONS[key]()


def check_width_mult(width_mult: float) -> float:
    """Reject width multipliers that cannot build a network (0, negative, NaN, inf)."""
    try:
        value = float(width_mult)
    except (TypeError, ValueError):
        raise ConfigError(f"width_mult must be a number, got {width_mult!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"width_mult must be a positive finite number, got {width_mult!r}")
    return value


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never dropping below 90 %.

    This is the rule of the reference MobileNetV2/V3 implementations (TF-slim,
    torchvision, timm): hardware likes channel counts that are multiples of 8, and
    rounding down by more than 10 % would cost accuracy the width multiplier did not
    ask to give up.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def scale_channels(channels: int, width_mult: float, *, layer: str = "layer") -> int:
    """MobileNetV1's width rule: ``floor(alpha * channels)``, exactly as the paper's alpha*M.

    V1 does not round to multiples of 8 (its published 0.75/0.5/0.25 tables follow
    from the plain product), so a tiny alpha can leave a layer with no channels;
    that is an error rather than a silently empty network.
    """
    # The epsilon keeps products such as 0.29 * 100 = 28.999999999999996 at 29.
    scaled = int(channels * width_mult + 1e-6)
    if scaled < 1:
        problem = (
            f"leaves {layer} ({channels} channels at width 1.0) with {channels * width_mult:.3g} channels, "
            f"which rounds to zero; use"
        )
        raise ConfigError(
            f"width_mult={width_mult} {problem} width_mult >= {1.0 / channels:.4g}",
            cli=f"--width-mult {width_mult} {problem} --width-mult >= {1.0 / channels:.4g}",
        )
    return scaled


class ConvBNAct(nn.Sequential):
    """``conv -> BatchNorm -> activation``; the conv has no bias because BN supplies one.

    Children are named ``conv``, ``bn`` and ``act`` so that state-dict keys read as
    what they are (``features.0.conv.weight``).  ``activation=None`` gives a linear
    layer (the projection of a linear bottleneck).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        dilation: int = 1,
        activation: str | None = "relu",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        padding = (kernel_size - 1) // 2 * dilation
        layers = {
            "conv": nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=groups,
                bias=False,
            ),
            "bn": nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum),
        }
        act = make_activation(activation)
        if act is not None:
            layers["act"] = act
        super().__init__()
        for name, module in layers.items():
            self.add_module(name, module)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride


class DepthwiseSeparable(nn.Module):
    """MobileNetV1 layer: k x k depthwise conv (one filter per channel) + 1 x 1 pointwise conv.

    For an input of M channels, N outputs and an F x F output map this costs
    ``k*k*M*F*F + M*N*F*F`` mult-adds against ``k*k*M*N*F*F`` for a full k x k
    convolution: a reduction of ``1/N + 1/k**2`` (8-9x at k = 3).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        kernel_size: int = 3,
        activation: str = "relu",
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        bn = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}
        self.depthwise = ConvBNAct(
            in_channels, in_channels, kernel_size, stride, groups=in_channels, activation=activation, **bn
        )
        self.pointwise = ConvBNAct(in_channels, out_channels, 1, activation=activation, **bn)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class SqueezeExcite(nn.Module):
    """Channel attention (Hu et al.; MobileNetV3 section 5.3).

    Global-average-pools the input, squeezes it through a small bottleneck
    (``reduce`` then ``expand``, both 1 x 1 convs with bias) and rescales every
    channel by a gate in [0, 1] (hard-sigmoid in V3, cheap on mobile CPUs).
    """

    def __init__(
        self,
        channels: int,
        squeeze_channels: int,
        activation: str = "relu",
        gate: str = "hardsigmoid",
    ) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeeze_channels, 1)
        self.act = make_activation(activation)
        self.expand = nn.Conv2d(squeeze_channels, channels, 1)
        self.gate = make_activation(gate)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.gate(self.expand(self.act(self.reduce(self.pool(x)))))
        return x * scale


class InvertedResidual(nn.Module):
    """MobileNetV2/V3 bottleneck block.

    ``in_channels -> 1x1 expand to expanded_channels (+act) -> kxk depthwise (+act)
    -> [squeeze-excite] -> 1x1 project to out_channels (linear) [+ input]``.

    The block is "inverted" because the residual connects the thin bottlenecks
    while the wide tensor lives only inside the block; that is what lets
    inference hold only bottleneck-sized tensors (V2 paper, section 5).

    Ablation switches from the V2 paper:
      * ``linear_bottleneck=False`` puts the activation after the projection too
        (the paper shows this loses accuracy, Figure 6a).
      * ``residual=False`` drops the shortcut (Figure 6b).
    """

    # Marks the block as one operation for the memory analysis: its inner tensors
    # can be computed piecewise and need never be materialised in full.
    memory_efficient_unit = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        expanded_channels: int,
        kernel_size: int = 3,
        activation: str = "relu6",
        se_channels: int = 0,
        se_gate: str = "hardsigmoid",
        linear_bottleneck: bool = True,
        residual: bool = True,
        dilation: int = 1,
        bn_eps: float = 1e-5,
        bn_momentum: float = 0.1,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ConfigError(f"InvertedResidual stride must be 1 or 2, got {stride}")
        bn = {"bn_eps": bn_eps, "bn_momentum": bn_momentum}
        # With expansion 1 (V2's first block) the 1x1 expand would be an identity-
        # sized conv for no benefit; the published networks omit it.
        self.expand = (
            ConvBNAct(in_channels, expanded_channels, 1, activation=activation, **bn)
            if expanded_channels != in_channels
            else None
        )
        self.depthwise = ConvBNAct(
            expanded_channels,
            expanded_channels,
            kernel_size,
            stride,
            groups=expanded_channels,
            dilation=dilation,
            activation=activation,
            **bn,
        )
        self.se = SqueezeExcite(expanded_channels, se_channels, gate=se_gate) if se_channels else None
        self.project = ConvBNAct(
            expanded_channels, out_channels, 1, activation=None if linear_bottleneck else activation, **bn
        )
        self.use_residual = residual and stride == 1 and in_channels == out_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.expanded_channels = expanded_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_from_expansion(x, self.expanded(x))

    def expanded(self, x: Tensor) -> Tensor:
        """The wide tensor after the 1x1 expansion: SSDLite's first feature map is this
        tensor in the first stride-16 -> 32 block (V2 paper, section 6.2)."""
        return x if self.expand is None else self.expand(x)

    def forward_from_expansion(self, x: Tensor, expanded: Tensor) -> Tensor:
        """The rest of the block, given its input ``x`` and ``expanded(x)``."""
        out = self.depthwise(expanded)
        if self.se is not None:
            out = self.se(out)
        out = self.project(out)
        return out + x if self.use_residual else out


class BasicResidual(nn.Module):
    """ResNet-18/34's block: two 3x3 conv + BN, added to the input (through a 1x1
    conv + BN when the stride or width changes), then ReLU.

    Children are named like torchvision's BasicBlock (``conv1 bn1 conv2 bn2``,
    ``downsample``) and registered in the same order, so torchvision's ResNet
    state dicts map onto it.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + shortcut)
