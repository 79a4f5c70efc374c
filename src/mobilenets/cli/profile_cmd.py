"""``mobilenets profile``: mult-adds, parameters and activation memory of a model."""

from __future__ import annotations

import argparse
import json

from ..errors import ConfigError
from .common import add_model_options, load_for_cli, model_from_args


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "profile",
        help="count mult-adds, parameters and activation memory, per layer and in total",
        description=(
            "Count what a model costs for one image: mult-adds (multiply-accumulates of convs and "
            "fully connected layers), parameters (batch norm included) and activation memory, per "
            "layer and in total, with the conventions of the MobileNet papers."
        ),
        epilog="Examples:\n  mobilenets profile mobilenet_v1 --width-mult 0.5 --resolution 160 --by-type\n"
        "  mobilenets profile --checkpoint runs/quick/best.pt     # a trained or decoupled model, as saved",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_options(parser, required=False)
    parser.add_argument(
        "--checkpoint", help="a run's best.pt/last.pt or a saved file (decoupled ones too): profile what it holds"
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    output.add_argument(
        "--by-type",
        action="store_true",
        help="share of mult-adds and parameters by layer type (MobileNetV1's Table 2)",
    )
    output.add_argument("--summary", action="store_true", help="totals only, no per-layer rows")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..cost import profile

    if args.checkpoint:
        model, info = load_for_cli(args, "profile")
        resolution = int(info["resolution"])
    elif args.model:
        model, resolution = model_from_args(args)
    else:
        raise ConfigError("profile needs a MODEL name or --checkpoint FILE")
    result = profile(model, (getattr(model, "in_channels", 3), resolution, resolution))
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    elif args.by_type:
        print(result.table(layers=False))
        print()
        print(result.by_type_table())
    else:
        print(result.table(layers=not args.summary))
    return 0
