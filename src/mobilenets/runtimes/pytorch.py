"""PyTorch itself as a runtime: the bench paths that run the model without an export.

* ``eager`` - the model as built, NCHW, ``torch.inference_mode``;
* ``channels_last`` - batch norm folded into the convs, NHWC memory format;
* ``compile`` - the ``channels_last`` model through ``torch.compile`` (needs a C++ compiler).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import Runtime, register_runtime


def _runner(model: Any, channels_last: bool) -> Callable[[Any], Any]:
    import torch

    def run(x):
        with torch.inference_mode():
            return model(x.contiguous(memory_format=torch.channels_last) if channels_last else x)

    return run


class PyTorchRuntime(Runtime):
    name, title = "pytorch", "PyTorch"
    precisions = ("eager", "channels_last", "compile")  # the three ways it runs the float model
    bench = {"eager": "eager", "channels_last": "channels_last", "compile": "compile"}
    reference_paths = ("eager",)

    def bench_runner(self, prepared: Any, precision: str, threads: int) -> Callable[[Any], Any]:
        if precision == "eager":
            return _runner(prepared.graph, channels_last=False)
        if precision == "channels_last":
            return _runner(prepared.folded(), channels_last=True)
        return _runner(prepared.compiled(), channels_last=True)

    def probe_file(self, prepared: Any, precision: str) -> Path | None:
        # compile is not measured: the probe's process would recompile for a minute
        return None if precision == "compile" else prepared.pickled(precision)

    def probe_runner(self, path: Path, precision: str, threads: int, shape: tuple[int, ...]) -> Callable[[], Any]:
        import torch

        torch.set_num_threads(threads)
        model = torch.load(path, weights_only=False).eval()
        return lambda x=torch.randn(*shape): _runner(model, precision == "channels_last")(x)


register_runtime(PyTorchRuntime())
