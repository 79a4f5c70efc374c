"""``mobilenets train``, ``mobilenets eval`` and ``mobilenets predict``."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from typing import Any

from ..errors import ConfigError
from ..train.config import FIELD_RULES, GROUPS, TrainConfig, option_flag
from ..train.recipes import RECIPES, get_recipe
from ..validate import NON_NEGATIVE_INT, POSITIVE_INT, PROBABILITY
from .common import (
    add_exported_options,
    add_model_options,
    add_random_weights_option,
    add_source_options,
    load_exported_for_cli,
    load_for_cli,
    require_weights,
)

TRAIN_EXAMPLES = """\
Examples:
  # fine-tune torchvision's ImageNet MobileNetV2 on your images (here a CIFAR-10 slice, upscaled to 96x96)
  mobilenets train --model mobilenet_v2 --recipe finetune --init-from ../shared/data/weights/mobilenet_v2-b0353104.pth \\
      --data-dir ../shared/data/cifar10 --train-subset 30000 --val-subset 1000 --epochs 1 --freeze-bn \\
      --freeze-layers 2 --out runs/finetune
  # distil that model into MobileNetV2 x0.35 trained from scratch on the same images
  mobilenets train --model mobilenet_v2 --width-mult 0.35 --recipe cifar10-quick --teacher runs/finetune/best.pt \\
      --data-dir ../shared/data/cifar10 --train-subset 10000 --val-subset 1000 --out runs/student
  # a few CPU minutes on a slice of the shared CIFAR-10 copy
  mobilenets train --model mobilenet_v2 --width-mult 0.5 --recipe cifar10-quick \\
      --data-dir ../shared/data/cifar10 --train-subset 10000 --val-subset 2000 --out runs/quick
  # the full CIFAR-10 recipe on one GPU, data kept on the GPU
  mobilenets train --model mobilenet_v2 --data-dir DIR --out runs/v2 --device cuda \\
      --precision bf16 --channels-last --compile --data-on-device
  # 4 GPUs (or CPU processes with --device cpu) through torchrun; the recipe's batch is the global batch
  torchrun --nproc_per_node=4 -m mobilenets train --model mobilenet_v2 --data-dir DIR --out runs/ddp
  # quantization-aware fine-tuning of a trained run, then an int8 export with the learned ranges
  mobilenets train --model mobilenet_v2 --width-mult 0.5 --recipe cifar10-qat --init-from runs/quick/best.pt \\
      --data-dir ../shared/data/cifar10 --train-subset 10000 --val-subset 2000 --qat --out runs/qat
  mobilenets export --checkpoint runs/qat/best.pt --int8 --out cifar-int8.onnx
  # Mobile DeepLabv3 from the ImageNet MobileNetV2 on coco128's masks (a config.yaml of images/masks/classes,
  # or Pascal VOC's VOCdevkit), scored by mIoU; then its masks drawn over images
  mobilenets train --model deeplabv3_mobilenet_v2 --recipe seg-small --data-dir ../shared/data/coco128 \\
      --init-from ../shared/data/weights/mobilenet_v2-b0353104.pth --resolution 320 --out runs/seg
  mobilenets predict --checkpoint runs/seg/best.pt ../shared/data/coco128/images/val2017/000000000139.jpg --out drawn
  # print a recipe's settings
  mobilenets train --show-recipe imagenet-v2
"""


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per :class:`TrainConfig` field, made from the field: its help, group, choices and
    flag in the field's metadata, its check in ``FIELD_RULES`` (the same the Python API makes).
    An option not given is left out of the namespace, so the field's own default applies."""
    groups = {name: parser.add_argument_group(name) if name else parser for name in GROUPS}
    for setting in fields(TrainConfig):
        meta = setting.metadata
        options: dict[str, Any] = {"dest": setting.name, "default": argparse.SUPPRESS, "help": meta["help"]}
        if meta.get("action") == "optional":
            options["action"] = argparse.BooleanOptionalAction
        elif isinstance(setting.default, bool):
            options["action"] = "store_false" if setting.default else "store_true"
        else:
            if setting.name in FIELD_RULES:
                options["type"] = FIELD_RULES[setting.name].argtype
            options.update({key: meta[key] for key in ("choices", "metavar") if key in meta})
        groups[meta["group"]].add_argument(option_flag(setting.name), **options)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    recipes = "\n".join(f"  {r.name:14s} {r.description}" for r in RECIPES.values())
    parser = subparsers.add_parser(
        "train",
        help="train a classifier, detector or segmenter on your images (class folders, CIFAR, YOLO/COCO boxes, "
        "masks) with a paper's recipe",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train a model and evaluate it after every epoch. The run directory (--out) holds\n"
            "config.json, last.pt / best.pt checkpoints (written atomically; last.pt also every\n"
            "--checkpoint-minutes) and metrics.jsonl. Re-running the same command in the same --out\n"
            "resumes exactly where it stopped, even mid-epoch; a NaN loss stops the run and keeps\n"
            "the last good checkpoint.\n\n"
            f"Recipes (--show-recipe NAME prints every setting):\n{recipes}"
        ),
        epilog=TRAIN_EXAMPLES,
    )
    parser.add_argument("--show-recipe", metavar="NAME", help="print a recipe's settings and exit")
    add_config_options(parser)
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bars (also off when the output is not a terminal)"
    )
    parser.set_defaults(run=run_train)
    _add_eval_parser(subparsers)
    _add_predict_parser(subparsers)


