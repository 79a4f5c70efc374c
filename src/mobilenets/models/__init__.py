"""The model zoo.  Importing this package registers every published variant."""

from . import mobilenet_v1, mobilenet_v2, mobilenet_v3, regular  # noqa: F401  (registration)

# Detectors (models.ssd) register on first use: see registry._TASK_MODULES.
from .base import ImageClassifier
from .registry import (
    ModelEntry,
    create_model,
    get_model_entry,
    list_models,
    load_model,
    load_model_with_info,
    register_model,
)

__all__ = [
    "ImageClassifier",
    "ModelEntry",
    "create_model",
    "get_model_entry",
    "list_models",
    "load_model",
    "load_model_with_info",
    "register_model",
]
