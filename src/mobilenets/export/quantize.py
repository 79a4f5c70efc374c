"""int8 post-training static quantization of an exported model (ONNX Runtime, QDQ).

Weights are int8 per output channel; activations are uint8 with ranges observed on
calibration images.  uint8 activations matter on x86 CPUs without VNNI: ONNX
Runtime's u8s8 kernels are the fast path there, while s8s8 ran slower than fp32
on this project's 2-core machine.

MobileNets are hard to quantize per tensor: depthwise filters and ReLU6 ranges
vary a lot between channels.  The calibration method is the first lever:

* ``minmax`` - the observed range; one outlier widens every step;
* ``percentile`` - cut the range at a percentile of each tensor's histogram (99.99 by default;
  only the top for tensors after a ReLU, both ends for signed ones);
* ``entropy`` - the range minimising the KL divergence of the quantized histogram.

The second lever is the weights' range on x86 CPUs without VNNI: their u8 x s8
kernels add pairs of products in 16 bits, which saturates with full 8-bit
weights.  ``reduce_range`` (on by default there) quantizes weights to 7 bits,
which measured here lifted torchvision's MobileNetV2 from 74.0% to 80.7% top-1
(MinMax) on imagenet-sample against 83.8% in fp32.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..files import atomic_write
from ..validate import CALIBRATION_METHODS, WEIGHT_ROUNDING
from . import ptq
from .onnx import fold_batchnorm
from .ort import onnx_modules, read_metadata, set_metadata

__all__ = [
    "CALIBRATION_METHODS",
    "WEIGHT_ROUNDING",
    "QuantizeOptions",
    "calibration_label",
    "quantize_onnx",
    "recorded_options",
]


@dataclass(frozen=True)
class QuantizeOptions:
    """How :func:`quantize_onnx` quantizes, each step measured in docs/benchmarks.md#int8-accuracy.

    * ``method``: how activation ranges are chosen (see the module docstring), ``percentile``
      where the percentile method cuts them;
    * ``reduce_range``: 7-bit dense weights; ``None`` = where the CPU lacks VNNI;
      ``full_range_depthwise``: depthwise weights keep 8 bits even then (their kernel does not saturate);
    * ``weight_rounding="gptq"`` with the PyTorch model the file was exported from: dense weights
      rounded with error feedback (:func:`mobilenets.export.ptq.round_weights`); without the
      model, or ``"nearest"``, each weight goes to its nearest step;
    * ``bias_correction``: every conv's mean output shift cancelled on the first
      ``bias_correction_images`` calibration images (:func:`mobilenets.export.ptq.correct_biases`).
      Off by default: on top of per-tensor 99.99 ranges and GPTQ it moved the int8 model *away*
      from fp32 (mean KL 0.028 -> 0.050 on imagenet-sample): the mean shift left there comes
      mostly from clipping, which a bias cannot undo;
    * ``float_outputs``: the network's outputs (logits) stay float (:func:`mobilenets.export.ptq.keep_outputs_float`);
    * ``range_search``: every activation range rescaled to bring the network's output closest to
      fp32 on the first ``range_search_images`` calibration images
      (:func:`mobilenets.export.ptq.tune_activation_ranges`), ``range_search_sweeps`` passes;
      about a minute on 2 cores for MobileNetV2 with the defaults, KL to fp32 0.023 -> 0.019.
    """

    method: str = "percentile"
    percentile: float = 99.99
    per_channel: bool = True
    reduce_range: bool | None = None
    weight_rounding: str = "gptq"
    full_range_depthwise: bool = True
    bias_correction: bool = False
    bias_correction_images: int = 128
    float_outputs: bool = True
    range_search: bool = True
    range_search_images: int = 16
    range_search_sweeps: int = 1

    def validate(self) -> QuantizeOptions:
        if self.method not in CALIBRATION_METHODS:
            raise ConfigError(
                f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {self.method!r}"
            )
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.weight_rounding not in WEIGHT_ROUNDING:
            raise ConfigError(
                f"weight rounding must be one of {', '.join(WEIGHT_ROUNDING)}, got {self.weight_rounding!r}"
            )
        if self.range_search and (self.range_search_images < 1 or self.range_search_sweeps < 1):
            raise ConfigError(
                "the range search needs at least 1 image and 1 sweep, got "
                f"{self.range_search_images} and {self.range_search_sweeps}"
            )
        return self

    def details(self, rounding: str, reduce_range: bool) -> dict[str, Any]:
        """What the int8 file's metadata records of how it was made."""
        return {
            "calibration": calibration_label(self.method, self.percentile),
            "per_channel": self.per_channel,
            "reduce_range": reduce_range,
            "full_range_depthwise": self.full_range_depthwise,
            "weight_rounding": rounding,
            "bias_correction": self.bias_correction,
            "float_outputs": self.float_outputs,
            "range_search": self.range_search,
        }


