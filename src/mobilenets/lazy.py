"""Names a package exports but imports on first use (PEP 562), so that ``import mobilenets``
and the command line's ``--help`` do not load torch; the one helper every package uses."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Collection, Mapping
from typing import Any

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, table: Mapping[str, str], submodules: Collection[str] = ()) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``name`` comes from its submodule ``table[name]``
    (and is kept in the package from then on); a name in ``submodules`` is that submodule."""

    def __getattr__(name: str) -> Any:
        if name in submodules:
            return importlib.import_module(f".{name}", package)
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{table[name]}", package), name)
        # kept, also where a submodule of the same name was bound as an attribute by its import
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
