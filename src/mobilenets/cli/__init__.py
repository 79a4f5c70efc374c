"""The ``mobilenets`` command line.  Each subcommand lives in its own module and
adds itself through ``add_parser(subparsers)``; ``main`` dispatches.

The subcommand modules import torch (and everything heavy) inside their ``run``
functions only, so ``--help`` and a mistyped option answer at once.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from ..errors import MobileNetsError
from . import bench_cmd, choose_cmd, decouple_cmd, export_cmd, models_cmd, plot_cmd, profile_cmd, train_cmd

SUBCOMMANDS = [models_cmd, profile_cmd, train_cmd, plot_cmd, decouple_cmd, export_cmd, bench_cmd, choose_cmd]

__all__ = ["build_parser", "main"]


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: the problem and where to read more, not the
    whole usage block (which for ``train`` is a screenful that hides the message)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(
        prog="mobilenets",
        description=(
            "Efficient convolutional networks (MobileNet V1/V2/V3): build a model at the size "
            "your latency budget allows and measure what it costs."
        ),
        epilog="Run 'mobilenets COMMAND --help' for the options of each command.",
    )
    parser.add_argument("--version", action="version", version=f"mobilenets {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(subparsers)
    for command in subparsers.choices.values():  # so that a stray option is answered by its own command
        command.set_defaults(command_parser=command)
    return parser


def _one_line_warnings(command: str) -> None:
    """Our warnings (background images, skipped files...) as one line each, like the errors,
    not Python's two lines with the source of the call."""
    import warnings

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if "mobilenets" not in str(filename):
            return default(message, category, filename, lineno, file, line)
        print(f"mobilenets {command}: warning: {message}", file=file or sys.stderr)

    warnings.showwarning = show


def _release_frames(error: BaseException | None) -> None:
    """Drop the locals of the frames a failed command's error holds, so what they held is freed now.

    An error from a DataLoader worker holds torch's loader iterator in a reference cycle (the
    error's traceback holds the frame that re-raised it).  Left to a later garbage collection, the
    iterator shuts its worker processes down after their queues are finalised, and waits the 5 s
    join timeout per worker (a test suite or notebook that goes on after the error measured 10-20 s).
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:  # `mobilenets train --epoch 3`: the train command says so, and points to its own --help
            args.command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --help, --version, or an option argparse refused (message printed)
        return exc.code if isinstance(exc.code, int) else 1
    _one_line_warnings(args.command)
    try:
        return int(args.run(args) or 0)
    except MobileNetsError as exc:
        # Errors about the user's input: the message says what to change; a
        # traceback would only hide it.
        print(f"mobilenets {args.command}: error: {exc.cli_message()}", file=sys.stderr)
        _release_frames(exc)
        return 2
    except BrokenPipeError:  # e.g. `mobilenets profile ... | head`
        return 0
    except KeyboardInterrupt as exc:
        print(f"mobilenets {args.command}: interrupted", file=sys.stderr)
        _release_frames(exc)
        return 130


if __name__ == "__main__":
    sys.exit(main())
