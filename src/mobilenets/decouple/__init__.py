"""Network decoupling (Guo et al. 2018) and the decomposition baselines it is judged against.

``decouple(model, rank=|energy=|target_reduction=)`` turns a trained network's
regular convolutions into sums of depthwise separable convolutions without
training; ``decompose(model, method="cp"|"tucker"|"spatial")`` applies the
classic low-rank decompositions with the same interface and report.
"""

import sys
import types
from typing import Any

from ..validate import DECOMPOSITION_METHODS as METHODS
from .baselines import cp_conv, spatial_conv, tucker_conv
from .convert import decouple
from .layers import ORDERS, DecoupledConv, decoupled_mult_adds, max_rank, singular_values
from .pipeline import decompose
from .plan import eligible_convs
from .record import apply_converted_structure, apply_decoupled_structure
from .report import DecoupleReport, LayerReport

__all__ = [
    "METHODS",
    "ORDERS",
    "DecoupleReport",
    "DecoupledConv",
    "LayerReport",
    "apply_converted_structure",
    "apply_decoupled_structure",
    "cp_conv",
    "decompose",
    "decouple",
    "decoupled_mult_adds",
    "eligible_convs",
    "max_rank",
    "singular_values",
    "spatial_conv",
    "tucker_conv",
]


class _CallableModule(types.ModuleType):
    """``mobilenets.decouple`` is both this package and the function: importing the
    package binds the name to the module, so the module forwards calls to the function."""

    def __call__(self, *args: Any, **kwargs: Any):
        return decouple(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
