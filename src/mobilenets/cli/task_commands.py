"""The command line's evaluation and prediction, one object per task (``Task.commands_hook``):
``eval`` and ``predict`` load the model, then ask its task what to score it on and how to show
what it finds."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .common import model_source

__all__ = ["CLASSIFICATION", "DETECTION", "SEGMENTATION", "Scoring"]


@dataclass(frozen=True)
class Scoring:
    """Labelled images, decoded once, and a task's measure of a model on them: what ``export
    --eval-data`` reports for each form of the model and what ``--format auto`` keeps within
    ``--tolerance``.  ``measure`` takes the PyTorch model or an exported file's runner."""

    metric: str  # the headline score as a table heads it: "top-1 %", "mAP %", "mIoU %"
    key: str  # the headline's key among the metrics
    recorded: tuple[str, ...]  # the metrics an export summary keeps for each form
    measure: Callable[[Any], dict[str, Any]]  # model -> metrics (fractions)
    describe: Callable[[dict[str, Any]], str]  # metrics -> the line printed for one form

    def headline(self, model: Any) -> float:
        """The model's headline score in % (what --tolerance is measured in)."""
        return 100 * self.measure(model)[self.key]


def _refuse_detector_views(args: argparse.Namespace, task: str) -> None:
    if args.test_tiles:
        raise ConfigError(f"--test-tiles is for detectors (small objects found in the image's corners); "
                          f"this is a {task}")  # fmt: skip
    if args.test_merge:
        raise ConfigError(f"--test-merge is for detectors (how the boxes of several views become one); "
                          f"this is a {task}")  # fmt: skip


def _box_voting(args: argparse.Namespace) -> bool:
    """--test-merge for a detector: vote (the default) or nms; given, it needs views to merge."""
    if args.test_merge and not (args.test_flip or args.test_tiles):
        raise ConfigError(f"--test-merge {args.test_merge} merges the boxes of several views of an image; "
                          "add --test-tiles or --test-flip")  # fmt: skip
    return args.test_merge != "nms"


def _test_tiles(args: argparse.Namespace) -> tuple:
    """--test-tiles: the levels of tiles a detector is also run on (the four corner tiles), or none."""
    from ..detection.evaluate import CORNER_TILES

    return CORNER_TILES if args.test_tiles else ()


def _first(split, count: int | None):
    """The first ``count`` images of a split (as training's --val-subset takes them); all without a count."""
    if not count:
        return split
    from torch.utils.data import Subset

    return Subset(split, range(min(count, len(split))))


def _scored_split(data, args: argparse.Namespace):
    """The split --split names, its first --val-subset images."""
    return _first(data.train if args.split == "train" else data.val, args.val_subset)


