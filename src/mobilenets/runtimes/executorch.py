"""ExecuTorch with the XNNPACK delegate: the ``.pte`` a phone app loads (``export --format
executorch``), run here by ExecuTorch's Python runtime on XNNPACK's x86 kernels, batch 1 per
call.  Needs the ``[mobile]`` extra."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import Runtime, register_runtime


class ExecuTorchRuntime(Runtime):
    name, title, package, extra, suffix = "executorch", "ExecuTorch", "executorch", "mobile", ".pte"
    format = "executorch"
    precisions = ("fp32", "int8")
    # each export lowers for about a minute, so neither path is a bench default
    bench = {"executorch-xnnpack": "fp32", "executorch-xnnpack-int8": "int8"}

    export_options = ("calibration_method", "percentile")
    export_note = "lowering takes about a minute"

    def export(self, model: Any, path: Path, *, info: dict[str, Any], precision: str = "fp32",
               calibration: Any = None, check_input: Any = None, verify: bool = True,
               **options: Any) -> dict[str, Any]:  # fmt: skip
        """``options``: any of :attr:`export_options`, with ``export_executorch``'s defaults."""
        from ..export.executorch import export_executorch

        self.check(precision)
        report = export_executorch(model, path, info=info, int8=precision == "int8", calibration=calibration,
                                   check_input=check_input, **options)  # fmt: skip
        return {"pte": str(path), "precision": report.precision, "max_relative_error": report.max_relative_error,
                "message": report.summary()}  # fmt: skip

    def files(self, path: Path) -> list[Path]:
        from ..export.executorch import metadata_path

        return [path, metadata_path(path)]

    def load(self, path: Path, *, threads: int | None = None) -> Callable[..., Any]:
        from ..export.executorch import PteModel

        return PteModel(path)

    def bench_runner(self, prepared: Any, precision: str, threads: int) -> Callable[[Any], Any]:
        from executorch.extension.pybindings.portable_lib import _threadpool_get_thread_count

        program = self.load(prepared.exported(self, precision))
        # ExecuTorch's Python runtime sizes its XNNPACK thread pool once per process (one
        # thread per core); resizing it between runs deadlocked here, so other counts are
        # reported as not measured rather than mislabelled.
        pool = _threadpool_get_thread_count()
        if threads and threads != pool:
            raise ConfigError(f"ExecuTorch's thread pool has {pool} threads in this process; run --threads {pool}")
        return program

    def probe_file(self, prepared: Any, precision: str) -> Path | None:
        return prepared.exported(self, precision)

    def probe_runner(self, path: Path, precision: str, threads: int, shape: tuple[int, ...]) -> Callable[[], Any]:
        import torch
        from executorch.runtime import Runtime as ExecuTorch

        method = ExecuTorch.get().load_program(path).load_method("forward")
        x = torch.rand(1, *shape[1:])

        def run() -> None:
            for _ in range(shape[0]):  # batch 1 per call, as PteModel runs a batch
                method.execute([x])

        return run


register_runtime(ExecuTorchRuntime())
