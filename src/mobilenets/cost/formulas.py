"""The analytic cost formulas of MobileNetV1, section 3.1.

With a D_K x D_K kernel, M input and N output channels and a D_F x D_F output map:

* standard conv:            D_K*D_K*M*N*D_F*D_F mult-adds, D_K*D_K*M*N weights
* depthwise separable conv: D_K*D_K*M*D_F*D_F + M*N*D_F*D_F mult-adds,
                            D_K*D_K*M + M*N weights
* reduction:                1/N + 1/D_K**2 (about 1/8 to 1/9 at D_K = 3)

Width alpha and resolution rho enter as M -> alpha*M, N -> alpha*N, D_F -> rho*D_F.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Cost", "conv_cost", "depthwise_separable_cost", "depthwise_separable_reduction"]


class Cost(NamedTuple):
    mult_adds: int
    weights: int


def conv_cost(kernel: int, in_channels: int, out_channels: int, feature_size: int) -> Cost:
    """A standard ``kernel x kernel`` convolution (no bias)."""
    return Cost(
        kernel * kernel * in_channels * out_channels * feature_size * feature_size,
        kernel * kernel * in_channels * out_channels,
    )


def depthwise_separable_cost(kernel: int, in_channels: int, out_channels: int, feature_size: int) -> Cost:
    """A depthwise ``kernel x kernel`` conv followed by a 1x1 pointwise conv."""
    f2 = feature_size * feature_size
    return Cost(
        kernel * kernel * in_channels * f2 + in_channels * out_channels * f2,
        kernel * kernel * in_channels + in_channels * out_channels,
    )


def depthwise_separable_reduction(kernel: int, out_channels: int) -> float:
    """Mult-adds of a depthwise separable conv over a standard one: ``1/N + 1/k**2``."""
    return 1 / out_channels + 1 / (kernel * kernel)