class ClassifierCommands:
    def evaluate(self, args: argparse.Namespace, model, info: dict[str, Any]) -> int:
        from ..classification.evaluate import evaluate
        from ..data import build_datasets, eval_dataset, make_loader
        from ..predict import check_classes, recorded_class_names

        _refuse_detector_views(args, "classifier")
        if args.split != "val":
            raise ConfigError("--split is for detectors and segmenters; a classifier is scored on --data-dir's val "
                              "(or test) split")  # fmt: skip
        args.batch_size = args.batch_size or 256
        style, resolution = info["transforms"], info["resolution"]
        if args.dataset:
            _, val_set, classes = build_datasets(
                args.data_dir, style=style, resolution=resolution, dataset=args.dataset, download=args.download,
                val_subset=args.val_subset,
            )  # fmt: skip
        else:
            val_set, classes = eval_dataset(args.data_dir, style=style, resolution=resolution, subset=args.val_subset)
        source = model_source(args)
        check_classes(info, classes, model=source, data=args.data_dir)
        if recorded_class_names(info) is None:
            print(
                f"note: {source} records no class names; the {len(classes)} sorted class folders of {args.data_dir} "
                f"are taken as classes 0-{len(classes) - 1}",
                file=sys.stderr,
            )
        loader = make_loader(val_set, args.batch_size, workers=args.workers)
        # NHWC batches for a PyTorch model; an exported file's runtime takes plain NCHW arrays
        metrics = evaluate(model, loader, len(classes), flip=args.test_flip, channels_last=hasattr(model, "to"))
        metrics["images"] = metrics["samples"]
        if args.json:
            print(json.dumps(metrics, indent=2))
            return 0
        print(
            f"top-1 {100 * metrics['top1']:.2f}%  top-5 {100 * metrics['top5']:.2f}%  loss {metrics['loss']:.4f}  "
            f"{metrics['images_per_s']:.0f} images/s  ({metrics['samples']} images)"
        )
        if len(classes) <= 100:
            for name, acc, count in zip(classes, metrics["per_class_top1"], metrics["per_class_images"]):
                shown = (
                    "     -  (no images)" if acc is None else f"{100 * acc:6.2f}%  ({count} image{'s' * (count != 1)})"
                )
                print(f"  {name:20s} {shown}")
        return 0

    def scoring(self, data_dir: str, info: dict[str, Any], *, subset: int | None, source: str) -> Scoring:
        """Top-1 and top-5 on ``data_dir``'s labelled images (a class-balanced ``subset`` of them)."""
        from ..classification.evaluate import evaluate
        from ..data import eval_dataset, make_loader
        from ..predict import check_classes

        dataset, classes = eval_dataset(
            data_dir, style=info["transforms"], resolution=info["resolution"], subset=subset
        )
        check_classes(info, classes, model=source, data=data_dir)
        batches = list(make_loader(dataset, 50, workers=2))  # decoded once, for every form

        def describe(metrics: dict[str, Any]) -> str:
            return f"top-1 {100 * metrics['top1']:.2f}%  top-5 {100 * metrics['top5']:.2f}%  ({len(dataset)} images)"

        return Scoring(
            "top-1 %", "top1", ("top1", "top5"), lambda model: evaluate(model, batches, len(classes)), describe
        )

    def agreement(self, model, images) -> Scoring:
        """Without labels: how often a form's top-1 on ``images`` is the PyTorch ``model``'s (which scores 100 %)."""
        import torch

        from ..classification.evaluate import evaluate

        with torch.no_grad():
            logits = model(images)
        batches, classes = [(images, logits.argmax(1))], int(logits.shape[1])

        def describe(metrics: dict[str, Any]) -> str:
            return f"the same top-1 as fp32 on {100 * metrics['top1']:.2f}% of {len(images)} images"

        return Scoring("agrees with fp32 %", "top1", ("top1",), lambda form: evaluate(form, batches, classes), describe)

    def predict(self, args: argparse.Namespace, model, info: dict[str, Any]) -> int:
        from ..predict import predict_images

        _refuse_detector_views(args, "classifier")
        if args.out:
            raise ConfigError("--out draws boxes or masks: it is for detectors and segmenters")
        results = predict_images(model, args.images, info, top=args.top, flip=args.test_flip)
        if args.json:
            print(json.dumps([{"image": p, "top": r} for p, r in zip(args.images, results)], indent=2))
            return 0
        for path, top in zip(args.images, results):
            print(path)
            for name, probability in top:
                print(f"  {100 * probability:6.2f}%  {name}")
        return 0


def _detection_data(data_dir: str, info: dict[str, Any], split: str, source: str):
    """``data_dir``'s ``split`` as the detector's evaluation reads it, its classes checked against the model's."""
    from ..detection.data import detection_transforms, find_detection_data
    from ..predict import check_classes

    val = detection_transforms("ssdlite", info["resolution"], train=False, fill=(0.5, 0.5, 0.5))
    # only the split scored is read, so warnings about the other split's files do not appear
    data = find_detection_data(data_dir, train_transforms=val, val_transforms=val, splits=(split,),
                               classes=info.get("selected_classes"))  # fmt: skip
    check_classes(info, data.classes, model=source, data=data_dir, background=True)
    return data


def _detection_line(metrics: dict[str, Any], *, speed: bool = False) -> str:
    rate = f", {metrics['images_per_s']:.1f} images/s" if speed else ""
    return (
        f"mAP {100 * metrics['map']:.2f}%  mAP50 {100 * metrics['map50']:.2f}%  mAP75 {100 * metrics['map75']:.2f}%  "
        f"({metrics['images']} images, {metrics['boxes']} boxes{rate})"
    )


class DetectorCommands:
    def evaluate(self, args: argparse.Namespace, model, info: dict[str, Any]) -> int:
        from ..data import make_loader
        from ..detection.data import collate
        from ..detection.evaluate import evaluate_detector

        if args.dataset:
            raise ConfigError("--dataset is for classifiers; a detector is scored on a split of --data-dir")
        data = _detection_data(args.data_dir, info, args.split, model_source(args))
        loader = make_loader(_scored_split(data, args), args.batch_size or 16, workers=args.workers, collate_fn=collate)
        metrics = evaluate_detector(model, loader, progress=sys.stderr.isatty(), flip=args.test_flip,
                                    tiles=_test_tiles(args), vote=_box_voting(args))  # fmt: skip
        if args.json:
            print(json.dumps(metrics, indent=2))
            return 0
        print(_detection_line(metrics, speed=True))
        return 0

    def scoring(self, data_dir: str, info: dict[str, Any], *, subset: int | None, source: str) -> Scoring:
        """COCO mAP (best.pt's measure) on ``data_dir``'s validation split, its first ``subset`` images."""
        from ..data import make_loader
        from ..detection.data import collate
        from ..detection.evaluate import evaluate_detector

        data = _detection_data(data_dir, info, "val", source)
        batches = list(make_loader(_first(data.val, subset), 16, workers=2, collate_fn=collate))  # decoded once
        return Scoring("mAP %", "map", ("map", "map50"), lambda model: evaluate_detector(model, batches),
                       _detection_line)  # fmt: skip

    def predict(self, args: argparse.Namespace, model, info: dict[str, Any]) -> int:
        from ..detection.predict import detect_images

        found = detect_images(model, args.images, info["classes"], threshold=args.threshold, out=args.out,
                              flip=args.test_flip, tiles=_test_tiles(args), vote=_box_voting(args))  # fmt: skip
        if args.json:
            print(json.dumps([{"image": p, "boxes": b} for p, b in zip(args.images, found)], indent=2))
            return 0
        for path, boxes in zip(args.images, found):
            print(f"{path}: {len(boxes)} object{'s' * (len(boxes) != 1)}")
            for box in boxes:
                print(f"  {100 * box['score']:6.2f}%  {box['label']:16s} {' '.join(f'{v:.0f}' for v in box['box'])}")
        if args.out:
            print(f"drawn in {args.out}/")
        return 0


