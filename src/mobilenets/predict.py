"""Classify image files with a trained model, preprocessing them as training did."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import load_rgb, transforms_for
from .datainfo import DataInfo
from .tasks import task_of
from .validate import POSITIVE_INT

__all__ = [
    "check_classes",
    "classifier_logits",
    "default_data_info",
    "predict_images",
    "recorded_class_names",
    "renamed_classes",
]


def default_data_info(
    model: nn.Module, info: Mapping[str, Any] | None = None, *, num_classes: int | None = None
) -> DataInfo:
    """``info`` (what a file recorded) with its gaps filled from ``model``: its task, channels,
    resolution and preprocessing (ImageNet-style; CIFAR-style for ``cifar`` models; the task's
    own for detectors and segmenters), and the class names its published weights imply (ImageNet's
    for 1000-way classifiers - torchvision ships them, no download) or numbered placeholders.
    ``num_classes`` is for models that record no architecture (torchvision's)."""
    info = DataInfo.from_record(info)
    arch = getattr(model, "arch", {}) or {}
    num_classes = arch.get("num_classes", num_classes)
    if "name" in arch:
        from .models import get_model_entry

        info = info.replace(task=get_model_entry(arch["name"]).task)
    task = task_of(info)
    info = info.replace(
        in_channels=info.in_channels or getattr(model, "in_channels", 3),
        transforms=task.data_style or info.transforms or ("cifar" if arch.get("cifar") else "imagenet"),
        resolution=info.resolution or arch.get("resolution") or getattr(model, "default_resolution", 224),
    )
    if info.classes is None:
        # Names to print, not the dataset's folder names: evaluation maps a dataset's
        # sorted folders onto such a model by position (see ``classes_source``).
        published = task.default_classes(num_classes)
        if published is not None:
            info = info.replace(classes=published[0], classes_source=published[1])
        elif num_classes:
            info = info.replace(classes=[f"class {i}" for i in range(num_classes)], classes_source="placeholder")
    return info


def imagenet_classes(num_classes: int) -> tuple[list[str], str] | None:
    """ImageNet's class names for a 1000-way classifier (torchvision ships them: no download)."""
    if num_classes != 1000:
        return None
    from torchvision.models import MobileNet_V2_Weights

    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]), "imagenet"


def recorded_class_names(info: Mapping[str, Any]) -> list[str] | None:
    """The class names a model was trained with (its dataset's folder names), or None
    where the file recorded none and ``info`` holds display names or placeholders."""
    classes = info.get("classes")
    if not classes or info.get("classes_source", "recorded") != "recorded":
        return None
    if "classes_source" not in info:  # files written before classes_source was recorded
        published = task_of(info).default_classes(len(classes))
        if classes == [f"class {i}" for i in range(len(classes))] or (published and published[0] == list(classes)):
            return None
    return list(classes)


def check_classes(
    info: Mapping[str, Any], classes: Sequence[str], *, model: str, data: str, background: bool = False
) -> None:
    """The one check made wherever a model meets labelled data (eval, export and decouple
    ``--eval-data``, bench, a teacher, ``--init-from``): as many classes, and where the model
    records the names it was trained on, the same names in the same order.  ``background``:
    both lists start with the background (detectors), which is not counted in the message.
    Raises :class:`DataError` naming both sides."""
    from .errors import DataError

    expected = list(info.get("classes") or [])
    if len(classes) != len(expected):
        raise DataError(f"{data} has {_count(classes, background)} but {model} has {_count(expected, background)}")
    names = recorded_class_names(info)
    if names is not None and names != list(classes):
        first = _first_difference(names, classes)
        raise DataError(
            f"the classes of {data} are not the classes {model} was trained on "
            f"(class {first}: {classes[first]!r} in the data, {names[first]!r} in the model)"
        )


def renamed_classes(info: Mapping[str, Any], classes: Sequence[str], source: str) -> str:
    """Why weights whose data info is ``info`` cannot keep their classifier for ``classes``
    although it has as many rows: they record other class names ("" where they record none
    or the same); the trainers then start the classifier afresh (``--init-from``)."""
    names = recorded_class_names(info)
    if names is None or len(names) != len(classes) or names == list(classes):
        return ""
    first = _first_difference(names, classes)
    return f"{source} was trained on other classes: class {first} is {names[first]!r} there, {classes[first]!r} here"


def _first_difference(names: Sequence[str], classes: Sequence[str]) -> int:
    """The first position where two class lists of the same length name different classes."""
    return next(i for i, (a, b) in enumerate(zip(names, classes)) if a != b)


def _count(classes: Sequence[str], background: bool) -> str:
    """``"10 classes"``; a detector's list counts its named classes and says how many outputs
    COCO-style category ids (with gaps, ``"N/A"``) make: ``"3 classes (ids up to 18: 19 outputs)"``."""
    if not background:
        return f"{len(classes)} classes"
    named = sum(1 for name in classes[1:] if name != "N/A")
    if named == len(classes) - 1:
        return f"{named} classes"
    return f"{named} classes (category ids up to {len(classes) - 1}: {len(classes)} outputs with the background)"


def classifier_logits(model, batch: torch.Tensor, *, flip: bool = False) -> torch.Tensor:
    """A classifier's logits for ``batch``; ``flip``: averaged with its mirror images' (test-time flip,
    twice the cost) - what ``mobilenets eval --test-flip`` scores and ``predict --test-flip`` shows."""
    logits = model(batch)
    if flip:
        logits = (logits.float() + model(batch.flip(-1)).float()) / 2
    return logits


@torch.no_grad()
def predict_images(
    model: nn.Module,
    paths: Sequence[str | Path],
    info: dict[str, Any],
    *,
    top: int = 5,
    batch_size: int = 32,
    flip: bool = False,
) -> list[list[tuple[str, float]]]:
    """Top-``top`` (class name, probability) for each image file; ``flip``: from the logits averaged with
    the mirror image's (:func:`classifier_logits`).

    ``model`` is a PyTorch module or any callable from a batch to logits (e.g. an
    :class:`~mobilenets.export.OnnxClassifier`).

    Files that are not images raise :class:`~mobilenets.data.DataError` naming them.
    """
    POSITIVE_INT.check(top, "top")
    transform = transforms_for(info["transforms"], info["resolution"], train=False, channels=info.get("in_channels", 3))
    classes = info["classes"]
    if isinstance(model, nn.Module):
        model.eval()
    results: list[list[tuple[str, float]]] = []
    for start in range(0, len(paths), batch_size):
        batch = torch.stack([transform(load_rgb(str(p))) for p in paths[start : start + batch_size]])
        probs = classifier_logits(model, batch, flip=flip).softmax(dim=1)
        values, indices = probs.topk(min(top, probs.shape[1]), dim=1)
        results += [
            [(classes[i], v) for i, v in zip(row_i.tolist(), row_v.tolist())] for row_i, row_v in zip(indices, values)
        ]
    return results
