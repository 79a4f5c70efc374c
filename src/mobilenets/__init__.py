"""mobilenets: efficient convolutional networks (MobileNet V1/V2/V3) for PyTorch.

Build a model at the size your latency budget allows, measure what it costs, and
load torchvision's published weights::

    import mobilenets
    model = mobilenets.create_model("mobilenet_v2", width_mult=0.5)
    print(mobilenets.profile(model, (3, 160, 160)))   # mult-adds, params, memory

The names below are imported on first use (PEP 562), so that ``import mobilenets``
and the command line's ``--help`` answer before torch is loaded.
"""

from __future__ import annotations

from .errors import ConfigError, InputShapeError, MobileNetsError, UnknownModelError, WeightsError
from .lazy import lazy_attributes

__version__ = "0.1.0"

# public name -> the submodule that defines it
_LAZY = {
    "Profile": "cost",
    "profile": "cost",
    "decompose": "decouple.pipeline",
    "decouple": "decouple.convert",
    "create_model": "models",
    "list_models": "models",
    "load_model": "models",
    "load_weights": "weights",
    "save_weights": "weights",
}

__all__ = [
    "ConfigError",
    "InputShapeError",
    "MobileNetsError",
    "Profile",
    "UnknownModelError",
    "WeightsError",
    "__version__",
    "create_model",
    "decompose",
    "decouple",
    "list_models",
    "load_model",
    "load_weights",
    "profile",
    "save_weights",
]


_SUBMODULES = {"cli", "cost", "data", "decouple", "export", "layers", "models", "plots", "predict", "train", "weights"}


__getattr__ = lazy_attributes(__name__, _LAZY, submodules=_SUBMODULES)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
