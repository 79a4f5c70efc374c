"""int8 post-training static quantization of an exported model (ONNX Runtime, QDQ).

Weights are int8 per output channel; activations are uint8 with ranges observed on
calibration images.  uint8 activations matter on x86 CPUs without VNNI: ONNX
Runtime's u8s8 kernels are the fast path there, while s8s8 ran slower than fp32
on this project's 2-core machine.

MobileNets are hard to quantize per tensor: depthwise filters and ReLU6 ranges
vary a lot between channels.  The calibration method is the first lever:

* ``minmax`` - the observed range; one outlier widens every step;
* ``percentile`` - clip the range at the 99.999th percentile of the histogram;
* ``entropy`` - the range minimising the KL divergence of the quantized histogram.

The second lever is the weights' range on x86 CPUs without VNNI: their u8 x s8
kernels add pairs of products in 16 bits, which saturates with full 8-bit
weights.  ``reduce_range`` (on by default there) quantizes weights to 7 bits,
which measured here lifted torchvision's MobileNetV2 from 74.0% to 80.7% top-1
(MinMax) on imagenet-sample against 83.8% in fp32.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

from torch import Tensor

from ..errors import ConfigError
from ..weights import atomic_write
from .onnx import _onnx, _set_metadata, read_metadata

__all__ = ["CALIBRATION_METHODS", "quantize_onnx"]

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")


def quantize_onnx(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: Tensor,
    *,
    method: str = "percentile",
    per_channel: bool = True,
    reduce_range: bool | None = None,
) -> Path:
    """Write an int8 (QDQ) copy of the fp32 export ``fp32_path`` to ``out_path``.

    ``calibration`` is a batch of preprocessed images (e.g. from
    :func:`mobilenets.data.calibration_images`); a few hundred are plenty.
    The metadata (class names, preprocessing) is carried over, marked int8.
    ``reduce_range=None`` uses 7-bit weights where the CPU lacks VNNI (see above).
    """
    onnx, _ = _onnx()
    from onnxruntime.quantization import CalibrationDataReader

    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    if calibration.dim() != 4 or calibration.shape[0] == 0:
        raise ConfigError(
            f"calibration must be a non-empty batch of images (N, C, H, W), got {tuple(calibration.shape)}"
        )
    metadata = read_metadata(fp32_path)
    if metadata.get("precision") != "fp32":
        raise ConfigError(f"{fp32_path} is already quantized; quantize the fp32 export")
    batch = None if metadata.get("dynamic_batch") else 1
    reduce_range = needs_reduced_range() if reduce_range is None else reduce_range
    out_path = Path(out_path)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches: Iterator[Tensor] = iter(calibration.split(batch or 16))

        def get_next(self):
            images = next(self.batches, None)
            return None if images is None else {"image": images.float().numpy()}

    try:
        return _quantize(onnx, fp32_path, out_path, Reader, metadata, method, per_channel, reduce_range)
    except ValueError as exc:
        # ONNX Runtime's histogram calibration fails on tensors whose observed range is
        # (nearly) a single value, e.g. saturated squeeze-excite gates.
        if method == "minmax" or "bins" not in str(exc):
            raise
        warnings.warn(f"{method} calibration failed ({exc}); using minmax instead", stacklevel=2)
        return _quantize(onnx, fp32_path, out_path, Reader, metadata, "minmax", per_channel, reduce_range)


def _quantize(onnx, fp32_path, out_path, Reader, metadata, method, per_channel, reduce_range) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    prepared = out_path.with_name(f".{out_path.name}.pre.tmp")
    quantized = out_path.with_name(f".{out_path.name}.q.tmp")
    try:
        # Shape inference and graph cleanup first, as ONNX Runtime recommends for static quantization.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(quantized),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method={
                "minmax": CalibrationMethod.MinMax,
                "percentile": CalibrationMethod.Percentile,
                "entropy": CalibrationMethod.Entropy,
            }[method],
            reduce_range=reduce_range,
            extra_options={"CalibMovingAverage": False},
        )
        graph = onnx.load(str(quantized))
        details = {"calibration": method, "per_channel": per_channel, "reduce_range": reduce_range}
        _set_metadata(graph, {**metadata, "precision": "int8", **details})
        atomic_write(out_path, lambda tmp: onnx.save(graph, tmp))
    finally:
        prepared.unlink(missing_ok=True)
        quantized.unlink(missing_ok=True)
        for leftover in out_path.parent.glob(f".{out_path.name}*.data"):
            leftover.unlink()
    return out_path


def needs_reduced_range() -> bool:
    """True on x86 CPUs without VNNI, whose u8 x s8 int8 kernels can saturate with 8-bit weights."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i686", "x86"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return "vnni" not in flags
