"""What every runtime's exporter does alike: refuse what it cannot write, build the task's graph
and the image it is checked on, compare the runtime's output with PyTorch's, and the metadata a
file carries."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from ..errors import ConfigError

FP32_TOLERANCE = 1e-3  # max relative, as the ONNX check
# bf16 and int8 as the L2 norm of the difference over the output's: requantization and 8-bit
# mantissas round differently here and there, and steps add up over 50 layers (measured on
# MobileNetV2 with real images: bf16 0.03, int8 0.09-0.13); a broken kernel gives ~1 (uncorrelated)
LOW_PRECISION_TOLERANCE = {"bf16": 0.1, "int8": 0.3}


def prepare_export(runtime: Any, model: Any, path: Path, info: dict[str, Any], precision: str,
                   calibration: Any, check_input: Any) -> tuple[Any, dict[str, Any], list[str], Any]:  # fmt: skip
    """Refuse in one line what ``runtime`` cannot write (not installed, a precision this CPU lacks,
    the wrong suffix, int8 of a task without calibrated int8, int8 without images); then the
    graph to export (``Task.deployable``), its task metadata and output names, and the check image
    (batch 1): ``check_input``, for int8 a calibration image, else random."""
    import torch

    from ..export.onnx import deployable
    from ..tasks import task_of

    runtime.check(precision)
    if path.suffix != runtime.suffix:
        raise ConfigError(f"{runtime.title} writes {runtime.suffix} files, got {path}")
    task = task_of(info)
    if precision == "int8" and not task.quantizable:
        float_ones = " or ".join(p for p in runtime.precisions if p != "int8")
        raise ConfigError(f"{runtime.title} int8 is for classifiers here; {task.noun} exports in {float_ones}")
    if precision == "int8" and calibration is None:
        raise ConfigError("int8 needs calibration images", cli="--int8 needs --calibration DIR")
    resolution = int(info["resolution"])
    network, extra, outputs = deployable(model, info)
    network = copy.deepcopy(network).float().eval()
    if check_input is None:  # int8 is checked on an image like those it was calibrated on
        check_input = calibration if precision == "int8" else torch.rand(1, 3, resolution, resolution)
    return network, extra, outputs, check_input[:1].float()


def checked_error(runtime: Any, actual: Any, network: Any, example: Any, precision: str, *,
                  verify: bool = True) -> float:  # fmt: skip
    """How far ``runtime``'s outputs for ``example`` are from PyTorch's; an ExportError (nothing
    written) past the tolerance of ``precision`` unless ``verify`` is off (bench timing int8
    calibrated on noise, where only the latency is wanted)."""
    import torch

    from ..export.ort import ExportError, relative_error

    with torch.no_grad():
        expected = network(example)
    expected = expected if isinstance(expected, tuple) else (expected,)
    actual = actual if isinstance(actual, (tuple, list)) else (actual,)
    if precision in LOW_PRECISION_TOLERANCE:
        pairs = [(torch.as_tensor(a), e) for a, e in zip(actual, expected)]
        error = max(((a - e).norm() / e.norm().clamp(min=1e-12)).item() for a, e in pairs)
    else:
        error = max(relative_error(a, e) for a, e in zip(actual, expected))
    tolerance = LOW_PRECISION_TOLERANCE.get(precision, FP32_TOLERANCE)
    if verify and not error <= tolerance:  # also catches NaN
        raise ExportError(
            f"{runtime.title}'s output differs from PyTorch's by {error:.2e} relative (tolerance {tolerance:.0e}); "
            "the export is wrong and was not written"
        )
    return error


def file_metadata(file_format: str, model: Any, info: dict[str, Any], precision: str, outputs: list[str],
                  extra: dict[str, Any], error: float) -> dict[str, Any]:  # fmt: skip
    """What an exported file records: enough for ``predict``/``eval`` to prepare its input and name its outputs."""
    from ..export.onnx import class_metadata, preprocessing_metadata

    return {
        "format": file_format, "arch": getattr(model, "arch", None) or {}, **class_metadata(info),
        "precision": precision, "outputs": outputs, "max_relative_error": error,
        **preprocessing_metadata(info), **extra,
    }  # fmt: skip
