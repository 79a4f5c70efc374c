"""Options shared by every subcommand that builds a model from the registry."""

from __future__ import annotations

import argparse
from typing import Any

from ..models import create_model, list_models


def add_model_options(parser: argparse.ArgumentParser, *, positional: bool = True, required: bool = True) -> None:
    """``NAME --width-mult --resolution --num-classes --cifar --activation --weights``."""
    if positional:
        parser.add_argument("model", metavar="MODEL", help=f"model name: {', '.join(list_models())}")
    else:
        parser.add_argument("--model", required=required, help=f"model name: {', '.join(list_models())}")
    parser.add_argument(
        "--width-mult",
        "-a",
        type=float,
        default=1.0,
        metavar="ALPHA",
        help="width multiplier alpha: every layer gets alpha x its channels; cost ~ alpha^2 (default 1.0)",
    )
    parser.add_argument(
        "--resolution",
        "-r",
        type=int,
        default=None,
        metavar="R",
        help="input side in pixels, 224 x rho (224/192/160/128 published); cost ~ R^2 "
        "(default: the model's, 224, or 32 with --cifar)",
    )
    parser.add_argument("--num-classes", type=int, default=1000, help="classifier outputs (default 1000)")
    parser.add_argument(
        "--cifar",
        action="store_true",
        help="32x32 variant: stem and first stride-2 stage at stride 1 (total stride 8)",
    )
    parser.add_argument(
        "--activation",
        default=None,
        help="activation inside the blocks for V1/V2 (relu, relu6, hardswish...); default as published",
    )
    parser.add_argument(
        "--weights", default=None, help="weights file (safetensors or torch state dict, ours or torchvision's)"
    )


def model_from_args(args: argparse.Namespace) -> tuple[Any, int]:
    """Build the model the options describe; return it and the input side."""
    options: dict[str, Any] = {}
    if args.cifar:
        options["cifar"] = True
    if args.activation:
        options["activation"] = args.activation
    resolution = args.resolution or (32 if args.cifar else 224)
    options["resolution"] = resolution
    model = create_model(
        args.model,
        num_classes=args.num_classes,
        width_mult=args.width_mult,
        weights=args.weights,
        **options,
    )
    return model, resolution


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """The options :func:`load_for_cli` reads: a checkpoint, or a model with its weights."""
    source = parser.add_argument_group("the network")
    source.add_argument("--checkpoint", help="a training run's best.pt/last.pt or a saved .safetensors")
    add_model_options(source, positional=False, required=False)


def load_for_cli(args: argparse.Namespace, command: str) -> tuple[Any, dict[str, Any]]:
    """The model a command works on and its data info (classes, preprocessing, resolution):
    ``--checkpoint`` (a run's checkpoint or a saved file), or ``--model`` with optional
    ``--weights``; ``--model torchvision.NAME`` builds torchvision's classifier."""
    from ..errors import ConfigError
    from ..predict import default_data_info
    from ..weights import load_model_with_info, load_weights

    if getattr(args, "checkpoint", None):
        model, info = load_model_with_info(args.checkpoint)
        if getattr(args, "resolution", None):
            info["resolution"] = args.resolution
        return model.eval(), default_data_info(model, info)
    if not args.model:
        raise ConfigError(f"{command} needs --checkpoint, or --model (with --weights)")
    if args.model.startswith("torchvision."):
        import torchvision

        try:
            model = torchvision.models.get_model(args.model.split(".", 1)[1], num_classes=args.num_classes)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        if args.weights:
            load_weights(model, args.weights)
        model.arch = {}
        info = {"transforms": "imagenet", "resolution": args.resolution or 224}
        return model.eval(), default_data_info(model, info, num_classes=args.num_classes)
    model, resolution = model_from_args(args)
    return model.eval(), default_data_info(model, {"resolution": resolution})
