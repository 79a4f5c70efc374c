"""``mobilenets train`` and ``mobilenets eval``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .._table import human
from ..data import build_datasets
from ..train import RECIPES, TrainConfig, evaluate, train
from ..train.loop import _loader
from ..weights import load_model


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    recipes = "\n".join(f"  {r.name:12s} {r.description}" for r in RECIPES.values())
    parser = subparsers.add_parser(
        "train",
        help="train a model on CIFAR-10/100 or an ImageFolder tree with a paper's recipe",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Train a model and evaluate it after every epoch. The run directory (--out) holds\n"
            "config.json, last.pt / best.pt checkpoints (written atomically) and metrics.jsonl;\n"
            "re-running the same command in the same --out resumes where it stopped.\n\n"
            f"Recipes:\n{recipes}"
        ),
        epilog=(
            "Example (a few CPU minutes on the shared CIFAR-10 copy):\n"
            "  mobilenets train --model mobilenet_v2 --width-mult 0.5 --data-dir ../shared/data/cifar10 \\\n"
            "      --train-subset 5000 --val-subset 1000 --epochs 3 --out runs/quick"
        ),
    )
    parser.add_argument("--model", required=True, help="model name (see 'mobilenets models')")
    parser.add_argument("--data-dir", required=True, help="ImageFolder tree (train/ + val/ or test/) or CIFAR root")
    parser.add_argument("--out", required=True, help="run directory; an existing run there is resumed")
    parser.add_argument(
        "--recipe", default="cifar10", choices=sorted(RECIPES), help="training recipe (default cifar10)"
    )
    parser.add_argument(
        "--dataset", choices=["cifar10", "cifar100"], help="use torchvision's CIFAR files in --data-dir"
    )
    parser.add_argument("--download", action="store_true", help="let torchvision download CIFAR into --data-dir")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    parser.add_argument("--lr", type=float, help="override the recipe's learning rate")
    parser.add_argument("--weight-decay", type=float, help="override the recipe's weight decay")
    parser.add_argument("--width-mult", type=float, default=1.0, help="width multiplier alpha (default 1.0)")
    parser.add_argument("--resolution", type=int, help="input side (default 32 for CIFAR recipes, else 224)")
    parser.add_argument("--activation", help="relu or relu6 inside the blocks (V1/V2 ablation)")
    parser.add_argument("--train-subset", type=int, help="train on a fixed class-balanced slice of N images")
    parser.add_argument("--val-subset", type=int, help="validate on a fixed class-balanced slice of N images")
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(run=run_train)

    ev = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint: top-1/top-5, loss, per-class accuracy, images/s",
        description="Evaluate a checkpoint (last.pt/best.pt of a run, or saved weights) on a dataset's val/test split.",
    )
    ev.add_argument("--checkpoint", required=True, help="a run's last.pt/best.pt or a .safetensors file")
    ev.add_argument("--data-dir", required=True)
    ev.add_argument("--dataset", choices=["cifar10", "cifar100"])
    ev.add_argument("--val-subset", type=int)
    ev.add_argument("--batch-size", type=int, default=256)
    ev.add_argument("--workers", type=int, default=2)
    ev.add_argument("--json", action="store_true", help="print the metrics as JSON")
    ev.set_defaults(run=run_eval)


def run_train(args: argparse.Namespace) -> int:
    config = TrainConfig(
        model=args.model,
        data_dir=args.data_dir,
        out=args.out,
        recipe=args.recipe,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        width_mult=args.width_mult,
        resolution=args.resolution,
        activation=args.activation,
        dataset=args.dataset,
        download=args.download,
        train_subset=args.train_subset,
        val_subset=args.val_subset,
        workers=args.workers,
        seed=args.seed,
        device=args.device,
    )
    s = train(config, progress=not args.no_progress)
    print(
        f"\n{s['model']} after {s['epochs']} epochs: top-1 {100 * s['top1']:.2f}% (best {100 * s['best_top1']:.2f}%), "
        f"top-5 {100 * s['top5']:.2f}%\n{human(s['mult_adds'])} mult-adds, {human(s['params'])} params, "
        f"{s['latency_ms_batch1_cpu']:.1f} ms per image on this CPU (batch 1)\nrun directory: {s['out']}"
    )
    return 0


def run_eval(args: argparse.Namespace) -> int:
    path = Path(args.checkpoint)
    state = torch.load(path, map_location="cpu", weights_only=True) if path.suffix != ".safetensors" else None
    model = load_model(path)
    if state is not None and "resolved" in state:
        style = state["resolved"]["recipe"]["transforms"]
        resolution = state["resolved"]["resolution"]
    else:
        style, resolution = ("cifar", 32) if model.arch.get("cifar") else ("imagenet", model.default_resolution)
    _, val_set, classes = build_datasets(
        args.data_dir, style=style, resolution=resolution, dataset=args.dataset, val_subset=args.val_subset
    )
    if len(classes) != model.arch["num_classes"]:
        from ..data import DataError

        raise DataError(
            f"{args.data_dir} has {len(classes)} classes but the checkpoint has {model.arch['num_classes']}"
        )
    metrics = evaluate(model, _loader(val_set, args.batch_size, shuffle=False, workers=args.workers), len(classes))
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        print(
            f"top-1 {100 * metrics['top1']:.2f}%  top-5 {100 * metrics['top5']:.2f}%  loss {metrics['loss']:.4f}  "
            f"{metrics['images_per_s']:.0f} images/s  ({metrics['samples']} images)"
        )
        for name, acc in zip(classes, metrics["per_class_top1"]):
            print(f"  {name:20s} {100 * acc:6.2f}%")
    return 0
