"""Tasks as registered objects: what a model does (classification, detection, segmentation)
and where each part of the library that depends on it lives.

A :class:`Task` is data plus the dotted names of its hooks - its trainer, the command line's
evaluation and prediction, the graph an export holds, the classes its weights imply - loaded
only when asked for, so this module imports nothing heavy and no layer above it.  Every
command asks the task (``get_task(entry.task)``, ``task_of(info)``) instead of comparing task
names; adding a task (keypoints, instance masks) is one :class:`Task` here or, from another
package, an entry point of the group ``mobilenets.tasks`` naming one.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = ["TASKS_GROUP", "Task", "get_task", "list_tasks", "register_task", "task_for_recipe", "task_of"]

TASKS_GROUP = "mobilenets.tasks"


def _load(target: str) -> Any:
    """``"package.module:attribute"`` -> the attribute (imported now)."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class Task:
    name: str
    title: str  # how `mobilenets models` heads the task's models
    noun: str  # "a detector": what messages call one of its models
    recipe_styles: tuple[str, ...]  # the recipes' data pipelines (Recipe.transforms) that train it
    # the preprocessing its data info records; None: the recipe's own (cifar, imagenet)
    data_style: str | None
    # int8 export and its --calibration images are the classifier's (an int8 file is scored by top-1)
    quantizable: bool
    trainer_hook: str  # "module:Class", a mobilenets.train.loop.Trainer subclass
    # "module:object" with evaluate(args, model, info), predict(args, model, info) and
    # scoring(data_dir, info, subset=, source=) -> cli.task_commands.Scoring (export --eval-data)
    commands_hook: str
    # "module:function" (model, info) -> (graph module, metadata, output names) for an export
    deployable_hook: str
    # "module:function" (num_classes) -> (class names, where they come from) or None: names its
    # published weights imply (ImageNet's 1000, COCO's 91, Pascal VOC's 21)
    default_classes_hook: str | None = None
    # "module:Class" wrapping an exported file's network (any runtime) with the task's
    # post-processing; None: the network is called on batches as it is
    exported_hook: str | None = None
    # "module:function" (resolution) -> the preprocessing an exported file records; None: the
    # data style's (mobilenets.data.STYLES), as a classifier's
    exported_preprocessing_hook: str | None = None
    # its models are classifiers, whose body a backbone (features_only=True) is cut from
    has_classifier_body: bool = False

    def trainer(self) -> type:
        return _load(self.trainer_hook)

    def commands(self) -> Any:
        return _load(self.commands_hook)

    def deployable(self, model: Any, info: Mapping[str, Any]) -> tuple[Any, dict[str, Any], list[str]]:
        return _load(self.deployable_hook)(model, info)

    def exported_runner(self, network: Any) -> Any:
        """``network`` (an exported file loaded by a runtime) as the task's commands call a model."""
        return network if self.exported_hook is None else _load(self.exported_hook)(network)

    def exported_preprocessing(self, resolution: int) -> dict[str, Any] | None:
        hook = self.exported_preprocessing_hook
        return None if hook is None else _load(hook)(resolution)

    def default_classes(self, num_classes: int | None) -> tuple[list[str], str] | None:
        if self.default_classes_hook is None or not num_classes:
            return None
        return _load(self.default_classes_hook)(num_classes)


_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    _TASKS[task.name] = task
    return task


register_task(
    Task(
        "classification",
        "image classification",
        "a classifier",
        recipe_styles=("cifar", "imagenet"),
        data_style=None,
        quantizable=True,
        trainer_hook="mobilenets.classification.train:ClassificationTrainer",
        commands_hook="mobilenets.cli.task_commands:CLASSIFICATION",
        deployable_hook="mobilenets.export.onnx:classifier_graph",
        default_classes_hook="mobilenets.predict:imagenet_classes",
        has_classifier_body=True,
    )
)
register_task(
    Task(
        "detection",
        "object detection (COCO: 91 classes)",
        "a detector",
        recipe_styles=("ssd", "ssdlite"),
        data_style="detection",  # the detector resizes and normalises its own input
        quantizable=False,
        trainer_hook="mobilenets.detection.train:DetectionTrainer",
        commands_hook="mobilenets.cli.task_commands:DETECTION",
        deployable_hook="mobilenets.export.detection:detector_graph",
        default_classes_hook="mobilenets.detection.data:coco_classes",
        exported_hook="mobilenets.export.detection:ExportedDetector",
        exported_preprocessing_hook="mobilenets.export.detection:detector_preprocessing",
    )
)
register_task(
    Task(
        "segmentation",
        "semantic segmentation (Pascal VOC: 21 classes)",
        "a segmenter",
        recipe_styles=("segmentation",),
        data_style="segmentation",  # ImageNet statistics, a square input, scores resized back
        quantizable=False,
        trainer_hook="mobilenets.segmentation.train:SegmentationTrainer",
        commands_hook="mobilenets.cli.task_commands:SEGMENTATION",
        deployable_hook="mobilenets.export.onnx:segmenter_graph",
        default_classes_hook="mobilenets.segmentation.data:voc_classes",
        exported_preprocessing_hook="mobilenets.export.onnx:segmenter_preprocessing",
    )
)


def _entry_point_tasks() -> None:
    from importlib.metadata import entry_points

    for point in entry_points(group=TASKS_GROUP):
        if point.name not in _TASKS:
            register_task(point.load())


def get_task(name: str) -> Task:
    """The task registered as ``name`` (the built-in three, then the ``mobilenets.tasks`` entry points)."""
    if name not in _TASKS:
        _entry_point_tasks()
    if name not in _TASKS:
        raise ConfigError(f"no task {name!r} is installed (tasks: {', '.join(_TASKS)})")
    return _TASKS[name]


def list_tasks() -> list[Task]:
    _entry_point_tasks()
    return list(_TASKS.values())


def task_of(info: Mapping[str, Any] | None) -> Task:
    """The task a data info records (a checkpoint's, an exported file's); classification if none."""
    return get_task((info or {}).get("task") or "classification")


def task_for_recipe(style: str) -> Task:
    """The task whose data pipeline a recipe's ``transforms`` is."""
    return next((task for task in list_tasks() if style in task.recipe_styles), get_task("classification"))
