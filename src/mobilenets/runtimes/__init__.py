"""Runtimes as registered objects: each way a model runs on the CPU (PyTorch itself, ONNX
Runtime, ExecuTorch, OpenVINO, LiteRT) is one :class:`Runtime`, and export, ``predict``/``eval`` of an
exported file, and ``bench`` ask the registry instead of matching names.

A runtime says which file it writes and loads (``suffix``), the precisions and tasks it serves,
the extra that installs it, and its bench paths (``"onnxruntime-int8"`` -> precision
``"int8"``).  Its module implements ``export`` (model -> file, checked against PyTorch before it
is written), ``load`` (file -> a network called on preprocessed batches, with its data info) and
the bench hooks.  Adding a runtime is one module here (or, from another package, an entry point of
the group ``mobilenets.runtimes``) plus its tests: docs/architecture.md.

This module imports nothing heavy, so ``--help`` and the memory probe stay light.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = [
    "RUNTIMES_GROUP",
    "Runtime",
    "bench_path",
    "bench_paths",
    "error_line",
    "export_formats",
    "format_for_file",
    "get_runtime",
    "list_runtimes",
    "load_exported",
    "register_runtime",
    "runtime_for_file",
    "runtime_for_format",
]

RUNTIMES_GROUP = "mobilenets.runtimes"
ALL_TASKS = ("classification", "detection", "segmentation")


class Runtime:
    """One runtime.  Subclasses set the attributes and implement what they serve."""

    name = ""  # how options and files name it: --format NAME
    title = ""  # how messages name it: "ONNX Runtime"
    package = ""  # the Python package it needs ("" for none beyond torch)
    extra = ""  # the mobilenets extra that installs it
    suffix = ""  # the file it writes and loads ("" : it runs the PyTorch model itself)
    format = ""  # export --format NAME writes this runtime's file ("" : no exporter)
    precisions: tuple[str, ...] = ("fp32",)
    tasks: tuple[str, ...] = ALL_TASKS
    bench: Mapping[str, str] = {}  # bench path name -> precision
    # bench paths torchvision's model is also timed on (its own plain export where a file is needed)
    reference_paths: tuple[str, ...] = ()
    # keywords its export takes beyond the shared ones (ExecuTorch: how PT2E sets the int8 ranges)
    export_options: tuple[str, ...] = ()
    export_note = ""  # said before an export that takes long

    def available(self) -> bool:
        return not self.package or importlib.util.find_spec(self.package) is not None

    def require(self) -> None:
        """A one-line error naming the extra when the runtime's package is missing."""
        if not self.available():
            raise ConfigError(f"{self.title} is not installed: pip install 'mobilenets[{self.extra}]'")

    def precision_problem(self, precision: str) -> str | None:
        """Why ``precision`` cannot run here (this CPU lacks it), or None."""
        if precision not in self.precisions:
            return f"{self.title} runs {', '.join(self.precisions)}, not {precision}"
        return None

    def serves(self, task: Any, precision: str) -> bool:
        """Whether this runtime runs ``task``'s models (a ``Task``) at ``precision``: int8 is
        calibrated for classifiers only."""
        return task.name in self.tasks and (precision != "int8" or task.quantizable)

    def check(self, precision: str = "fp32", task: str | None = None) -> None:
        """Refuse, in one line, what this runtime cannot do here."""
        self.require()
        problem = self.precision_problem(precision)
        if problem:
            raise ConfigError(problem)
        if task is not None and task not in self.tasks:
            raise ConfigError(f"{self.title} does not serve {task} models (it serves {', '.join(self.tasks)})")

    # -- files ------------------------------------------------------------------------------
    def export(self, model: Any, path: Path, *, info: dict[str, Any], precision: str = "fp32",
               calibration: Any = None, check_input: Any = None, verify: bool = True,
               **options: Any) -> dict[str, Any]:  # fmt: skip
        """Write ``model`` as this runtime's file after checking it against PyTorch (``verify``
        off: written whatever the error, for timing int8 calibrated on noise); ``options`` are
        those of :attr:`export_options`. Returns what was written (paths, precision, error) for the
        export summary, and may add ``"message"``: the line that reports the export."""
        raise ConfigError(f"{self.title} has no exporter")

    def files(self, path: Path) -> list[Path]:
        """Every file an export at ``path`` consists of (weights, metadata beside it)."""
        return [path]

    def load(self, path: Path, *, threads: int | None = None) -> Callable[..., Any]:
        """The file's network: called on a preprocessed batch, its output(s) as tensors; ``.info``."""
        raise ConfigError(f"{self.title} loads no files")

    # -- bench ------------------------------------------------------------------------------
    def bench_runner(self, prepared: Any, precision: str, threads: int) -> Callable[[Any], Any]:
        """A callable timing runs on a batch: ``prepared`` (``runtimes.bench.PreparedModel``)
        holds the model and builds the files it needs once."""
        raise ConfigError(f"{self.title} has no bench path")

    def probe_file(self, prepared: Any, precision: str) -> Path | None:
        """The file the memory probe loads for this path, or None where memory is not measured."""
        return None

    def probe_runner(self, path: Path, precision: str, threads: int, shape: tuple[int, ...]) -> Callable[[], Any]:
        """For the memory probe's fresh process: load ``path`` importing only this runtime's
        package (as a deployment would) and return one run on a random batch of ``shape``."""
        raise ConfigError(f"{self.title} has no memory probe")


