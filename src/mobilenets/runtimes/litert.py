"""LiteRT (TensorFlow Lite): the ``.tflite`` most Android apps load, converted straight from
PyTorch by ``litert-torch`` (no TensorFlow) and run here by ``ai-edge-litert``'s interpreter with
its XNNPACK delegate, batch 1 per call.

* ``fp32`` - the float graph;
* ``int8`` - PT2E quantization with litert-torch's symmetric quantizer (per-channel int8 weights,
  int8 activations observed on calibration images, their ranges cut at the 99.99th percentile by
  default: ``calibration_method``/``percentile``, :mod:`mobilenets.export.pt2e_ranges`); the file
  takes and returns int8, which :class:`LiteRtNetwork` quantizes and dequantizes with the scales
  the file records; ``distill_steps`` N > 0 then fits the int8 weights to the float network's
  outputs on the calibration images before conversion (:mod:`mobilenets.export.pt2e_distill`).

Before the file is written the interpreter runs it on ``check_input`` and the output is
compared with PyTorch's (fp32: max relative error 1e-3; int8: the L2 norm of the difference over
the output's, bound 0.3 as for ExecuTorch and OpenVINO).  A ``.tflite`` has no free-form
metadata field that every reader keeps, so the classes and preprocessing go in
``<file>.tflite.json`` beside it, as for ExecuTorch's ``.pte``.  Needs the ``[litert]`` extra.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..datainfo import DataInfo
from ..errors import ConfigError
from ..extras import require
from ..validate import NON_NEGATIVE_INT, exported_batch
from . import Runtime, register_runtime
from .checks import checked_error, file_metadata, prepare_export

FORMAT = "mobilenets-litert/1"


def sidecar_path(path: Path) -> Path:
    """Where a ``.tflite``'s metadata sits: ``model.tflite`` -> ``model.tflite.json``."""
    return path.with_name(path.name + ".json")


def _interpreter(path: Path, threads: int | None):
    Interpreter = require("ai_edge_litert.interpreter", "LiteRT", "litert").Interpreter
    from ..export.executorch import quiet_native_logs

    try:
        with quiet_native_logs():
            interpreter = Interpreter(model_path=str(path), num_threads=threads or None)
            interpreter.allocate_tensors()
    except Exception as exc:  # the interpreter raises ValueError/RuntimeError on a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path} is not a loadable LiteRT model ({first[:200]})") from exc
    return interpreter


class LiteRtNetwork:
    """A mobilenets ``.tflite`` in LiteRT's interpreter: call it on a preprocessed batch (run an
    image at a time: the file takes batch 1); its output, or a tuple of them (a detector's boxes
    and scores).  int8 files are fed and read through their recorded scales."""

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"LiteRT model not found: {self.path}")
        sidecar = sidecar_path(self.path)
        if not sidecar.is_file():
            raise ConfigError(f"{sidecar} is missing: a .tflite carries no class names or preprocessing, and "
                              "'mobilenets export --format litert' writes them there")  # fmt: skip
        try:
            info = DataInfo.from_record(json.loads(sidecar.read_text()), source=str(sidecar))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{sidecar} is not valid JSON ({exc})") from exc
        self.interpreter = _interpreter(self.path, threads)
        self.input = self.interpreter.get_input_details()[0]
        # the graph's outputs in the order it returns them (output_0, output_1, ...)
        self.outputs = sorted(self.interpreter.get_output_details(), key=lambda d: d["name"])
        if len(self.outputs) > 1:
            order = self.interpreter.get_signature_runner().get_output_details()
            index = {detail["index"]: name for name, detail in order.items()}
            self.outputs.sort(key=lambda d: int(index.get(d["index"], "output_0").rpartition("_")[2] or 0))
        resolution = int(info["resolution"])
        self.info = info.replace(in_channels=info.in_channels or 3)
        self.input_shape = (self.info["in_channels"], resolution, resolution)

    def eval(self) -> LiteRtNetwork:
        """Already an inference graph (as a PyTorch model's ``eval()``, for code that calls it)."""
        return self

    def run_one(self, image: Any) -> list[Any]:
        """The graph's outputs (numpy, float) for one image (1, C, H, W) as a float numpy array."""
        import numpy as np

        scale, zero = self.input["quantization"]
        if self.input["dtype"] != np.float32:
            image = np.clip(np.round(image / scale) + zero, -128, 127).astype(self.input["dtype"])
        self.interpreter.set_tensor(self.input["index"], image)
        self.interpreter.invoke()
        outputs = []
        for detail in self.outputs:
            value = self.interpreter.get_tensor(detail["index"])
            if detail["dtype"] != np.float32:
                scale, zero = detail["quantization"]
                value = (value.astype(np.float32) - zero) * scale
            outputs.append(value)
        return outputs

    def __call__(self, images: Any) -> Any:
        import numpy as np
        import torch

        images = exported_batch(images, self.input_shape, self.path.name)
        parts = [self.run_one(image[None].contiguous().numpy()) for image in images]
        outputs = tuple(torch.from_numpy(np.concatenate([p[i] for p in parts])) for i in range(len(parts[0])))
        return outputs[0] if len(outputs) == 1 else outputs


def _converter():
    from ..export.executorch import quiet_native_logs

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), quiet_native_logs():
        warnings.simplefilter("ignore")  # its import notes concern no user
        return require("litert_torch", "LiteRT export", "litert")


