"""The command line's evaluation and prediction, one object per task (``Task.commands_hook``):
``eval`` and ``predict`` load the model, then ask its task what to score it on and how to show
what it finds."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import ConfigError
from .common import model_source

__all__ = ["CLASSIFICATION", "DETECTION", "SEGMENTATION"]


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


def _scored_split(data, args: argparse.Namespace):
    """The split --split names, its first --val-subset images (as training's --val-subset takes them)."""
    split = data.train if args.split == "train" else data.val
    if args.val_subset:
        from torch.utils.data import Subset

        split = Subset(split, range(min(args.val_subset, len(split))))
    return split


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


class DetectorCommands:
    def evaluate(self, args: argparse.Namespace, model, info: dict[str, Any]) -> int:
        from ..data import make_loader
        from ..detection.data import collate, detection_transforms, find_detection_data
        from ..detection.evaluate import evaluate_detector
        from ..predict import check_classes

        if args.dataset:
            raise ConfigError("--dataset is for classifiers; a detector is scored on a split of --data-dir")
        val = detection_transforms("ssdlite", info["resolution"], train=False, fill=(0.5, 0.5, 0.5))
        # only the split scored is read, so warnings about the other split's files do not appear
        data = find_detection_data(args.data_dir, train_transforms=val, val_transforms=val, splits=(args.split,),
                               classes=info.get("selected_classes"))  # fmt: skip
        check_classes(info, data.classes, model=model_source(args), data=args.data_dir,
                      background=True)  # fmt: skip
        loader = make_loader(_scored_split(data, args), args.batch_size or 16, workers=args.workers, collate_fn=collate)
        metrics = evaluate_detector(model, loader, progress=sys.stderr.isatty(), flip=args.test_flip,
                                    tiles=_test_tiles(args), vote=_box_voting(args))  # fmt: skip
        if args.json:
            print(json.dumps(metrics, indent=2))
            return 0
        print(
            f"mAP {100 * metrics['map']:.2f}%  mAP50 {100 * metrics['map50']:.2f}%  mAP75 {100 * metrics['map75']:.2f}%  "
            f"({metrics['images']} images, {metrics['boxes']} boxes, {metrics['images_per_s']:.1f} images/s)"
        )
        return 0

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


class SegmenterCommands:
    def evaluate(self, args: argparse.Namespace, model, info: dict[str, Any]) -> int:
        from ..data import make_loader
        from ..predict import check_classes
        from ..segmentation.data import collate, find_segmentation_data, segmentation_transforms
        from ..segmentation.evaluate import evaluate_segmenter

        _refuse_detector_views(args, "segmenter")
        if args.dataset:
            raise ConfigError("--dataset is for classifiers; a segmenter is scored on --data-dir's masks")
        val = segmentation_transforms(info["resolution"], train=False)
        data = find_segmentation_data(
            args.data_dir, train_transforms=val, val_transforms=val, classes=info.get("selected_classes")
        )
        check_classes(info, data.classes, model=model_source(args), data=args.data_dir)
        loader = make_loader(_scored_split(data, args), args.batch_size or 8, workers=args.workers, collate_fn=collate)
        metrics = evaluate_segmenter(model, loader, len(data.classes), info["resolution"], classes=data.classes,
                                     progress=sys.stderr.isatty(), flip=args.test_flip)  # fmt: skip
        if args.json:
            print(json.dumps(metrics, indent=2))
            return 0
        print(
            f"mIoU {100 * metrics['miou']:.2f}%  pixel acc {100 * metrics['pixel_acc']:.2f}%  "
            f"({metrics['images']} images, {metrics['classes_scored']} of {len(data.classes)} classes present, "
            f"{metrics['images_per_s']:.1f} images/s)"
        )
        scored = [(name, iou) for name, iou in zip(data.classes, metrics["per_class_iou"]) if iou is not None]
        for name, iou in sorted(scored, key=lambda pair: -pair[1]):
            print(f"  {name:24s} IoU {100 * iou:6.2f}")
        return 0

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
