"""Training and evaluation on real data with the papers' recipes."""

from .loop import TrainConfig, TrainingDiverged, evaluate, lr_factor, train
from .recipes import RECIPES, Recipe, get_recipe

__all__ = ["RECIPES", "Recipe", "TrainConfig", "TrainingDiverged", "evaluate", "get_recipe", "lr_factor", "train"]
