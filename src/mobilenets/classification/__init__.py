"""Image classification as a task: what it adds around the classifiers of the model zoo.

* :class:`ClassificationTrainer` - what ``mobilenets train`` runs for a classifier (class
  folders or CIFAR-10; distillation, unlabelled images, quantization-aware training);
* :func:`evaluate` - top-1, top-5, loss and per-class top-1 of a model or an exported file's
  runner (its own module: scoring a model does not load the training loop).

Detection and segmentation sit beside it (:mod:`mobilenets.detection`,
:mod:`mobilenets.segmentation`); the task registry (:mod:`mobilenets.tasks`) names each one's hooks.
"""

from __future__ import annotations

from ..lazy import lazy_attributes

_LAZY = {"ClassificationTrainer": "train", "evaluate": "evaluate"}
__all__ = sorted(_LAZY)


__getattr__ = lazy_attributes(__name__, _LAZY)