def _add_eval_parser(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint or any weights: top-1/top-5, per-class accuracy; COCO mAP for detectors; "
        "mIoU for segmenters",
        description=(
            "Evaluate a checkpoint (last.pt/best.pt of a run, or saved weights), a file written by 'mobilenets "
            "export' (--exported: .onnx, .pte, .xml or .tflite, run by its runtime), or --model with --weights "
            "(e.g. torchvision's ImageNet file), on labelled images: a train/val (or test) tree's val split, a "
            "plain folder of class folders (e.g. ../shared/data/imagenet-sample), or torchvision's CIFAR files. "
            "Images are preprocessed as the weights expect. Where the weights record their class names, the "
            "folders must match them; otherwise the sorted folders are classes 0, 1, ... "
            "A detector is scored on the validation split of a YOLO or COCO dataset by pycocotools: "
            "map (mAP@[.5:.95]), map50, map75 and by object size. A segmenter is scored on the val masks of an "
            "image/mask folder dataset (a config.yaml) or Pascal VOC: miou, pixel_acc and per-class IoU from one "
            "confusion matrix over the whole split."
        ),
        epilog="Example: mobilenets eval --model mobilenet_v2 --weights "
        "../shared/data/weights/mobilenet_v2-b0353104.pth --data-dir ../shared/data/imagenet-sample --json",
    )
    add_source_options(ev)
    add_exported_options(ev)
    ev.add_argument("--data-dir", required=True, help="labelled images (see above)")
    ev.add_argument("--dataset", choices=["cifar10", "cifar100"], help="torchvision's CIFAR files in --data-dir")
    ev.add_argument(
        "--split",
        choices=["val", "train"],
        default="val",
        help="detectors and segmenters: score the val split (default) or the training images (to see what was learnt)",
    )
    ev.add_argument("--download", action="store_true", help="with --dataset: let torchvision download them")
    ev.add_argument("--val-subset", type=POSITIVE_INT.argtype, help="a fixed class-balanced slice of N images")
    ev.add_argument("--batch-size", type=POSITIVE_INT.argtype, default=None, help="(default 256; 16 for detectors)")
    ev.add_argument(
        "--workers", type=NON_NEGATIVE_INT.argtype, default=2, help="image-decoding processes (default 2; 0: none)"
    )
    ev.add_argument(
        "--test-flip",
        action="store_true",
        help="score each image and its mirror image (twice the cost): a classifier's logits and a segmenter's "
        "class scores averaged, a detector's boxes from both passes suppressed together",
    )
    ev.add_argument(
        "--test-tiles",
        action="store_true",
        help="detectors: also detect in the image's four corner tiles (each 0.6 of its sides, at the network's input "
        "size: small objects fill more of it) and suppress all boxes together - five times the cost; +2.5 points "
        "of mAP50 for coco128's people (docs/benchmarks.md); with --test-flip each view is mirrored too",
    )
    _add_merge_option(ev)
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON (top1, top5, loss, images...)")
    ev.set_defaults(run=run_eval)


def _add_merge_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--test-merge",
        choices=["vote", "nms"],
        help="detectors, with several views (--test-tiles, --test-flip): how their copies of one object's box become "
        "one - vote (the default: the best box averaged with the copies it suppresses, weighted by score; "
        "+2 points of mAP50 for coco128's people with the tiles and the mirror image) or nms (the best box as it is)",
    )