def calibration_label(method: str, percentile: float) -> str:
    """How an int8 file's activation ranges were set, as its metadata records it ("percentile 99.99")."""
    return f"percentile {percentile}" if method == "percentile" else method


def recorded_options(path: str | Path) -> dict[str, Any]:
    """How an int8 file of :func:`quantize_onnx` was made, as its metadata records it
    (:meth:`QuantizeOptions.details`): for a file converted from it to carry over."""
    keys = QuantizeOptions().details("", False)
    return {key: value for key, value in read_metadata(path).items() if key in keys}


def quantize_onnx(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: Tensor,
    *,
    model: nn.Module | None = None,
    activation_ranges: Callable[[Path, list[list[str]]], dict[str, tuple[float, float]]] | None = None,
    progress: bool = False,
    options: QuantizeOptions | None = None,
    **settings: Any,
) -> Path:
    """Write an int8 (QDQ) copy of the fp32 export ``fp32_path`` to ``out_path``.

    ``calibration`` is a batch of preprocessed images (e.g. from
    :func:`mobilenets.data.calibration_images`); a few hundred are plenty.
    The metadata (class names, preprocessing) is carried over, marked int8.
    How it quantizes is ``options`` (:class:`QuantizeOptions`), or its fields given as
    keywords (``range_search=False``); ``model`` is the PyTorch model the file was exported
    from (GPTQ rounds its weights).  ``activation_ranges``: a function given the pre-processed
    fp32 graph's path and the tensors ONNX Runtime quantizes (groups sharing one step) that
    returns their ranges by name, used instead of ``method``; how a quantization-aware trained
    model hands over its learned ranges (:func:`mobilenets.export.qat.onnx_ranges`).
    """
    known = {f.name for f in fields(QuantizeOptions)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"unknown quantization setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    options = replace(options or QuantizeOptions(), **settings).validate()
    if calibration.dim() != 4 or calibration.shape[0] == 0:
        raise ConfigError(
            f"calibration must be a non-empty batch of images (N, C, H, W), got {tuple(calibration.shape)}"
        )
    onnx, _ = onnx_modules()
    metadata = read_metadata(fp32_path)
    if metadata.get("precision") != "fp32":
        raise ConfigError(f"{fp32_path} is already quantized; quantize the fp32 export")
    batch = None if metadata.get("dynamic_batch") else 1
    reduce_range = needs_reduced_range() if options.reduce_range is None else options.reduce_range
    graph = onnx.load(str(fp32_path))
    qmax = {True: ptq.QMAX_REDUCED, False: ptq.QMAX_FULL}
    grids = _weight_grids(
        graph, qmax[reduce_range], ptq.QMAX_FULL if options.full_range_depthwise else qmax[reduce_range]
    )
    rounding = options.weight_rounding if model is not None else "nearest"
    if rounding == "gptq":
        _round_with_gptq(graph, model, calibration, grids)

    def refine(result) -> None:
        """The steps that edit ONNX Runtime's int8 graph, in this order."""
        if options.float_outputs:
            ptq.keep_outputs_float(result)
        if options.bias_correction:
            images = calibration[: options.bias_correction_images]
            ptq.correct_biases(result, fp32_path, images, batch_size=batch or 16, progress=progress)
        if options.range_search:
            images = calibration[: options.range_search_images]
            ptq.tune_activation_ranges(result, fp32_path, images, sweeps=options.range_search_sweeps, progress=progress)

    steps = {
        "graph": graph,
        "grids": grids if options.per_channel else {},
        "reader": _calibration_reader(batch or 16),
        "metadata": {**metadata, "precision": "int8", **options.details(rounding, reduce_range)},
        "per_channel": options.per_channel,
        "reduce_range": reduce_range,
        "refine": refine,
        "batch": batch or 16,
        "calibration": calibration,
        "percentile": options.percentile,
        "ranges_for": activation_ranges,
    }
    try:
        return _quantize(onnx, Path(out_path), options.method, **steps)
    except ValueError as exc:
        # ONNX Runtime's entropy calibration fails on tensors whose observed range is
        # (nearly) a single value, e.g. saturated squeeze-excite gates.
        if options.method != "entropy" or "bins" not in str(exc):
            raise
        warnings.warn(f"{options.method} calibration failed ({exc}); using minmax instead", stacklevel=2)
        steps["metadata"]["calibration"] = "minmax"
        return _quantize(onnx, Path(out_path), "minmax", **steps)


def _calibration_reader(batch: int):
    """ONNX Runtime's calibration data reader over a tensor of images, ``batch`` at a time."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self, images: Tensor) -> None:
            self.batches: Iterator[Tensor] = iter(images.split(batch))

        def get_next(self):
            images = next(self.batches, None)
            return None if images is None else {"image": images.float().numpy()}

    return Reader


def _weight_grids(graph, dense_qmax: int, depthwise_qmax: int) -> dict[str, ptq.WeightGrid]:
    """Per-channel steps for every Conv/Gemm weight initializer of an fp32 graph."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in graph.graph.initializer}
    grids = {}
    for node in graph.graph.node:
        if node.op_type not in ("Conv", "Gemm") or node.input[1] not in initializers:
            continue
        weight = torch.from_numpy(numpy_helper.to_array(initializers[node.input[1]]).copy())
        if node.op_type == "Gemm" and not any(a.name == "transB" and a.i == 1 for a in node.attribute):
            weight = weight.T  # per-channel steps follow the output axis
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        depthwise = node.op_type == "Conv" and groups > 1 and groups == weight.shape[0] and weight.shape[1] == 1
        grids[node.input[1]] = ptq.grid_for(weight, depthwise_qmax if depthwise else dense_qmax)
    return grids


def _round_with_gptq(graph, model: nn.Module, calibration: Tensor, grids: dict[str, ptq.WeightGrid]) -> None:
    """Replace the graph's weights by GPTQ-rounded ones from the PyTorch layers they were exported from."""
    from onnx import numpy_helper

    initializers = {init.name: init for init in graph.graph.initializer}
    folded, _ = fold_batchnorm(model)
    matched = {}
    for name, layer in ptq.weight_layers(folded).items():
        key = f"{name}.weight"
        if key in grids and tuple(initializers[key].dims) == tuple(layer.weight.shape):
            exported = torch.from_numpy(numpy_helper.to_array(initializers[key]).copy())
            if torch.allclose(exported, layer.weight.detach(), rtol=1e-4, atol=1e-6):
                matched[name] = grids[key]
    # Layers the exporter renamed or transformed keep nearest rounding (done by ONNX Runtime).
    rounded, _ = ptq.round_weights(folded, calibration, grids=matched, method="gptq")
    layers = ptq.weight_layers(rounded)
    for name in matched:
        key = f"{name}.weight"
        initializers[key].CopyFrom(numpy_helper.from_array(layers[name].weight.detach().numpy(), key))


def _quantize(
    onnx,
    out_path,
    method,
    *,
    graph,
    grids,
    reader,
    metadata,
    per_channel,
    reduce_range,
    refine,
    batch,
    calibration,
    percentile,
    ranges_for,
) -> Path:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    rounded = out_path.with_name(f".{out_path.name}.rounded.tmp")
    prepared = out_path.with_name(f".{out_path.name}.pre.tmp")
    quantized = out_path.with_name(f".{out_path.name}.q.tmp")
    try:
        onnx.save(graph, str(rounded))
        # Shape inference and graph cleanup first, as ONNX Runtime recommends for static quantization.
        quant_pre_process(str(rounded), str(prepared), skip_symbolic_shape=True)
        present = {init.name for init in onnx.load(str(prepared)).graph.initializer}
        overrides = ptq.onnx_weight_overrides(grids, present)

        def run(calibrate: str, images: Tensor, activations: dict[str, list[dict]]) -> None:
            quantize_static(
                str(prepared),
                str(quantized),
                reader(images),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method={
                    "minmax": CalibrationMethod.MinMax,
                    "entropy": CalibrationMethod.Entropy,
                }[calibrate],
                reduce_range=reduce_range,
                extra_options={
                    "CalibMovingAverage": False,
                    # Our weight steps, so the integers are the ones rounded above (the int32
                    # bias has range to spare), and our activation ranges where given.
                    "TensorQuantOverrides": {**overrides, **activations},
                    "QDQDisableWeightAdjustForInt32Bias": True,
                },
            )

        if method == "percentile" or ranges_for is not None:
            # A quick pass names the activations ONNX Runtime quantizes; their ranges are ours.
            run("minmax", calibration[:1], {})
            groups = ptq.activation_groups(onnx.load(str(quantized)))
            if ranges_for is not None:
                ranges = ranges_for(prepared, groups)
            else:
                names = [name for group in groups for name in group]
                ranges = ptq.activation_ranges(prepared, names, calibration, percentile=percentile, batch_size=batch)
            activations = {
                name: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}] for name, (lo, hi) in ranges.items()
            }
            run("minmax", calibration[:1], activations)
        else:
            run(method, calibration, {})
        result = onnx.load(str(quantized))
        refine(result)
        set_metadata(result, metadata)
        atomic_write(out_path, lambda tmp: onnx.save(result, tmp))
    finally:
        for tmp in (rounded, prepared, quantized):
            tmp.unlink(missing_ok=True)
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