def _segmentation_data(data_dir: str, info: dict[str, Any], split: str, source: str):
    """``data_dir``'s ``split`` as the segmenter's evaluation reads it, its classes checked against the model's."""
    from ..predict import check_classes
    from ..segmentation.data import find_segmentation_data, segmentation_transforms

    val = segmentation_transforms(info["resolution"], train=False)
    # only the split scored is read: its masks checked, the other's warnings not raised
    data = find_segmentation_data(data_dir, train_transforms=val, val_transforms=val,
                                  classes=info.get("selected_classes"), splits=(split,))  # fmt: skip
    check_classes(info, data.classes, model=source, data=data_dir)
    return data


def _segmentation_line(metrics: dict[str, Any], classes: int, *, speed: bool = False) -> str:
    rate = f", {metrics['images_per_s']:.1f} images/s" if speed else ""
    return (
        f"mIoU {100 * metrics['miou']:.2f}%  pixel acc {100 * metrics['pixel_acc']:.2f}%  "
        f"({metrics['images']} images, {metrics['classes_scored']} of {classes} classes present{rate})"
    )


class SegmenterCommands:
    def evaluate(self, args: argparse.Namespace, model, info: dict[str, Any]) -> int:
        from ..data import make_loader
        from ..segmentation.data import collate
        from ..segmentation.evaluate import evaluate_segmenter

        _refuse_detector_views(args, "segmenter")
        if args.dataset:
            raise ConfigError("--dataset is for classifiers; a segmenter is scored on --data-dir's masks")
        data = _segmentation_data(args.data_dir, info, args.split, model_source(args))
        loader = make_loader(_scored_split(data, args), args.batch_size or 8, workers=args.workers, collate_fn=collate)
        metrics = evaluate_segmenter(model, loader, len(data.classes), info["resolution"], classes=data.classes,
                                     progress=sys.stderr.isatty(), flip=args.test_flip)  # fmt: skip
        if args.json:
            print(json.dumps(metrics, indent=2))
            return 0
        print(_segmentation_line(metrics, len(data.classes), speed=True))
        scored = [(name, iou) for name, iou in zip(data.classes, metrics["per_class_iou"]) if iou is not None]
        for name, iou in sorted(scored, key=lambda pair: -pair[1]):
            print(f"  {name:24s} IoU {100 * iou:6.2f}")
        return 0

    def scoring(self, data_dir: str, info: dict[str, Any], *, subset: int | None, source: str) -> Scoring:
        """Mean IoU (best.pt's measure) on ``data_dir``'s validation masks, its first ``subset`` images."""
        from ..data import make_loader
        from ..segmentation.data import collate
        from ..segmentation.evaluate import evaluate_segmenter

        data = _segmentation_data(data_dir, info, "val", source)
        batches = list(make_loader(_first(data.val, subset), 8, workers=2, collate_fn=collate))  # decoded once
        classes, resolution = len(data.classes), info["resolution"]
        return Scoring("mIoU %", "miou", ("miou", "pixel_acc"),
                       lambda model: evaluate_segmenter(model, batches, classes, resolution),
                       lambda metrics: _segmentation_line(metrics, classes))  # fmt: skip

    def predict(self, args: argparse.Namespace, model, info: dict[str, Any]) -> int:
        from ..segmentation.predict import segment_images

        _refuse_detector_views(args, "segmenter")
        found = segment_images(model, args.images, info, out=args.out, top=args.top, flip=args.test_flip)
        if args.json:
            print(json.dumps([{"image": p, "classes": c} for p, c in zip(args.images, found)], indent=2))
            return 0
        for path, shares in zip(args.images, found):
            print(path)
            for share in shares:
                print(f"  {100 * share['fraction']:6.2f}% of pixels  {share['label']}")
        if args.out:
            print(f"drawn in {args.out}/ (<name>.png: the mask over the image; <name>_mask.png: class ids)")
        return 0


CLASSIFICATION, DETECTION, SEGMENTATION = ClassifierCommands(), DetectorCommands(), SegmenterCommands()