def _add_predict_parser(subparsers: argparse._SubParsersAction) -> None:
    pr = subparsers.add_parser(
        "predict",
        help="top-5 classes with names for image files (boxes for detectors, masks for segmenters)",
        description=(
            "Classify images (detectors: boxes, segmenters: masks) with a checkpoint, a file written by "
            "'mobilenets export' (--exported: .onnx, .pte, .xml or .tflite, run by its runtime; class names and "
            "preprocessing travel with them) or --model/--weights (e.g. torchvision's ImageNet weights; "
            "ImageNet class names are built in)."
        ),
    )
    pr.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of them (every image under a "
                    "folder, sorted)")  # fmt: skip
    pr.add_argument("--checkpoint", help="a run's last.pt/best.pt or a file written by save_weights")
    add_exported_options(pr)
    pr.add_argument("--top", type=POSITIVE_INT.argtype, default=5,
                    help="how many classes to show (default 5; segmenters: the largest by area)")  # fmt: skip
    pr.add_argument("--json", action="store_true", help="print the predictions as JSON, one entry per image")
    pr.add_argument("--out", help="detectors: write each image with its boxes, class names and scores drawn here; "
                    "segmenters: each image with its mask and a legend, and the class-id mask PNG")  # fmt: skip
    pr.add_argument(
        "--threshold",
        type=PROBABILITY.argtype,
        default=0.3,
        help="detectors: the lowest score of a box shown (default 0.3)",
    )
    pr.add_argument(
        "--test-flip",
        action="store_true",
        help="also run each image's mirror image (twice the cost; see eval): a classifier's logits and a segmenter's "
        "class scores averaged, a detector's boxes from both passes merged",
    )
    pr.add_argument(
        "--test-tiles",
        action="store_true",
        help="detectors: also look in the image's four corner tiles, where small objects fill more of the network's "
        "input (five times the cost; see eval; with --test-flip each view is mirrored too)",
    )
    _add_merge_option(pr)
    add_model_options(pr, positional=False, required=False)
    add_random_weights_option(pr, "prediction")
    pr.set_defaults(run=run_predict)


def run_train(args: argparse.Namespace) -> int:
    if args.show_recipe:
        recipe = get_recipe(args.show_recipe)
        print(f"{recipe.name}: {recipe.description}\n{recipe.describe()}")
        return 0
    given = {
        setting.name: getattr(args, setting.name) for setting in fields(TrainConfig) if hasattr(args, setting.name)
    }
    missing = [flag for flag in ("model", "data_dir", "out") if not given.get(flag)]
    if missing:
        raise ConfigError("train needs " + ", ".join("--" + m.replace("_", "-") for m in missing))
    from .._table import human
    from ..train import train

    config = TrainConfig(**given)
    s = train(config, progress=not args.no_progress and sys.stderr.isatty())
    if s is None:  # not rank 0 of a torchrun job
        return 0
    epochs = f"{s['epochs']} epoch{'s' if s['epochs'] != 1 else ''}"
    if "map" in s:  # a detector
        result = f"mAP {100 * s['map']:.2f}% (best {100 * s['best_map']:.2f}%), mAP50 {100 * s['map50']:.2f}%"
    elif "miou" in s:  # a segmenter
        result = (
            f"mIoU {100 * s['miou']:.2f}% (best {100 * s['best_miou']:.2f}%), pixel acc {100 * s['pixel_acc']:.2f}%"
        )
    else:
        result = f"top-1 {100 * s['top1']:.2f}% (best {100 * s['best_top1']:.2f}%), top-5 {100 * s['top5']:.2f}%"
    print(
        f"\n{s['model']} after {epochs}: {result}\n{human(s['mult_adds'])} mult-adds, {human(s['params'])} params, "
        f"{s['latency_ms_batch1_cpu']:.1f} ms per image on this CPU (batch 1)\nrun directory: {s['out']}"
    )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from ..tasks import task_of

    if args.download and not args.dataset:
        raise ConfigError("--download fetches torchvision's CIFAR files: give --dataset cifar10 or cifar100")
    loaded = load_exported_for_cli(args)
    if loaded is None:
        import torch

        from ..export.onnx import fold_batchnorm

        require_weights(args, "eval")
        model, info = load_for_cli(args, "eval")
        # Batch norms folded into their convs (exact up to float rounding, as every export does) and NHWC:
        # MobileNetV2 on 250 images at 224 took 9.7 s as loaded, 5.2 s in NHWC, 2.8 s folded in NHWC
        # (AMD EPYC Zen 5, 2 threads; docs/benchmarks.md, "Training on the CPU", for NHWC alone)
        model = fold_batchnorm(model)[0].to(memory_format=torch.channels_last)
    else:
        model, info = loaded
    return task_of(info).commands().evaluate(args, model, info)


def run_predict(args: argparse.Namespace) -> int:
    from ..data import image_paths
    from ..tasks import task_of

    args.images = image_paths(args.images)
    loaded = load_exported_for_cli(args)
    if loaded is None:
        require_weights(args, "predict")
        loaded = load_for_cli(args, "predict")
    model, info = loaded
    return task_of(info).commands().predict(args, model, info)
