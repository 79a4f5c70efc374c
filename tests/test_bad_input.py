"""Every path a user can reach answers bad input clearly.

The command line: each row is one mistake; the command must exit with code 2 and
print exactly one line on stderr that names the problem, with no traceback, and
write nothing.  ``test_every_value_option_has_a_row`` walks the real parsers so an
option added without a row here fails the suite.  The Python API: the same
mistakes raise the right :class:`mobilenets.MobileNetsError` subclass.
"""

from __future__ import annotations

import argparse
import multiprocessing

import pytest
import torch
from PIL import Image
from torch import nn

import mobilenets
from mobilenets.cli import build_parser, main
from mobilenets.errors import ConfigError, DataError, InputShapeError, UnknownModelError, WeightsError

from .conftest import SHARED_DATA, TORCHVISION_V2_WEIGHTS

CIFAR = str(SHARED_DATA / "cifar10")
IMAGENET = str(SHARED_DATA / "imagenet-sample")
TV = str(TORCHVISION_V2_WEIGHTS)
TENCH = str(SHARED_DATA / "imagenet-sample" / "n01440764" / "n01440764_tench.jpg")
NO_FILE = "/nonexistent/file.pth"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Small real files the rows point at: a CIFAR-shaped weights file, a text file, a folder."""
    root = tmp_path_factory.mktemp("bad-input")
    model = mobilenets.create_model("mobilenet_v1", width_mult=0.25, num_classes=10, cifar=True)
    mobilenets.save_weights(model, root / "v1.safetensors")
    (root / "notes.txt").write_text("not a model")
    (root / "photo.pth").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 64)  # a JPEG renamed
    (root / "empty").mkdir()
    # a model that records its ten CIFAR class names, and ten labelled folders with other names
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    info = {"classes": names, "transforms": "cifar", "resolution": 32}
    mobilenets.save_weights(model, root / "v1-named.safetensors", data_info=info)
    for split in ("train", "val"):
        for i in range(10):
            (root / "renamed" / split / f"kind{i}").mkdir(parents=True)
            Image.new("RGB", (32, 32), (20 * i, 0, 0)).save(root / "renamed" / split / f"kind{i}" / "0.png")
    return root


# (command, option or topic) -> (argv, words the one-line message must contain).
# {root} is the fixture folder, {out} a fresh output path that must stay unwritten.
def rows() -> dict[tuple[str, str], tuple[list[str], list[str]]]:
    train = ["train", "--model", "mobilenet_v1", "--width-mult", "0.25", "--data-dir", CIFAR, "--out", "{out}"]
    dec = ["decouple", "--model", "vgg16", "--cifar", "--width-mult", "0.25", "--num-classes", "10", "--out", "{out}"]
    exp = ["export", "--checkpoint", "{root}/v1.safetensors", "--out", "{out}/m.onnx"]
    bench = ["bench", "--no-memory", "--no-reference", "--runs", "1"]
    ev = ["eval", "--checkpoint", "{root}/v1.safetensors", "--data-dir", CIFAR]
    pr = ["predict", "--checkpoint", "{root}/v1.safetensors", TENCH]
    return {
        # profile (and the model options every command shares)
        ("profile", "model"): (["profile", "mobilenet_v9"], ["unknown model", "did you mean"]),
        ("profile", "--width-mult"): (["profile", "mobilenet_v2", "--width-mult", "0"], ["--width-mult", "positive"]),
        ("profile", "--width-mult text"): (["profile", "mobilenet_v2", "-a", "half"], ["--width-mult", "'half'"]),
        ("profile", "--resolution"): (["profile", "mobilenet_v2", "--resolution", "0"], ["--resolution", "positive"]),
        ("profile", "--num-classes"): (["profile", "mobilenet_v2", "--num-classes", "0"], ["--num-classes"]),
        ("profile", "--activation"): (["profile", "mobilenet_v2", "--activation", "sigh"], ["activation", "sigh"]),
        ("profile", "--weights"): (["profile", "mobilenet_v2", "--weights", NO_FILE], ["not found", NO_FILE]),
        ("profile", "--weights folder"): (["profile", "mobilenet_v2", "--weights", "{root}/empty"], ["is a folder"]),
        ("profile", "--weights jpeg"): (["profile", "mobilenet_v2", "--weights", "{root}/photo.pth"], ["JPEG"]),
        ("profile", "--weights other model"): (
            ["profile", "mobilenet_v2", "--num-classes", "10", "--weights", "{root}/v1.safetensors"],
            ["this file is mobilenet_v1"],
        ),
        ("profile", "torchvision width"): (["profile", "torchvision.resnet18", "-a", "0.5"], ["no --width-mult"]),
        ("profile", "--checkpoint"): (["profile", "--checkpoint", NO_FILE], ["not found"]),
        ("profile", "--checkpoint with a model"): (
            ["profile", "mobilenet_v2", "--checkpoint", "{root}/v1.safetensors"],
            ["drop --model"],
        ),  # fmt: skip
        ("profile", "nothing"): (["profile"], ["MODEL", "--checkpoint"]),
        ("profile", "unknown option"): (["profile", "mobilenet_v2", "--depth", "3"], ["mobilenets profile --help"]),
        # train
        ("train", "--epochs"): ([*train, "--epochs", "0"], ["--epochs", "positive integer"]),
        ("train", "--batch-size"): ([*train, "--batch-size", "0"], ["--batch-size", "positive integer"]),
        ("train", "--lr"): ([*train, "--lr", "-1"], ["--lr", "positive"]),
        ("train", "--weight-decay"): ([*train, "--weight-decay", "-1"], ["--weight-decay", ">= 0"]),
        ("train", "--warmup-epochs"): ([*train, "--warmup-epochs", "-1"], ["--warmup-epochs"]),
        ("train", "--schedule"): ([*train, "--schedule", "linear"], ["--schedule", "linear"]),
        ("train", "--decay-epochs"): ([*train, "--decay-epochs", "0"], ["--decay-epochs", "positive integer"]),
        ("train", "--compile-mode"): ([*train, "--compile-mode", "fast"], ["--compile-mode", "fast"]),
        ("train", "--residual segmenter"): (
            [*train[:2], "lraspp_mobilenet_v3_large", *train[3:], "--no-shortcuts", "--teacher", "t.pt"],
            ["--no-shortcuts, --teacher", "not available for a segmenter"],
        ),
        ("train", "--label-smoothing"): ([*train, "--label-smoothing", "2"], ["--label-smoothing", "[0, 1)"]),
        ("train", "--ema-decay"): ([*train, "--ema-decay", "1"], ["--ema-decay", "[0, 1)"]),
        ("train", "--train-subset"): ([*train, "--train-subset", "0"], ["--train-subset"]),
        ("train", "--val-subset"): ([*train, "--val-subset", "-3"], ["--val-subset"]),
        ("train", "--workers"): ([*train, "--workers", "-1"], ["--workers", ">= 0"]),
        ("train", "--seed"): ([*train, "--seed", "x"], ["--seed"]),
        ("train", "--resolution"): ([*train, "--resolution", "0"], ["--resolution"]),
        ("train", "--width-mult"): ([*train, "--width-mult", "-2"], ["--width-mult"]),
        ("train", "--qat-calibration"): ([*train, "--qat-calibration", "0"], ["--qat-calibration"]),
        ("train", "--checkpoint-every"): ([*train, "--checkpoint-every", "-5"], ["--checkpoint-every"]),
        ("train", "--checkpoint-minutes"): ([*train, "--checkpoint-minutes", "0"], ["--checkpoint-minutes"]),
        ("train", "--device"): ([*train, "--device", "tpu"], ["--device", "tpu"]),
        ("train", "--precision"): ([*train, "--precision", "fp64"], ["--precision", "fp64"]),
        ("train", "--recipe"): ([*train, "--recipe", "fast"], ["--recipe", "fast"]),
        ("train", "--dataset"): ([*train, "--dataset", "mnist"], ["--dataset", "mnist"]),
        ("train", "--data-dir"): ([*train[:5], "--data-dir", "/nonexistent", "--out", "{out}"], ["not found"]),
        ("train", "--model"): ([*train[:1], "--model", "mobilenet_v7", *train[3:]], ["unknown model"]),
        ("train", "--activation"): ([*train, "--activation", "sigh"], ["sigh"]),
        ("train", "--no-shortcuts"): ([*train, "--no-shortcuts"], ["mobilenet_v1", "residual"]),
        ("train", "--init-from"): ([*train, "--init-from", NO_FILE], ["not found"]),
        ("train", "--init-from other width"): (
            [*train[:4], "0.5", *train[5:], "--init-from", "{root}/v1.safetensors"],
            ["width", "0.25"],
        ),
        ("train", "--out"): ([*train[:-2], "--out", "{root}/notes.txt/run"], ["notes.txt"]),
        ("train", "--show-recipe"): (["train", "--show-recipe", "fast"], ["unknown recipe"]),
        ("train", "--init-from not weights"): ([*train, "--init-from", "{root}/notes.txt"], ["not a weights file"]),
        ("train", "--body-lr-mult"): ([*train, "--body-lr-mult", "-1"], ["--body-lr-mult", ">= 0"]),
        ("train", "--freeze-body-epochs"): ([*train, "--freeze-body-epochs", "-1"], ["--freeze-body-epochs"]),
        ("train", "--freeze-layers"): ([*train, "--freeze-layers", "-2"], ["--freeze-layers"]),
        ("train", "--recompute-bn"): ([*train, "--recompute-bn", "-1"], ["--recompute-bn", ">= 0"]),
        ("train", "--eval-every"): ([*train, "--eval-every", "0"], ["--eval-every", "positive integer"]),
        ("train", "--freeze-layers too many"): ([*train, "--freeze-layers", "99"], ["--freeze-layers 99", "layers"]),
        ("train", "--teacher"): ([*train, "--teacher", NO_FILE], ["--teacher", "not found"]),
        ("train", "--teacher-model"): ([*train, "--teacher-model", "resnet18"], ["--teacher-model needs --teacher"]),
        ("train", "--teacher class count"): (
            [*train, "--teacher", TV, "--teacher-model", "mobilenet_v2"],
            ["1000 classes", "student has 10"],
        ),  # fmt: skip
        ("train", "--teacher without architecture"): ([*train, "--teacher", TV], ["--teacher-model NAME"]),
        ("train", "--distill-weight"): ([*train, "--distill-weight", "1.5"], ["--distill-weight", "[0, 1]"]),
        ("train", "--temperature"): ([*train, "--temperature", "0"], ["--temperature", "positive"]),
        ("train", "--distill-weight without teacher"): ([*train, "--distill-weight", "0.3"], ["need --teacher"]),
        ("train", "--temperature without teacher"): ([*train, "--temperature", "2"], ["need --teacher"]),
        ("train", "--teacher other classes"): (
            [*train[:-4], "--data-dir", "{root}/renamed", "--out", "{out}", "--teacher", "{root}/v1-named.safetensors"],
            ["not the classes", "kind0", "airplane"],
        ),  # fmt: skip
        ("train", "--unlabelled"): (
            [*train, "--teacher", "{root}/v1.safetensors", "--unlabelled", "{root}/empty"],
            ["--unlabelled", "no images"],
        ),  # fmt: skip
        ("train", "--unlabelled without teacher"): ([*train, "--unlabelled", "{root}/empty"], ["give --teacher"]),
        ("train", "--with-labelled alone"): ([*train, "--with-labelled"], ["--with-labelled needs --unlabelled"]),
        ("train", "--classes"): ([*train, "--classes", "cat"], ["--classes", "for a detector or a segmenter"]),
        ("train", "--skip-empty-images"): ([*train, "--skip-empty-images"], ["--skip-empty-images", "for a detector"]),
        ("train", "--background-every"): ([*train, "--background-every", "0"], ["--background-every", "positive"]),
        ("train", "--background-every with --skip-empty-images"): (
            [*train, "--background-every", "2", "--skip-empty-images"], ["--skip-empty-images drops", "give one"]
        ),
        ("train", "--background-every classifier"): (
            [*train, "--background-every", "4"], ["--background-every", "for a detector"]
        ),
        ("train", "--match-iou"): ([*train, "--match-iou", "0"], ["--match-iou", "(0, 1]"]),
        ("train", "--match-iou classifier"): ([*train, "--match-iou", "0.4"], ["--match-iou", "for a detector"]),
        ("train", "--match-min-boxes"): ([*train, "--match-min-boxes", "-1"], ["--match-min-boxes", ">= 0"]),
        ("train", "--match-min-boxes classifier"): (
            [*train, "--match-min-boxes", "6"], ["--match-min-boxes", "for a detector"]
        ),
        ("train", "--classes unknown"): (
            [
                "train",
                "--model",
                "ssdlite_mobilenet_v2",
                "--recipe",
                "coco-ssdlite",
                "--data-dir",
                str(SHARED_DATA / "coco128"),
                "--out",
                "{out}",
                "--classes",
                "persn",
            ],
            ["--classes", "no class 'persn'", "0 person"],
        ),  # fmt: skip
        ("train", "missing"): (["train", "--model", "mobilenet_v1"], ["--data-dir", "--out"]),
        # eval
        ("eval", "--checkpoint"): (["eval", "--checkpoint", NO_FILE, "--data-dir", CIFAR], ["not found"]),
        ("eval", "--data-dir"): ([*ev[:3], "--data-dir", "/nonexistent"], ["not found"]),
        ("eval", "--val-subset"): ([*ev, "--val-subset", "0"], ["--val-subset"]),
        ("eval", "--batch-size"): ([*ev, "--batch-size", "0"], ["--batch-size"]),
        ("eval", "--workers"): ([*ev, "--workers", "-1"], ["--workers"]),
        ("eval", "--dataset"): ([*ev, "--dataset", "mnist"], ["--dataset"]),
        ("eval", "--download"): ([*ev, "--download"], ["--download", "--dataset"]),
        ("eval", "--model without weights"): (
            ["eval", "--model", "mobilenet_v2", "--data-dir", IMAGENET],
            ["--weights"],
        ),
        ("eval", "class count"): (
            ["eval", "--model", "mobilenet_v2", "--weights", TV, "--data-dir", CIFAR],
            ["10 classes"],
        ),
        ("eval", "--checkpoint with --model"): ([*ev, "--model", "mobilenet_v2"], ["drop --model"]),
        ("eval", "--width-mult"): ([*ev, "--width-mult", "0"], ["--width-mult"]),
        ("eval", "--resolution"): ([*ev, "--resolution", "0"], ["--resolution"]),
        ("eval", "--num-classes"): ([*ev, "--num-classes", "-1"], ["--num-classes"]),
        ("eval", "--activation"): (
            ["eval", "--model", "torchvision.vgg11", "--activation", "relu", "--weights", TV, "--data-dir", CIFAR],
            ["activation"],
        ),  # fmt: skip
        ("eval", "--weights"): (
            ["eval", "--model", "mobilenet_v2", "--weights", NO_FILE, "--data-dir", CIFAR],
            ["not found"],
        ),  # fmt: skip
        ("eval", "--split"): ([*ev, "--split", "train"], ["--split is for detectors"]),
        ("eval", "--test-tiles"): ([*ev, "--test-tiles"], ["--test-tiles is for detectors", "classifier"]),
        ("eval", "--test-merge"): ([*ev, "--test-merge", "nms"], ["--test-merge is for detectors", "classifier"]),
        ("eval", "--test-merge choice"): ([*ev, "--test-merge", "mean"], ["--test-merge", "invalid choice"]),
        ("eval", "other classes"): (
            ["eval", "--checkpoint", "{root}/v1-named.safetensors", "--data-dir", "{root}/renamed"],
            ["not the classes", "'kind0' in the data", "'airplane' in the model"],
        ),  # fmt: skip
        ("eval", "--split choice"): ([*ev, "--split", "test"], ["--split", "invalid choice"]),
        # predict
        ("predict", "--top"): ([*pr, "--top", "0"], ["--top", "positive integer"]),
        ("predict", "--top negative"): ([*pr, "--top", "-1"], ["--top"]),
        ("predict", "--threshold"): ([*pr, "--threshold", "1.5"], ["--threshold"]),
        ("predict", "--test-tiles"): ([*pr, "--test-tiles"], ["--test-tiles is for detectors", "classifier"]),
        ("predict", "--test-merge"): ([*pr, "--test-merge", "vote"], ["--test-merge is for detectors", "classifier"]),
        ("predict", "--out"): ([*pr, "--out", "{out}"], ["--out draws boxes", "detectors"]),
        ("predict", "--onnx"): (["predict", "--onnx", "{root}/notes.txt", TENCH], ["notes.txt"]),
        ("predict", "--exported"): (
            ["predict", "--exported", "{root}/notes.txt", TENCH],
            ["notes.txt", "not an exported model"],
        ),
        ("predict", "--exported not found"): (["predict", "--exported", "m.xml", TENCH], ["not found: m.xml"]),
        ("eval", "--exported"): (
            ["eval", "--exported", "{root}/notes.txt", "--data-dir", "{root}"],
            ["notes.txt", "not an exported model"],
        ),
        ("eval", "--onnx"): (["eval", "--onnx", "{root}/notes.txt", "--data-dir", "{root}"], ["notes.txt"]),
        ("eval", "--pte"): (
            ["eval", "--pte", "{root}/notes.txt", "--data-dir", "{root}"],
            ["notes.txt.json", "missing"],
        ),
        ("eval", "--exported with --checkpoint"): ([*ev, "--exported", "m.onnx"], ["not both"]),
        ("predict", "--onnx with --checkpoint"): ([*pr, "--onnx", "{root}/notes.txt"], ["not both"]),
        ("predict", "--pte with --onnx"): (["predict", "--pte", "m.pte", "--onnx", "m.onnx", TENCH], ["not both"]),
        ("predict", "--pte"): (["predict", "--pte", "{root}/notes.txt", TENCH], ["notes.txt.json", "missing"]),
        ("predict", "--pte not found"): (["predict", "--pte", NO_FILE, TENCH], ["not found"]),
        ("predict", "--onnx with --resolution"): (
            ["predict", "--onnx", "x.onnx", "--resolution", "64", TENCH],
            ["--resolution"],
        ),  # fmt: skip
        ("predict", "--checkpoint with --model"): ([*pr, "--model", "mobilenet_v2"], ["drop --model"]),
        ("predict", "--model without weights"): (["predict", "--model", "mobilenet_v2", TENCH], ["random weights"]),
        ("predict", "--checkpoint"): (["predict", "--checkpoint", NO_FILE, TENCH], ["not found"]),
        ("predict", "images"): ([*pr[:3], "{root}/notes.txt"], ["cannot read image", "notes.txt"]),
        ("predict", "--width-mult"): ([*pr, "--width-mult", "x"], ["--width-mult"]),
        ("predict", "--resolution"): ([*pr, "--resolution", "-4"], ["--resolution"]),
        ("predict", "--num-classes"): ([*pr, "--num-classes", "0"], ["--num-classes"]),
        ("predict", "--activation"): ([*pr, "--activation", "relu"], ["drop --activation"]),
        ("predict", "--weights"): (
            ["predict", "--model", "mobilenet_v2", "--weights", "{root}/notes.txt", TENCH],
            ["not a weights file"],
        ),  # fmt: skip
        ("predict", "--model"): (["predict", "--model", "resnet17", "--random-weights", TENCH], ["unknown model"]),
        # plot
        ("plot", "runs"): (["plot", "{root}", "--out", "{out}/p.png"], ["not a training run"]),
        ("plot", "--out"): (["plot", "{root}", "--out", "{root}/notes.txt/p.png"], ["not a training run"]),
        ("plot", "--x"): (["plot", "{root}", "--x", "hours"], ["--x", "hours"]),
        # decouple
        ("decouple", "--rank"): ([*dec, "--rank", "0"], ["--rank", "positive integer"]),
        ("decouple", "--rank too large"): (
            [*dec, "--rank", "49"],
            ["larger than the 9 terms of features.0.conv", "--rank full"],
        ),
        ("decouple", "--energy"): ([*dec, "--energy", "1.5"], ["--energy", "(0, 1]"]),
        ("decouple", "--target-reduction"): ([*dec, "--target-reduction", "1"], ["--target-reduction", "> 1"]),
        ("decouple", "--sweep"): ([*dec, "--sweep", "2,x"], ["--sweep"]),
        ("decouple", "none of rank/energy"): (dec, ["exactly one of --rank"]),
        ("decouple", "two of rank/energy"): ([*dec, "--rank", "2", "--energy", "0.9"], ["exactly one of --rank"]),
        ("decouple", "--method"): ([*dec, "--rank", "2", "--method", "svd"], ["--method", "svd"]),
        ("decouple", "--order"): ([*dec, "--rank", "2", "--order", "up"], ["--order"]),
        ("decouple", "--allocation"): ([*dec, "--rank", "2", "--allocation", "x"], ["--allocation"]),
        ("decouple", "--budget"): ([*dec, "--rank", "2", "--budget", "x"], ["--budget"]),
        ("decouple", "--latency-backend"): ([*dec, "--rank", "2", "--latency-backend", "x"], ["--latency-backend"]),
        ("decouple", "--calibration"): ([*dec, "--rank", "2", "--calibration", "/nonexistent"], ["not found"]),
        ("decouple", "--calibration-images"): (
            [*dec, "--rank", "2", "--calibration-images", "0"],
            ["--calibration-images"],
        ),  # fmt: skip
        ("decouple", "--eval-data"): (
            [*dec, "--rank", "2", "--eval-data", IMAGENET, "--val-subset", "10"],
            ["1000 classes"],
        ),  # fmt: skip
        ("decouple", "--val-subset"): ([*dec, "--rank", "2", "--val-subset", "0"], ["--val-subset"]),
        ("decouple", "--eval-data other classes"): (
            [
                "decouple",
                "--checkpoint",
                "{root}/v1-named.safetensors",
                "--rank",
                "2",
                "--out",
                "{out}",
                "--eval-data",
                "{root}/renamed",
            ],
            ["not the classes", "kind0"],
        ),  # fmt: skip
        ("decouple", "--device"): ([*dec, "--rank", "2", "--device", "tpu"], ["--device", "tpu"]),
        ("decouple", "--checkpoint"): (
            ["decouple", "--checkpoint", NO_FILE, "--rank", "2", "--out", "{out}"],
            ["not found"],
        ),  # fmt: skip
        ("decouple", "--model"): (
            ["decouple", "--model", "torchvision.resnet1", "--rank", "2", "--out", "{out}"],
            ["torchvision.resnet18"],
        ),  # fmt: skip
        ("decouple", "--width-mult"): ([*dec, "--rank", "2", "--width-mult", "0"], ["--width-mult"]),
        ("decouple", "--resolution"): ([*dec, "--rank", "2", "--resolution", "0"], ["--resolution"]),
        ("decouple", "--num-classes"): ([*dec, "--rank", "2", "--num-classes", "0"], ["--num-classes"]),
        ("decouple", "--activation"): ([*dec, "--rank", "2", "--activation", "sigh"], ["activation"]),
        ("decouple", "--weights"): ([*dec, "--rank", "2", "--weights", "{root}/v1.safetensors"], ["mobilenet_v1"]),
        ("decouple", "--out"): ([*dec[:-1], "{root}/notes.txt/out", "--rank", "2"], ["notes.txt"]),
        # export
        ("export", "--out"): ([*exp[:-1], "{out}/m.txt"], [".onnx"]),
        ("export", "--opset"): ([*exp, "--opset", "25"], ["--opset", "between 17 and"]),
        ("export", "--opset low"): ([*exp, "--opset", "9"], ["--opset", "between 17 and"]),
        ("export", "--format"): ([*exp, "--format", "tflite"], ["--format"]),
        ("export", "--format executorch --out"): ([*exp, "--format", "executorch"], ["--out", ".pte", "m.onnx"]),
        ("export", "--format executorch --dynamic-batch"): (
            [*exp[:-1], "{out}/m.pte", "--format", "executorch", "--dynamic-batch"],
            ["--dynamic-batch", "ONNX"],
        ),
        ("export", "--format executorch --int8"): (
            [*exp[:-1], "{out}/m.pte", "--format", "executorch", "--int8"],
            ["--calibration"],
        ),
        ("export", "--int8 without calibration"): ([*exp, "--int8"], ["--calibration"]),
        ("export", "--precision"): ([*exp, "--precision", "fp16"], ["--precision", "invalid choice"]),
        ("export", "--precision bf16 for onnx"): (
            [*exp, "--precision", "bf16"],
            ["ONNX Runtime runs fp32, int8, not bf16"],
        ),
        ("export", "--precision with --int8"): ([*exp, "--precision", "fp32", "--int8"], ["disagree"]),
        ("export", "--calibration"): ([*exp, "--int8", "--calibration", "{root}/empty"], ["no images"]),
        ("export", "--calibration-images"): ([*exp, "--calibration-images", "0"], ["--calibration-images"]),
        ("export", "--calibration-method"): ([*exp, "--calibration-method", "max"], ["--calibration-method"]),
        ("export", "--calibration-method histogram"): (
            [*exp, "--calibration-method", "histogram"],
            ["--calibration-method histogram", "--format onnx"],
        ),
        ("export", "--calibration-method entropy"): (
            [*exp[:-1], "{out}/m.pte", "--format", "executorch", "--int8", "--calibration-method", "entropy"],
            ["--calibration-method entropy", "--format executorch"],
        ),
        ("export", "--calibration-percentile"): ([*exp, "--calibration-percentile", "101"], ["percentile"]),
        ("export", "--weight-rounding"): ([*exp, "--weight-rounding", "up"], ["--weight-rounding"]),
        ("export", "--distill-steps"): ([*exp, "--distill-steps", "-1"], ["--distill-steps", "an integer >= 0"]),
        ("export", "--distill-steps for onnx"): (
            [*exp, "--distill-steps", "5"],
            ["--distill-steps does not apply to --format onnx"],
        ),
        ("export", "--distill-steps without --int8"): (
            [*exp[:-2], "--out", "{out}/m.tflite", "--format", "litert", "--distill-steps", "5"],
            ["--distill-steps needs --int8"],
        ),
        ("export", "--range-search-images"): ([*exp, "--range-search-images", "0"], ["--range-search-images"]),
        ("export", "--range-search-sweeps"): ([*exp, "--range-search-sweeps", "0"], ["--range-search-sweeps"]),
        ("export", "--eval-data"): ([*exp, "--eval-data", IMAGENET], ["1000 classes", "10"]),
        ("export", "--val-subset"): ([*exp, "--val-subset", "0"], ["--val-subset"]),
        ("export", "--eval-data other classes"): (
            [
                "export",
                "--checkpoint",
                "{root}/v1-named.safetensors",
                "--out",
                "{out}/m.onnx",
                "--eval-data",
                "{root}/renamed",
            ],
            ["not the classes", "kind0"],
        ),  # fmt: skip
        ("export", "--model without weights"): (
            ["export", "--model", "mobilenet_v2", "--out", "{out}/m.onnx"],
            ["random weights", "--random-weights"],
        ),  # fmt: skip
        ("export", "--calibration without --int8"): ([*exp, "--calibration", IMAGENET], ["add --int8"]),
        ("export", "--checkpoint"): (
            ["export", "--checkpoint", "{root}/notes.txt", "--out", "{out}/m.onnx"],
            ["not a weights file"],
        ),  # fmt: skip
        ("export", "--model"): (["export", "--model", "nope", "--out", "{out}/m.onnx"], ["unknown model"]),
        ("export", "--width-mult"): ([*exp, "--width-mult", "0"], ["--width-mult"]),
        ("export", "--resolution"): ([*exp, "--resolution", "0"], ["--resolution"]),
        ("export", "--num-classes"): ([*exp, "--num-classes", "0"], ["--num-classes"]),
        ("export", "--activation"): ([*exp, "--activation", "relu"], ["drop --activation"]),
        ("export", "--weights"): ([*exp, "--weights", TV], ["drop --weights"]),
        # bench
        ("bench", "--models"): ([*bench, "--models", "mobilenet_v5"], ["unknown model"]),
        ("bench", "--backends"): ([*bench, "--backends", "eager,tensorrt"], ["tensorrt"]),
        ("bench", "--batch-sizes"): ([*bench, "--batch-sizes", "1,0"], ["--batch-sizes", "positive"]),
        ("bench", "--threads"): ([*bench, "--threads", "two"], ["--threads"]),
        ("bench", "--resolution"): ([*bench, "--resolution", "0"], ["--resolution"]),
        ("bench", "--runs"): ([*bench[:-2], "--runs", "0"], ["--runs"]),
        ("bench", "--warmup"): ([*bench, "--warmup", "-1"], ["--warmup"]),
        ("bench", "--weights"): ([*bench, "--weights", "mobilenet_v2"], ["MODEL=FILE"]),
        ("bench", "--eval-data"): ([*bench, "--eval-data", IMAGENET], ["--weights"]),
        ("bench", "--eval-data for a detector"): (
            [*bench, "--models", "ssdlite_mobilenet_v2", "--weights", "ssdlite_mobilenet_v2={out}/det.pt",
             "--eval-data", IMAGENET],  # fmt: skip
            ["measures top-1", "a detector", "--format auto"],
        ),
        ("bench", "--val-subset"): ([*bench, "--val-subset", "0"], ["--val-subset"]),
        ("bench", "--calibration"): ([*bench, "--calibration", "/nonexistent"], ["not found"]),
        ("bench", "--out"): ([*bench, "--out", "{root}/notes.txt/b", "--backends", "nope"], ["nope"]),
        # choose
        ("choose", "--latency-ms"): (["choose", "--latency-ms", "0"], ["--latency-ms must be a positive"]),
        ("choose", "--latency-ms text"): (["choose", "--latency-ms", "fast"], ["--latency-ms", "invalid float"]),
        ("choose", "--runtime"): (["choose", "--latency-ms", "3", "--runtime", "tpu"], ["no runtime 'tpu'"]),
        ("choose", "--precision"): (
            ["choose", "--latency-ms", "3", "--precision", "bf16"],
            ["ONNX Runtime runs fp32, int8, not bf16"],
        ),
        ("choose", "--threads"): (["choose", "--latency-ms", "3", "--threads", "0"], ["--threads", "positive integer"]),
        ("choose", "--families"): (["choose", "--latency-ms", "3", "--families", "v4"], ["--families", "v4"]),
        ("choose", "--runs"): (["choose", "--latency-ms", "3", "--runs", "0"], ["--runs", "positive integer"]),
        ("choose", "--out"): (["choose", "--latency-ms", "3", "--out", "{out}", "--runtime", "tpu"], ["no runtime"]),
        # export --format auto
        ("export", "--tolerance"): (
            [*exp[:-2], "--out", "{out}/m", "--format", "auto", "--tolerance", "-1"],
            ["--tolerance", "cannot be negative"],
        ),
        ("export", "--tolerance without auto"): ([*exp, "--tolerance", "1"], ["--tolerance is for --format auto"]),
        ("export", "--runtimes"): (
            [*exp[:-2], "--out", "{out}/m", "--format", "auto", "--runtimes", "tpu"],
            ["no runtime 'tpu'"],
        ),
        ("export", "--threads"): ([*exp, "--threads", "0"], ["--threads", "positive integer"]),
        ("export", "--format auto with --int8"): (
            [*exp[:-2], "--out", "{out}/m", "--format", "auto", "--int8"],
            ["tries every precision"],
        ),
        ("export", "--format auto with --opset"): (
            [*exp[:-2], "--out", "{out}/m", "--format", "auto", "--opset", "18"],
            ["--opset does not apply to --format auto"],
        ),
        ("export", "--format auto without images"): (
            [*exp[:-2], "--out", "{out}/m", "--format", "auto"],
            ["--calibration DIR"],
        ),
    }


ROWS = rows()


@pytest.mark.parametrize("key", list(ROWS), ids=[f"{c} {o}" for c, o in ROWS])
def test_cli_bad_input_is_one_line_and_exit_2(key, files, tmp_path, capsys, shared_data):
    argv, words = ROWS[key]
    out = tmp_path / "out"
    argv = [a.format(root=files, out=out) for a in argv]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word.format(root=files) in err, (word, err)
    assert not out.exists(), "a refused command wrote its output folder"


def test_every_value_option_has_a_row():
    """Each option that takes a value, of every subcommand, is exercised above."""
    parser = build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    covered = {(command, topic.split()[0]) for command, topic in ROWS}
    missing = []
    for name, sub in subcommands.items():
        for action in sub._actions:
            takes_value = action.nargs != 0 and not isinstance(action, argparse._HelpAction)
            if not takes_value:
                continue
            option = max(action.option_strings, key=len) if action.option_strings else action.dest
            if (name, option) not in covered:
                missing.append(f"{name} {option}")
    assert not missing, f"options without a bad-input row: {missing}"


def test_cuda_without_a_gpu_is_one_line(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code = main(
        ["train", "--model", "mobilenet_v1", "--data-dir", CIFAR, "--out", str(tmp_path / "r"), "--device", "cuda"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "no CUDA GPU" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_corrupt_image_in_a_worker_is_one_line(capsys, tmp_path):
    """A DataLoader worker's error reaches the user as its own message, not a worker traceback."""
    for split in ("train", "test"):
        for cls in ("a", "b"):
            folder = tmp_path / "data" / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(folder / f"{i}.png")
    (tmp_path / "data" / "train" / "a" / "9.png").write_bytes(b"broken")
    argv = ["train", "--model", "mobilenet_v1", "--width-mult", "0.25", "--data-dir", str(tmp_path / "data")]
    argv += ["--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4", "--workers", "2", "--no-progress"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "cannot read image" in err and "9.png" in err and "Traceback" not in err
    # the workers are gone when the command returns, not at some later garbage collection
    # (which waits 5 s per worker on queues it has already finalised)
    assert not multiprocessing.active_children()


# ---------------------------------------------------------------------------------- the API


def test_api_refuses_impossible_models():
    for options, error in [
        ({"resolution": 0}, ConfigError),
        ({"resolution": -1}, ConfigError),
        ({"in_channels": 0}, ConfigError),
        ({"dropout": 1.5}, ConfigError),
        ({"num_classes": 0}, ConfigError),
        ({"width_mult": 0}, ConfigError),
        ({"colour": "red"}, ConfigError),
    ]:
        with pytest.raises(error):
            mobilenets.create_model("mobilenet_v2", **options)
    with pytest.raises(UnknownModelError, match="torchvision.resnet18"):
        mobilenets.create_model("torchvision.resnet81")


def test_api_train_config_is_checked_before_anything_is_written(tmp_path):
    from mobilenets.train import TrainConfig, train

    base = {"model": "mobilenet_v1", "data_dir": CIFAR, "out": str(tmp_path / "run")}
    for change in [
        {"epochs": 0},
        {"batch_size": 0},
        {"lr": -1.0},
        {"label_smoothing": 2.0},
        {"workers": -1},
        {"device": "tpu"},
        {"precision": "fp64"},
        {"recipe": "fast"},
        {"epochs": 1.5},
        {"schedule": "linear"},
        {"decay_epochs": 0},
        {"compile_mode": "fast"},
    ]:
        with pytest.raises(ConfigError):
            train(TrainConfig(**base, **change), progress=False, log=lambda *_: None)
    assert not (tmp_path / "run").exists()


def test_api_inputs_of_the_wrong_kind():
    model = mobilenets.create_model("mobilenet_v2", width_mult=0.35)
    with pytest.raises(InputShapeError, match="float64"):
        model(torch.randn(1, 3, 64, 64, dtype=torch.float64))
    with pytest.raises(InputShapeError, match="uint8"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    assert mobilenets.profile(model, 96).input_size == (3, 96, 96)  # a side, as --resolution
    with pytest.raises(ConfigError, match="input_size"):
        mobilenets.profile(model, (3, 0, 64))
    from mobilenets.predict import default_data_info, predict_images

    with pytest.raises(ConfigError, match="top"):
        predict_images(model, [TENCH], default_data_info(model), top=0)


def test_api_weights_files_that_do_not_fit(files, tmp_path):
    v2 = mobilenets.create_model("mobilenet_v2", num_classes=10)
    with pytest.raises(WeightsError, match="this file is mobilenet_v1"):
        mobilenets.load_weights(v2, files / "v1.safetensors")
    with pytest.raises(WeightsError, match="is a folder"):
        mobilenets.load_weights(v2, files / "empty")
    with pytest.raises(WeightsError, match="JPEG") as caught:
        mobilenets.load_weights(v2, files / "photo.pth")
    assert "weights_only=False" not in str(caught.value)
    wide = mobilenets.create_model("mobilenet_v1", num_classes=10, cifar=True, width_mult=0.5)
    with pytest.raises(WeightsError, match=r"check width_mult \(the file was saved at 0.25\)") as caught:
        mobilenets.load_weights(wide, files / "v1.safetensors")
    assert "--width-mult" in caught.value.cli_message()
    with pytest.raises(WeightsError, match="load_weights"):
        mobilenets.save_weights(nn.Sequential(nn.Conv2d(3, 4, 3)), tmp_path / "plain.safetensors")
        mobilenets.load_model(tmp_path / "plain.safetensors")


def test_api_decouple_bad_input(shared_data):
    model = mobilenets.create_model("vgg16", cifar=True, width_mult=0.25, num_classes=10)
    with pytest.raises(ConfigError, match="features.0.conv"):
        mobilenets.decouple(model, rank=49)
    with pytest.raises(ConfigError, match="rank"):
        mobilenets.decouple(model, rank=0)
    with pytest.raises(DataError, match="not found"):
        mobilenets.decouple(model, rank=2, calibration="/nonexistent")
