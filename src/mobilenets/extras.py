"""Optional dependencies, imported when a feature needs them.

Each extra of ``pyproject.toml`` (``onnx``, ``openvino``, ``litert``, ``mobile``, ``decompose``,
``detection``...) installs the packages one family of features uses; the features import them
on first use through :func:`require`, so ``import mobilenets`` stays light and a missing
package is one line that names the extra to install, not a traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import ConfigError, MobileNetsError

__all__ = ["require"]


def require(
    module: str, needed_for: str, extra: str | None, *, error: type[MobileNetsError] = ConfigError
) -> ModuleType:
    """``import module``, or ``error("NEEDED_FOR needs PACKAGE: pip install 'mobilenets[EXTRA]'")``
    (``extra`` None: a package no extra installs, named for pip directly)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = module.split(".")[0]
        install = f"'mobilenets[{extra}]'" if extra else package
        raise error(f"{needed_for} needs {package}: pip install {install}") from exc
