"""Training and evaluation on real data with the papers' recipes.

The loop (and torch) is imported on first use, so that the command line can list
the recipes in its ``--help`` without loading torch.
"""

from __future__ import annotations

from ..lazy import lazy_attributes
from .config import TrainConfig
from .recipes import RECIPES, Recipe, get_recipe

_LAZY = {name: "loop" for name in ("Trainer", "TrainingDiverged", "finetune", "lr_factor", "train")}

__all__ = [
    "RECIPES",
    "Recipe",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "finetune",
    "get_recipe",
    "lr_factor",
    "train",
]


__getattr__ = lazy_attributes(__name__, _LAZY)
