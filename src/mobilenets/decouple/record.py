"""The saved record of a conversion: the steps a file keeps, and rebuilding their structure so the
weights fit."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .methods import conversion_method
from .plan import replace_module

__all__ = ["apply_converted_structure", "apply_decoupled_structure", "with_converted_steps"]


def with_converted_steps(arch: dict[str, Any]) -> dict[str, Any]:
    """``arch`` with a file's older ``decoupled`` record as a ``converted`` step."""
    if "decoupled" in arch:
        legacy = arch.pop("decoupled")
        arch["converted"] = [*arch.get("converted", []), {"method": "decouple", "order": "dw_pw", **legacy}]
    return arch


def apply_converted_structure(model: nn.Module, steps: list[dict[str, Any]]) -> nn.Module:
    """Swap the recorded convs for untrained layers of the recorded methods and ranks,
    step by step, so that a saved converted model's state dict fits; in place."""
    for step in steps:
        ranks = step.get("ranks", {})  # (a pipeline's "refit" step converts nothing: it adds biases)
        method = conversion_method(step["method"]) if ranks else None
        for name, rank in ranks.items():
            try:
                conv = model.get_submodule(name)
            except AttributeError:
                raise ConfigError(f"the recorded converted layer {name!r} is not in the model") from None
            with torch.no_grad():
                new = method.structure(name, conv, rank, step)
            replace_module(model, name, new)
        for name in step.get("biased", ()):  # 1x1 convs a least-squares refit gave a bias
            pointwise = model.get_submodule(name)
            if pointwise.bias is None:
                pointwise.bias = nn.Parameter(torch.zeros_like(pointwise.weight[:, 0, 0, 0]))
    arch = with_converted_steps(dict(getattr(model, "arch", None) or {}))
    model.arch = {**arch, "converted": [*arch.get("converted", []), *steps]}
    return model


def apply_decoupled_structure(model: nn.Module, decoupled: dict[str, Any]) -> nn.Module:
    """:func:`apply_converted_structure` for files that recorded a ``decoupled`` key."""
    return apply_converted_structure(model, [{"method": "decouple", "order": "dw_pw", **decoupled}])
