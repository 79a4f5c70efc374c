"""Cost accounting: mult-adds, parameters and activation memory."""

from .formulas import conv_cost, depthwise_separable_cost, depthwise_separable_reduction
from .memory import LiveActivations, trace_live_activations
from .profile import LayerCost, Profile, layer_kind, profile

__all__ = [
    "LayerCost",
    "LiveActivations",
    "Profile",
    "conv_cost",
    "depthwise_separable_cost",
    "depthwise_separable_reduction",
    "layer_kind",
    "profile",
    "trace_live_activations",
]
