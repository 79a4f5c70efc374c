"""``mobilenets models``: list the registry."""

from __future__ import annotations

import argparse
import inspect


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list the available models",
        description="List the models create_model() and every command accept.",
    )
    parser.add_argument(
        "--costs", action="store_true", help="add mult-adds and params at width 1.0 and each model's input size"
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="show each model's options and defaults")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .._table import format_table, human
    from ..cost import profile
    from ..models import create_model, get_model_entry, list_models
    from ..tasks import get_task

    by_task: dict[str, list[str]] = {}
    for name in list_models():
        by_task.setdefault(get_model_entry(name).task, []).append(name)
    for number, (task, names) in enumerate(by_task.items()):
        rows = []
        for name in names:
            entry = get_model_entry(name)
            row = [name, entry.summary]
            if args.costs:
                side = entry.default_resolution
                cost = profile(create_model(name), (3, side, side))
                row += [f"{side}", human(cost.mult_adds), human(cost.params)]
            rows.append(row)
        headers = ["model", "description"] + (["input", "mult-adds", "params"] if args.costs else [])
        print(("\n" if number else "") + get_task(task).title + ":")
        print(format_table(headers, rows, align="ll" + "rrr" * args.costs))
    if args.verbose:
        for name in list_models():
            options = get_model_entry(name).options
            shown = ", ".join(
                f"{k}={p.default!r}" for k, p in options.items() if p.default is not inspect.Parameter.empty
            )
            print(f"\n{name}: {shown}")
    return 0
