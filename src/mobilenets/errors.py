"""Exceptions raised for bad user input.

They subclass the built-in exception a caller would naturally catch
(``ValueError``/``KeyError``) so existing ``except`` clauses keep working, while
the CLI can tell them apart from bugs and print the message without a traceback.
"""

from __future__ import annotations


class MobileNetsError(Exception):
    """Base class for every error this library raises on purpose."""


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
