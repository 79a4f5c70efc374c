"""The ONNX files of one export, as ``mobilenets export --format onnx`` writes them.

The fp32 graph always (beside the int8 file as ``<stem>.fp32.onnx`` when there is one); for int8
the choice the model makes: a quantization-aware checkpoint brings its own ranges and integer
weights (:func:`mobilenets.export.qat.export_int8`, no calibration), any other model is calibrated
after training (:func:`mobilenets.export.quantize.quantize_onnx` with :class:`QuantizeOptions`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..errors import ConfigError
from .onnx import MIN_OPSET, ExportReport, export_onnx
from .qat import convert_qat, export_int8, is_qat
from .quantize import QuantizeOptions, quantize_onnx

__all__ = ["OnnxFiles", "deploy_onnx"]


@dataclass
class OnnxFiles:
    fp32: Path
    int8: Path | None
    report: ExportReport  # the fp32 export's: its error against PyTorch
    from_qat: bool  # the int8 ranges were learned in quantization-aware training


def deploy_onnx(
    model: nn.Module,
    out: str | Path,
    *,
    info: Any,
    int8: bool = False,
    calibration: Tensor | None = None,
    options: QuantizeOptions | None = None,
    dynamic_batch: bool = False,
    opset: int = MIN_OPSET,
    log: Callable[[str], None] = lambda line: None,
) -> OnnxFiles:
    """Write ``model``'s ONNX file to ``out`` - int8 with ``int8`` - and say what was written,
    a line each, through ``log`` as each file lands."""
    out = Path(out)
    from_qat = is_qat(model)
    if int8 and calibration is None and not from_qat:
        raise ConfigError("int8 needs calibration images: preprocessed images whose activations set the ranges")
    options = (options or QuantizeOptions()).validate()  # refused before anything is written
    fp32_path = out.with_name(out.stem + ".fp32.onnx") if int8 else out
    exported = {"info": info, "dynamic_batch": dynamic_batch, "opset": opset}
    if int8 and from_qat:
        probe = calibration[:2] if calibration is not None else None
        report = export_int8(model, out, probe=probe, fp32_path=fp32_path, **exported)
        log(report.summary())
        log(f"wrote {out} (int8 QDQ from quantization-aware training: learned ranges and weights)")
        return OnnxFiles(fp32_path, out, report, from_qat)
    # A quantization-aware model exported in float is the float model it simulates (BN folded,
    # weights already on their int8 grids).
    report = export_onnx(convert_qat(model)[0] if from_qat else model, fp32_path, **exported)
    log(report.summary())
    if not int8:
        return OnnxFiles(fp32_path, None, report, from_qat)
    quantize_onnx(fp32_path, out, calibration, model=model, options=options, progress=True)
    steps = (
        f"{options.method} ranges, {options.weight_rounding} weight rounding"
        + (", bias correction" if options.bias_correction else "")
        + (", ranges searched against the output" if options.range_search else "")
    )
    log(f"wrote {out} (int8 QDQ, per-channel weights; {steps}; {len(calibration)} calibration images)")
    return OnnxFiles(fp32_path, out, report, from_qat)
