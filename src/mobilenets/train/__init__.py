"""Training and evaluation on real data with the papers' recipes.

The loop (and torch) is imported on first use, so that the command line can list
the recipes in its ``--help`` without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import TrainConfig
from .recipes import RECIPES, Recipe, get_recipe

_LAZY = {name: "loop" for name in ("TrainingDiverged", "evaluate", "finetune", "lr_factor", "train")}

__all__ = [
    "RECIPES",
    "Recipe",
    "TrainConfig",
    "TrainingDiverged",
    "evaluate",
    "finetune",
    "get_recipe",
    "lr_factor",
    "train",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value
