"""Exceptions raised for bad user input.

They subclass the built-in exception a caller would naturally catch
(``ValueError``/``KeyError``) so existing ``except`` clauses keep working, while
the CLI can tell them apart from bugs and print the message without a traceback.

A message may come in two wordings: the Python one (``str(exc)``, speaking of
arguments such as ``num_classes=``) and, where the advice differs, a command-line
one (``exc.cli``, speaking of options such as ``--num-classes``) that the CLI prints
instead.  This module imports nothing heavy: the CLI reads it before torch loads.
"""

from __future__ import annotations


class MobileNetsError(Exception):
    """Base class for every error this library raises on purpose.

    ``cli``: the same message worded for the command line, if it differs.
    """

    def __init__(self, *args: object, cli: str | None = None):
        super().__init__(*args)
        self.cli = cli

    def cli_message(self) -> str:
        """What the command line prints: the CLI wording if given, on one line."""
        return one_line(self.cli or str(self))


class ConfigError(MobileNetsError, ValueError):
    """An impossible model configuration (width, activation, resolution...)."""


class UnknownModelError(MobileNetsError, KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would otherwise print the message quoted
        return str(self.args[0]) if self.args else ""


class InputShapeError(MobileNetsError, ValueError):
    """A tensor that the model cannot take (wrong rank, channels or size)."""


class WeightsError(MobileNetsError, ValueError):
    """A weights file that does not fit the model it is loaded into."""


class DataError(MobileNetsError, ValueError):
    """Data that cannot be used as given (missing split, empty class, corrupt file)."""


def one_line(message: str) -> str:
    """``message`` without the traceback a DataLoader worker wraps around an error.

    An exception raised in a worker process reaches the main process re-created as
    ``type("Caught X in DataLoader worker process 0.\\nOriginal Traceback ...\\nX: msg")``;
    the user's problem is the last line's message.  Messages that list several items
    on indented lines (a weights mismatch) keep them.
    """
    if "Original Traceback" in message:
        last = message.rstrip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return message
