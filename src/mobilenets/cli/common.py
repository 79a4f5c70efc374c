"""Options shared by every subcommand that builds a model from the registry.

Nothing here imports torch at module level: the parsers are built for every
command, ``--help`` included, and must answer before torch loads.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError
from ..validate import POSITIVE, POSITIVE_INT

MODEL_HELP = "model name: see 'mobilenets models' (torchvision classifiers as torchvision.NAME, e.g. torchvision.vgg16)"


def add_model_options(parser: argparse.ArgumentParser, *, positional: bool = True, required: bool = True) -> None:
    """``NAME --width-mult --resolution --num-classes --cifar --activation --weights``."""
    if positional:
        parser.add_argument("model", metavar="MODEL", nargs=None if required else "?", help=MODEL_HELP)
    else:
        parser.add_argument("--model", required=required, help=MODEL_HELP)
    parser.add_argument(
        "--width-mult",
        "-a",
        type=POSITIVE.argtype,
        default=1.0,
        metavar="ALPHA",
        help="width multiplier alpha: every layer gets alpha x its channels; cost ~ alpha^2 (default 1.0)",
    )
    parser.add_argument(
        "--resolution",
        "-r",
        type=POSITIVE_INT.argtype,
        default=None,
        metavar="R",
        help="input side in pixels, 224 x rho (224/192/160/128 published); cost ~ R^2 "
        "(default: the model's, 224, or 32 with --cifar)",
    )
    parser.add_argument(
        "--num-classes",
        type=POSITIVE_INT.argtype,
        default=None,
        help="classifier outputs (default: the model's, 1000; 91 for COCO detectors, background included)",
    )
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
    from ..models import create_model

    options: dict[str, Any] = {}
    if args.cifar:
        options["cifar"] = True
    if args.activation:
        options["activation"] = args.activation
    if args.resolution is not None:
        options["resolution"] = args.resolution
    model = create_model(
        args.model,
        num_classes=args.num_classes,
        width_mult=args.width_mult,
        weights=args.weights,
        **options,
    )
    return model, model.arch.get("resolution") or getattr(model, "default_resolution", 224)


def add_source_options(parser: argparse.ArgumentParser) -> None:
    """The options :func:`load_for_cli` reads: a checkpoint, or a model with its weights."""
    source = parser.add_argument_group("the network")
    source.add_argument("--checkpoint", help="a training run's best.pt/last.pt or a saved .safetensors")
    add_model_options(source, positional=False, required=False)


# Options that describe a model to build; with --checkpoint (or --onnx) the file says all of this.
_BUILD_OPTIONS = {
    "model": None,
    "width_mult": 1.0,
    "num_classes": None,
    "cifar": False,
    "activation": None,
    "weights": None,
}


def refuse_conflicts(args: argparse.Namespace, source: str) -> None:
    """Refuse model-building options given beside ``--checkpoint``/``--onnx`` (``source``):
    they would be silently ignored, since the file records its own architecture."""
    given = [
        "--" + k.replace("_", "-") for k, default in _BUILD_OPTIONS.items() if getattr(args, k, default) != default
    ]
    if given:
        raise ConfigError(f"{source} records the model; drop {', '.join(given)}")


def require_weights(args: argparse.Namespace, command: str) -> None:
    """Refuse ``--model`` without ``--weights`` where random weights would give a silently wrong
    answer (``--random-weights``, where a command has it, allows them)."""
    if args.model and not args.checkpoint and not args.weights and not getattr(args, "random_weights", False):
        from ..models import get_model_entry

        get_model_entry(args.model)  # an unknown name is answered as such first
        extra = " (or --random-weights to try the pipeline anyway)" if hasattr(args, "random_weights") else ""
        raise ConfigError(
            f"--model {args.model} without --weights would {command} with random weights; give --weights FILE{extra}"
        )


def add_random_weights_option(parser: argparse.ArgumentParser, command: str) -> None:
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help=f"allow --model without --weights (untrained: the {command} is noise; for trying the pipeline)",
    )


def load_for_cli(args: argparse.Namespace, command: str) -> tuple[Any, dict[str, Any]]:
    """The model a command works on and its data info (classes, preprocessing, resolution):
    ``--checkpoint`` (a run's checkpoint or a saved file), or ``--model`` with optional
    ``--weights``; ``--model torchvision.NAME`` builds torchvision's classifier."""
    from ..models import load_model_with_info
    from ..predict import default_data_info

    if getattr(args, "checkpoint", None):
        refuse_conflicts(args, "--checkpoint")
        # --resolution rebuilds the network at that side too: a detector resizes its input itself
        side = {"resolution": args.resolution} if getattr(args, "resolution", None) else {}
        model, info = load_model_with_info(args.checkpoint, **side)
        if side:
            info = info.replace(**side)
        return model.eval(), default_data_info(model, info)
    if not args.model:
        raise ConfigError(f"{command} needs --checkpoint, or --model (with --weights)")
    model, resolution = model_from_args(args)
    return model.eval(), default_data_info(model, {"resolution": resolution})


# options naming an exported file -> the runtime that loads it (None: the one its suffix names)
EXPORTED_OPTIONS = {"exported": None, "onnx": "onnxruntime", "pte": "executorch"}


def add_exported_options(parser: argparse.ArgumentParser) -> None:
    from ..runtimes import list_runtimes

    kinds = ", ".join(f"{runtime.suffix} ({runtime.title})" for runtime in list_runtimes() if runtime.suffix)
    parser.add_argument(
        "--exported",
        metavar="FILE",
        help=f"a file written by 'mobilenets export', run by the runtime its kind names: {kinds}; its class names "
        "and preprocessing travel with it",
    )
    parser.add_argument("--onnx", metavar="FILE", help="an .onnx export, run by ONNX Runtime (as --exported)")
    parser.add_argument("--pte", metavar="FILE", help="a .pte export, run by ExecuTorch (as --exported)")


def load_exported_for_cli(args: argparse.Namespace) -> tuple[Any, dict[str, Any]] | None:
    """The exported file ``--exported``/``--onnx``/``--pte`` names, loaded by its runtime and
    ready for its task's commands, with its data info; None when none is given."""
    given = [option for option in (*EXPORTED_OPTIONS, "checkpoint") if getattr(args, option, None)]
    if len(given) > 1:
        named = " and ".join("--" + option for option in given)
        raise ConfigError(
            f"give one of --exported, --onnx, --pte and --checkpoint, not {'both' if len(given) == 2 else 'all of'} {named}"
        )
    option = next((option for option in EXPORTED_OPTIONS if getattr(args, option, None)), None)
    if option is None:
        return None
    refuse_conflicts(args, "--" + option)
    if getattr(args, "resolution", None) is not None:
        raise ConfigError(f"--{option} records its input size; drop --resolution")
    from ..runtimes import get_runtime, load_exported

    runtime = EXPORTED_OPTIONS[option]
    model = load_exported(getattr(args, option), runtime=get_runtime(runtime) if runtime else None)
    return model, model.info


def model_source(args: argparse.Namespace) -> str:
    """How messages name the model a command works on: the file it came from, else "the model"."""
    named = (getattr(args, option, None) for option in (*EXPORTED_OPTIONS, "checkpoint", "weights"))
    return next((str(value) for value in named if value), "the model")
