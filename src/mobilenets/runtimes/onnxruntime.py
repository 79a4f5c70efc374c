"""ONNX Runtime: ``mobilenets export`` (``.onnx``, BN folded, checked against PyTorch;
int8 as calibrated QDQ) run by its CPU execution provider.  Needs the ``[onnx]`` extra."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import Runtime, register_runtime


class OnnxRuntime(Runtime):
    name, title, package, extra, suffix = "onnxruntime", "ONNX Runtime", "onnxruntime", "onnx", ".onnx"
    format = "onnx"
    precisions = ("fp32", "int8")
    bench = {"onnxruntime": "fp32", "onnxruntime-int8": "int8"}
    reference_paths = ("onnxruntime",)

    def export(self, model: Any, path: Path, *, info: dict[str, Any], precision: str = "fp32",
               calibration: Any = None, check_input: Any = None, verify: bool = True) -> dict[str, Any]:  # fmt: skip
        """fp32: :func:`~mobilenets.export.export_onnx`; int8: that file quantized with the
        default post-training recipe (``export --int8`` offers every option)."""
        from ..export import export_onnx, quantize_onnx

        self.check(precision)
        path = Path(path)
        fp32 = path.with_name(path.stem + ".fp32.onnx") if precision == "int8" else path
        report = export_onnx(model, fp32, info=info)
        written = {"fp32": str(fp32), "max_relative_error": report.max_relative_error, "precision": precision}
        if precision == "int8":
            quantize_onnx(fp32, path, calibration, model=model, progress=True)
            written["int8"] = str(path)
        return written

    def load(self, path: Path, *, threads: int | None = None) -> Callable[..., Any]:
        from ..export import OnnxClassifier

        return OnnxClassifier(path, threads=threads)

    def bench_runner(self, prepared: Any, precision: str, threads: int) -> Callable[[Any], Any]:
        import torch

        from ..export.ort import ort_session

        session = ort_session(self.probe_file(prepared, precision), threads)
        return lambda x: torch.from_numpy(session.run(None, {"image": x.numpy()})[0])  # the first output

    def probe_file(self, prepared: Any, precision: str) -> Path | None:
        if precision == "int8":
            return prepared.int8()
        return prepared.torchvision_onnx() if prepared.reference else prepared.onnx()

    def probe_runner(self, path: Path, precision: str, threads: int, shape: tuple[int, ...]) -> Callable[[], Any]:
        import numpy as np
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        return lambda: session.run(None, {"image": x})


register_runtime(OnnxRuntime())
