"""OpenVINO: Intel's CPU runtime, on AMD as well: ``export --format openvino`` writes its IR
(``model.xml`` with the graph and mobilenets' metadata, ``model.bin`` with the weights).

Precisions (all from one fp32 IR but int8):

* ``fp32`` - every operation in float32 (``INFERENCE_PRECISION_HINT f32``);
* ``bf16`` - float32 weights, computed in bfloat16 where the CPU has it (AVX-512 BF16 or AMX:
  OpenVINO's own default there).  Where it lacks it, refused in one line;
* ``int8`` - our calibrated QDQ ONNX model (``mobilenets.export.quantize_onnx``: per-channel
  weights, ranges searched against fp32's output; ``quantize``, a ``QuantizeOptions``, says how,
  as for the ONNX file) converted to IR, whose quantize/dequantize pairs OpenVINO runs as int8
  kernels (VNNI/AMX where the CPU has them).

The precision is recorded in the metadata, and the file is compiled with it when loaded.
Before the IR is written it is compiled and run on ``check_input`` and compared with PyTorch
(fp32: max relative error 1e-3, as the ONNX check; bf16 and int8: the L2 norm of the
difference over the output's, as the ExecuTorch int8 check).  Needs the ``[openvino]`` extra.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..datainfo import DataInfo
from ..errors import ConfigError
from ..extras import require
from ..validate import exported_batch
from . import Runtime, register_runtime
from .checks import checked_error, file_metadata, prepare_export

FORMAT = "mobilenets-openvino/1"
RT_INFO_KEY = "mobilenets"
HINTS = {"fp32": "f32", "bf16": "bf16"}  # int8: OpenVINO's default for the operations left in float


def _openvino():
    return require("openvino", "OpenVINO", "openvino")


@functools.cache
def _core() -> Any:
    """One OpenVINO Core for the process: a compiled model must not outlive the Core that
    compiled it (its plugin goes with it), so none is made per call."""
    return _openvino().Core()


def _compile(model: Any, precision: str, threads: int | None):
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    if precision in HINTS:
        config["INFERENCE_PRECISION_HINT"] = HINTS[precision]
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    return _core().compile_model(model, "CPU", config)


class OpenVinoNetwork:
    """A mobilenets OpenVINO IR, compiled for the CPU with the precision it records: call it on
    a preprocessed batch; its output, or a tuple of them (a detector's boxes and scores)."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        self.path = Path(path)
        info = DataInfo.from_record(read_ir_info(self.path), source=str(self.path))
        self.info = info.replace(in_channels=info.in_channels or 3)
        resolution = int(self.info["resolution"])
        self.input_shape = (self.info["in_channels"], resolution, resolution)
        self.compiled = _compile(str(self.path), self.info.get("precision", "fp32"), threads)
        self.request = self.compiled.create_infer_request()

    def eval(self) -> OpenVinoNetwork:
        """Already an inference graph (as a PyTorch model's ``eval()``, for code that calls it)."""
        return self

    def __call__(self, images: Any) -> Any:
        import torch

        images = exported_batch(images, self.input_shape, self.path.name)
        results = self.request.infer({0: images.numpy()})
        outputs = tuple(torch.from_numpy(results[port].copy()) for port in self.compiled.outputs)
        return outputs[0] if len(outputs) == 1 else outputs


def read_ir_info(path: Path) -> dict[str, Any]:
    """The metadata a mobilenets IR carries; one line for a missing, corrupt or foreign file."""
    core = _core()
    if not path.is_file():
        raise ConfigError(f"OpenVINO model not found: {path}")
    if not path.with_suffix(".bin").is_file():
        raise ConfigError(f"{path.with_suffix('.bin')} is missing: an OpenVINO IR keeps its weights there")
    try:
        model = core.read_model(str(path))
    except Exception as exc:  # OpenVINO raises its own RuntimeError subclasses on a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path} is not a loadable OpenVINO IR ({first[:200]})") from exc
    if not model.has_rt_info([RT_INFO_KEY]):
        raise ConfigError(
            f"{path} carries no mobilenets metadata: without the preprocessing and class names that "
            "'mobilenets export --format openvino' records, its input cannot be prepared safely"
        )
    return json.loads(model.get_rt_info([RT_INFO_KEY]).astype(str))


def _int8_graph(model: Any, info: dict[str, Any], calibration: Any, workdir: Path, quantize: Any = None) -> Path:
    """Our calibrated QDQ ONNX model, for OpenVINO to convert (see the module docstring)."""
    from ..export import export_onnx, quantize_onnx

    fp32, int8 = workdir / "fp32.onnx", workdir / "int8.onnx"
    export_onnx(model, fp32, info=info, dynamic_batch=True)
    quantize_onnx(fp32, int8, calibration, model=model, progress=True, options=quantize)
    return int8


class OpenVinoRuntime(Runtime):
    name, title, package, extra, suffix = "openvino", "OpenVINO", "openvino", "openvino", ".xml"
    format = "openvino"
    precisions = ("fp32", "bf16", "int8")
    bench = {"openvino": "fp32", "openvino-bf16": "bf16", "openvino-int8": "int8"}
    export_options = ("quantize",)  # its int8 is the ONNX int8 model: the same options

    def precision_problem(self, precision: str) -> str | None:
        problem = super().precision_problem(precision)
        if problem or precision != "bf16" or not self.available():
            return problem
        capabilities = _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if "BF16" not in capabilities:
            return ("bf16 needs a CPU with AVX-512 BF16 or AMX; this one has none "
                    f"(OpenVINO sees {', '.join(capabilities)}): use fp32 or int8")  # fmt: skip
        return None

    def export(self, model: Any, path: Path, *, info: dict[str, Any], precision: str = "fp32",
               calibration: Any = None, check_input: Any = None, qdq_onnx: Path | None = None,
               verify: bool = True, quantize: Any = None) -> dict[str, Any]:  # fmt: skip
        """See the module docstring; ``qdq_onnx``: an int8 ONNX model of ``model`` already made
        (bench's and ``export --format auto``'s, shared with ONNX Runtime's int8 path); ``verify``
        off writes the file whatever its error (bench's latency-only int8, calibrated on noise);
        ``quantize``: how the int8 ONNX model is made (``QuantizeOptions``; the defaults if None)."""
        import torch

        from ..export.quantize import recorded_options
        from ..files import atomic_write

        ov = _openvino()
        path = Path(path)
        network, extra, outputs, example = prepare_export(self, model, path, info, precision, calibration, check_input)
        shape = ov.PartialShape([-1, 3, int(info["resolution"]), int(info["resolution"])])  # any batch
        with tempfile.TemporaryDirectory(prefix="mobilenets-openvino-") as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on the model's input checks concern no user
            if precision == "int8":
                qdq = qdq_onnx or _int8_graph(model, info, calibration, Path(tmp), quantize)
                graph = ov.convert_model(str(qdq))
                extra = {**extra, **recorded_options(qdq)}  # how it was quantized, as the ONNX file says
            else:
                with torch.no_grad():
                    graph = ov.convert_model(network, example_input=example, input=[shape])
            results = _compile(graph, precision, None)(example.numpy())
            actual = [torch.from_numpy(results[i]) for i in range(len(outputs))]
            error = checked_error(self, actual, network, example, precision, verify=verify)
            metadata = file_metadata(FORMAT, model, info, precision, outputs, extra, error)
            graph.set_rt_info(json.dumps(metadata), [RT_INFO_KEY])
            staged = Path(tmp) / "model.xml"
            ov.save_model(graph, str(staged), compress_to_fp16=False)
            # the weights first: the new .xml never appears before its weights
            atomic_write(path.with_suffix(".bin"), lambda tmp: shutil.copyfile(staged.with_suffix(".bin"), tmp))
            atomic_write(path, lambda tmp: shutil.copyfile(staged, tmp))
        return {"xml": str(path), "bin": str(path.with_suffix(".bin")), "precision": precision,
                "max_relative_error": error}  # fmt: skip

    def files(self, path: Path) -> list[Path]:
        return [path, path.with_suffix(".bin")]

    def load(self, path: Path, *, threads: int | None = None) -> Callable[..., Any]:
        return OpenVinoNetwork(path, threads=threads)

    def bench_runner(self, prepared: Any, precision: str, threads: int) -> Callable[[Any], Any]:
        import torch

        network = OpenVinoNetwork(self.probe_file(prepared, precision), threads=threads)
        # the first output, as the request holds it (no copy; read before the next run)
        return lambda x: torch.from_numpy(network.request.infer({0: x.numpy()})[0])

    def probe_file(self, prepared: Any, precision: str) -> Path | None:
        if precision == "int8":  # the QDQ model ONNX Runtime's int8 path runs: quantized once
            return prepared.exported(self, precision, qdq_onnx=prepared.int8())
        return prepared.exported(self, precision)

    def probe_runner(self, path: Path, precision: str, threads: int, shape: tuple[int, ...]) -> Callable[[], Any]:
        import numpy as np

        compiled = _compile(str(path), precision, threads)
        request = compiled.create_infer_request()
        x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
        return lambda: request.infer({0: x})


register_runtime(OpenVinoRuntime())
