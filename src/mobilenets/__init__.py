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

import importlib
from typing import Any

from .errors import ConfigError, InputShapeError, MobileNetsError, UnknownModelError, WeightsError

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


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:  # ``import mobilenets`` then ``mobilenets.models.X``, as before
        return importlib.import_module(f".{name}", __name__)
    if name not in _LAZY:
        raise AttributeError(f"module 'mobilenets' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # the function, also where a subpackage of the same name was bound
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
