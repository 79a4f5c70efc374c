"""Conversion methods as entries: what the whole-network conversion (``convert.py``) needs to
know of each way of replacing a regular conv.

A :class:`ConversionMethod` says how to fit the replacement at a rank, the untrained layers a
saved file's weights fit (so ``load_model`` rebuilds a converted network), its mult-adds at a
rank, the highest useful rank, whether calibration images shape the fit, whether any padding is
allowed, and whether the least-squares refit applies.  ``decompose(method=...)``, pipelines
(``"channel+decouple"``), the command line and loading a saved file all look methods up here;
adding one is its functions (``baselines.py`` holds the four decompositions) and one
:func:`register_method`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from . import baselines
from .layers import DecoupledConv, decoupled_mult_adds, max_rank

__all__ = ["ConversionMethod", "conversion_method", "decoupling", "method_names", "register_method"]

Conv = nn.Conv2d
HW = tuple[int, int]


@dataclass(frozen=True)
class ConversionMethod:
    name: str
    # (conv, rank, moments, seed) -> the fitted replacement; moments: (mean, covariance) of the
    # conv's responses on calibration images for a ``calibrated`` method (else None); seed: an
    # iterative fit's start
    fit: Callable[[Conv, int, tuple[Tensor, Tensor] | None, int], nn.Module]
    # (layer name, conv, rank, saved step) -> untrained layers with the fitted ones' structure
    structure: Callable[[str, Conv, int, Mapping[str, Any]], nn.Module]
    cost: Callable[[Conv, int, HW, HW], int]  # mult-adds at a rank, for one call at these sizes
    max_rank: Callable[[Conv], int]
    calibrated: bool = False  # fitted to the responses on calibration images (when given)
    any_padding: bool = False  # handles every padding mode (the decompositions: numeric zeros only)
    refits: bool = False  # its last 1x1 conv is refitted by least squares to calibration images
    order: str | None = None  # decoupling's: "dw_pw" or "pw_dw" (its saved structure depends on it)

    @property
    def label(self) -> str:
        """How reports name it: "decouple-dw_pw", "cp"."""
        return f"{self.name}-{self.order}" if self.order else self.name

    def recorded(self, refitted: list[str], calibrated: bool) -> dict[str, Any]:
        """What a saved file records beyond the method and its ranks."""
        if self.order is not None:
            return {"order": self.order, **({"refined": refitted} if refitted else {})}
        return {"calibrated": calibrated} if self.calibrated else {}


_METHODS: dict[str, ConversionMethod] = {}


def register_method(method: ConversionMethod) -> ConversionMethod:
    _METHODS[method.name] = method
    return method


def method_names() -> list[str]:
    return list(_METHODS)


def conversion_method(name: str) -> ConversionMethod:
    if name not in _METHODS:
        raise ConfigError(
            f"method must be one of {', '.join(_METHODS)}, or several joined by '+' "
            f"(e.g. channel+spatial+decouple); got {name!r}"
        )
    return _METHODS[name]


def decoupling(order: str = "dw_pw") -> ConversionMethod:
    """Network decoupling in ``order`` ("dw_pw": depthwise then pointwise, the refittable one)."""
    return ConversionMethod(
        "decouple",
        fit=lambda conv, rank, moments, seed: DecoupledConv.from_conv(conv, rank, order),
        structure=_decoupled_structure,
        cost=lambda conv, rank, i, o: decoupled_mult_adds(conv, rank, order, i, o),
        max_rank=lambda conv: max_rank(conv, order),
        any_padding=True,
        refits=order == "dw_pw",
        order=order,
    )


def _decoupled_structure(name: str, conv: Conv, rank: int, step: Mapping[str, Any]) -> nn.Module:
    new = DecoupledConv.from_conv(conv, rank, step.get("order", "dw_pw"))
    if name in step.get("refined", ()) and new.pointwise.bias is None:  # the refit gave it a bias
        new.pointwise.bias = nn.Parameter(torch.zeros_like(new.pointwise.weight[:, 0, 0, 0]))
    return new


def _decomposition(name: str, fit, layers, cost, limit, *, calibrated: bool = False) -> ConversionMethod:
    return ConversionMethod(
        name,
        fit=fit,
        structure=lambda name, conv, rank, step: layers(
            conv, rank, **({"calibrated": step.get("calibrated", False)} if calibrated else {})
        ),  # fmt: skip
        cost=cost,
        max_rank=limit,
        calibrated=calibrated,
    )


# The order here is the order the command line lists them in.
register_method(_decomposition("cp", lambda conv, rank, moments, seed: baselines.cp_conv(conv, rank, seed=seed),
                               baselines.cp_layers,
                               baselines.cp_mult_adds, baselines.cp_max_rank))  # fmt: skip
register_method(_decomposition("tucker", lambda conv, rank, moments, seed: baselines.tucker_conv(conv, rank),
                               baselines.tucker_layers, baselines.tucker_mult_adds, baselines.tucker_max_rank))  # fmt: skip
register_method(_decomposition("spatial", lambda conv, rank, moments, seed: baselines.spatial_conv(conv, rank),
                               baselines.spatial_layers, baselines.spatial_mult_adds, baselines.spatial_max_rank))  # fmt: skip
register_method(_decomposition("channel", lambda conv, rank, moments, seed: baselines.channel_conv(conv, rank, moments),
                               baselines.channel_layers,
                               baselines.channel_mult_adds, baselines.channel_max_rank, calibrated=True))  # fmt: skip
register_method(decoupling())