_RUNTIMES: dict[str, Runtime] = {}
# the built-in runtimes' modules, imported when the registry is first asked
_BUILT_IN = ("pytorch", "onnxruntime", "executorch", "openvino", "litert")
_loaded = False


def register_runtime(runtime: Runtime) -> Runtime:
    _RUNTIMES[runtime.name] = runtime
    return runtime


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in _BUILT_IN:
        importlib.import_module(f"{__name__}.{name}")
    from importlib.metadata import entry_points

    for point in entry_points(group=RUNTIMES_GROUP):
        if point.name not in _RUNTIMES:
            register_runtime(point.load())


def list_runtimes() -> list[Runtime]:
    _load_all()
    return list(_RUNTIMES.values())


def get_runtime(name: str) -> Runtime:
    _load_all()
    if name not in _RUNTIMES:
        raise ConfigError(f"no runtime {name!r} (runtimes: {', '.join(_RUNTIMES)})")
    return _RUNTIMES[name]


def runtime_for_format(name: str) -> Runtime:
    """The runtime ``export --format NAME`` writes for."""
    formats = {runtime.format: runtime for runtime in list_runtimes() if runtime.format}
    if name not in formats:
        raise ConfigError(f"unknown export format {name!r}; choose from {', '.join(formats)}")
    return formats[name]


def export_formats() -> list[str]:
    return [runtime.format for runtime in list_runtimes() if runtime.format]


def format_for_file(path: str | Path) -> str | None:
    """The export format that writes files like ``path`` (by its suffix: ``.xml`` openvino...), or None."""
    suffix = Path(path).suffix
    return next((runtime.format for runtime in list_runtimes() if runtime.format and runtime.suffix == suffix), None)


def bench_paths() -> dict[str, tuple[Runtime, str]]:
    """Every bench path name -> (its runtime, the precision it runs)."""
    return {path: (runtime, precision) for runtime in list_runtimes() for path, precision in runtime.bench.items()}


def bench_path(name: str) -> tuple[Runtime, str]:
    paths = bench_paths()
    if name not in paths:
        raise ConfigError(f"unknown backend {name!r}; choose from {', '.join(paths)}")
    return paths[name]


def error_line(exc: BaseException) -> str:
    """What a table's error column shows of a path that failed: its type and first line (here, not
    in bench, so that a timing process can say it without importing torch)."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:120]


def runtime_for_file(path: str | Path) -> Runtime:
    """The runtime that loads ``path``, from its suffix; one line when none does or the file is missing."""
    path = Path(path)
    suffixes = {runtime.suffix: runtime for runtime in list_runtimes() if runtime.suffix}
    if path.suffix not in suffixes:
        raise ConfigError(f"{path}: not an exported model ({', '.join(sorted(suffixes))} files are)")
    if not path.is_file():
        raise ConfigError(f"exported model not found: {path}")
    return suffixes[path.suffix]


def load_exported(path: str | Path, *, threads: int | None = None, runtime: Runtime | None = None) -> Any:
    """Any exported file, ready for its task's commands: a classifier's or segmenter's network
    takes batches; a detector's takes image lists and applies NMS after the graph.  ``runtime``
    (default: the one the file's suffix names) loads it."""
    from ..tasks import task_of

    runtime = runtime or runtime_for_file(path)
    runtime.require()
    network = runtime.load(Path(path), threads=threads)
    return task_of(network.info).exported_runner(network)