def _quantized(network: Any, example: Any, calibration: Any, method: str = "percentile", percentile: float = 99.99,
               distill_steps: int = 0):  # fmt: skip
    """PT2E int8 with litert-torch's quantizer, ranges observed on ``calibration`` (an image at a
    time, the batch the file takes) and chosen by ``method``, then, for ``distill_steps`` > 0, the
    weights fitted to the float network (:mod:`mobilenets.export.pt2e_distill`): the converted
    module, the quantizer the converter needs, and what the fit reports."""
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from ..export.pt2e_distill import distilled_int8, fake_quantized
    from ..export.pt2e_ranges import with_activation_ranges

    config = with_activation_ranges(
        get_symmetric_quantization_config(is_per_channel=True), method, percentile, "litert"
    )
    if distill_steps:
        quantizer = PT2EQuantizer().set_global(fake_quantized(config))
        converted, report = distilled_int8(network, calibration, quantizer, distill_steps)
        return converted, quantizer, report
    quantizer = PT2EQuantizer().set_global(config)
    prepared = prepare_pt2e(torch.export.export(network, (example,)).module(), quantizer)
    with torch.no_grad():
        for image in calibration:
            prepared(image[None].float())
    return convert_pt2e(prepared, fold_quantize=False), quantizer, {}


class LiteRtRuntime(Runtime):
    name, title, package, extra, suffix = "litert", "LiteRT", "ai_edge_litert", "litert", ".tflite"
    format = "litert"
    precisions = ("fp32", "int8")
    bench = {"litert": "fp32", "litert-int8": "int8"}
    export_options = ("calibration_method", "percentile", "distill_steps")  # how PT2E makes the int8 network

    def export(self, model: Any, path: Path, *, info: dict[str, Any], precision: str = "fp32",
               calibration: Any = None, check_input: Any = None, verify: bool = True,
               calibration_method: str = "percentile", percentile: float = 99.99,
               distill_steps: int = 0) -> dict[str, Any]:  # fmt: skip
        """See the module docstring; ``verify`` off writes the file whatever its error (bench's
        latency-only int8, calibrated on noise)."""
        from ..export.executorch import quiet_native_logs
        from ..export.onnx import preprocessing_metadata
        from ..export.quantize import calibration_label
        from ..files import atomic_write

        path = Path(path)
        NON_NEGATIVE_INT.check(distill_steps, "distill_steps")
        if distill_steps and precision != "int8":
            raise ConfigError("distill_steps fits int8 weights to fp32: it needs precision int8",
                              cli="--distill-steps needs --int8 (it fits the int8 weights to fp32's outputs)")  # fmt: skip
        network, extra, outputs, example = prepare_export(self, model, path, info, precision, calibration, check_input)
        litert_torch = _converter()
        with tempfile.TemporaryDirectory(prefix="mobilenets-litert-") as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.export's and the converter's notes on their internals
            staged = Path(tmp) / "model.tflite"
            if precision == "int8":  # outside the quiet block: the fit's progress bar is for the user
                converted, quantizer, fit = _quantized(network, example, calibration, method=calibration_method,
                                                       percentile=percentile, distill_steps=distill_steps)  # fmt: skip
            with quiet_native_logs(), contextlib.redirect_stdout(io.StringIO()):
                if precision == "int8":
                    config = litert_torch.quantize.quant_config.QuantConfig(pt2e_quantizer=quantizer)
                    edge = litert_torch.convert(converted, (example,), quant_config=config)
                else:
                    edge = litert_torch.convert(network, (example,))
                edge.export(str(staged))
            sidecar_path(staged).write_text(json.dumps({**preprocessing_metadata(info), **extra}))
            error = checked_error(self, LiteRtNetwork(staged)(example), network, example, precision, verify=verify)
            if precision == "int8":  # how its ranges were set, as an ONNX int8 file records it
                extra = {**extra, "calibration": calibration_label(calibration_method, percentile)}
                if distill_steps:
                    extra = {**extra, "distill_steps": distill_steps, **fit}
            metadata = file_metadata(FORMAT, model, info, precision, outputs, extra, error)
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda out: Path(out).write_bytes(staged.read_bytes()))
            atomic_write(sidecar_path(path), lambda out: Path(out).write_text(json.dumps(metadata, indent=2)))
        return {"tflite": str(path), "precision": precision, "max_relative_error": error}

    def files(self, path: Path) -> list[Path]:
        return [path, sidecar_path(path)]

    def load(self, path: Path, *, threads: int | None = None) -> Callable[..., Any]:
        return LiteRtNetwork(path, threads=threads)

    def bench_runner(self, prepared: Any, precision: str, threads: int) -> Callable[[Any], Any]:
        return LiteRtNetwork(prepared.exported(self, precision), threads=threads)

    def probe_file(self, prepared: Any, precision: str) -> Path | None:
        return prepared.exported(self, precision)

    def probe_runner(self, path: Path, precision: str, threads: int, shape: tuple[int, ...]) -> Callable[[], Any]:
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]
        x = np.zeros(detail["shape"], dtype=detail["dtype"])

        def run() -> None:
            for _ in range(shape[0]):  # batch 1 per call, as LiteRtNetwork runs a batch
                interpreter.set_tensor(detail["index"], x)
                interpreter.invoke()

        return run


register_runtime(LiteRtRuntime())
