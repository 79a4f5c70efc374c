"""ExecuTorch export: the ``.pte`` a phone app loads, lowered to the XNNPACK delegate.

``torch.export`` captures the model, ``to_edge_transform_and_lower`` hands every
operator XNNPACK supports to it (on a phone: Arm NEON kernels; on this CPU: x86 ones),
and the program is written as a ``.pte``.  int8 goes through PT2E quantization with
ExecuTorch's ``XNNPACKQuantizer`` (symmetric per-channel int8 weights, int8
activations whose ranges are cut at the 99.99th percentile of what calibration images
produce: 83.0 % against 83.8 % fp32 on MobileNetV2, where PT2E's own histogram ranges
gave 80.8 %; docs/benchmarks.md#executorch).

Before the file is written, ExecuTorch's own runtime runs it on ``check_input`` and the
output is compared with PyTorch's (fp32: the float model; int8: the quantized model
PT2E made, which the delegate must reproduce).  The metadata ``predict`` needs -
classes, preprocessing, task - goes in ``<file>.pte.json`` beside it (a ``.pte`` holds
no free-form metadata).  Detectors export their network and box decoding, segmenters
their class scores at the input's size, as in the ONNX path.

Needs the ``[mobile]`` extra (``executorch``).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..datainfo import DataInfo
from ..errors import ConfigError, InputShapeError
from ..extras import require
from ..files import atomic_write
from ..tasks import task_of
from ..validate import exported_batch
from .detection import ExportedDetector
from .onnx import class_metadata, deployable, preprocessing_metadata
from .ort import ExportError, relative_error

__all__ = ["ExecuTorchReport", "PteDetector", "PteModel", "export_executorch", "load_pte", "metadata_path"]

FORMAT = "mobilenets-pte/1"
FP32_TOLERANCE = 1e-3  # max relative, as the ONNX check: XNNPACK's kernels against PyTorch's
# int8: the delegate's integer kernels against PT2E's reference (quantize/dequantize in
# float), as the L2 norm of the difference over the output's.  Requantization rounds
# differently by a step here and there, and steps add up over 50 layers: 0.12 measured on
# MobileNetV2 with real images (AMD EPYC, no VNNI); a broken kernel gives ~1 (uncorrelated).
INT8_TOLERANCE = 0.3


def _executorch():
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)  # its import notes concern no user
    with warnings.catch_warnings():  # its deprecation and "experimental API" notes concern no user
        warnings.simplefilter("ignore")
        partitioner, exir, runtime = (
            require(f"executorch.{name}", "ExecuTorch export", "mobile")
            for name in ("backends.xnnpack.partition.xnnpack_partitioner", "exir", "runtime")
        )
    return partitioner.XnnpackPartitioner, exir.to_edge_transform_and_lower, runtime.Runtime


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]


def metadata_path(path: str | Path) -> Path:
    """Where a ``.pte``'s metadata sits: ``model.pte`` -> ``model.pte.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


@dataclass
class ExecuTorchReport:
    path: Path
    precision: str
    max_relative_error: float
    outside: list[str]  # operators left to ExecuTorch's portable kernels (slow on a phone)
    metadata: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        where = (
            "every operator in XNNPACK"
            if not self.outside
            else f"{len(self.outside)} operators outside XNNPACK: {', '.join(sorted(set(self.outside)))}"
        )
        return (
            f"wrote {self.path} ({self.precision}, {where}); "
            f"ExecuTorch runtime vs PyTorch {'relative L2' if self.precision == 'int8' else 'max relative'} "
            f"error {self.max_relative_error:.2e}"
        )


def _quantization_config(method: str, percentile: float):
    """ExecuTorch's XNNPACK int8 scheme (symmetric per-channel weights, per-tensor activations),
    with the activation ranges chosen by ``method`` (:mod:`mobilenets.export.pt2e_ranges`)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config

    from .pt2e_ranges import with_activation_ranges

    return with_activation_ranges(
        get_symmetric_quantization_config(is_per_channel=True), method, percentile, "executorch"
    )


def _quantize(exported: torch.export.ExportedProgram, calibration: Tensor, config) -> nn.Module:
    """PT2E int8 for XNNPACK: observers placed by ExecuTorch's quantizer as ``config`` (from
    :func:`_quantization_config`) says, ranges from ``calibration`` (one image at a time, the
    batch the program takes), converted."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    # The classifier stays float (as in the ONNX int8 path: float logits).  Measured on an
    # AMD EPYC without VNNI: XNNPACK's int8 fully-connected kernel on MobileNetV2's
    # 1280 -> 1000 layer left the logits uncorrelated with PT2E's reference (relative
    # error 1.2), with it in float 0.12; it is 1.3M of 3.5M weights but 0.4 % of the work.
    quantizer = XNNPACKQuantizer().set_global(config).set_module_type(nn.Linear, None)
    prepared = prepare_pt2e(exported.module(), quantizer)
    with torch.no_grad():
        for image in calibration:
            prepared(image[None])
    return convert_pt2e(prepared)


def _outside_delegate(program) -> list[str]:
    """The operators the lowered program runs outside XNNPACK (tuple indexing aside)."""
    graph = program.exported_program().graph_module.graph
    outside = []
    for node in graph.nodes:
        name = str(getattr(node.target, "__name__", node.target))
        if node.op != "call_function" or "call_delegate" in name or name == "getitem":
            continue
        # copies of constants (hard-sigmoid's scalars, in a layout XNNPACK takes) run on
        # constants only, not on the image: no per-frame work outside the delegate
        if all(getattr(a, "op", None) == "placeholder" and a.name.startswith("_lifted") for a in node.all_input_nodes):
            continue
        outside.append(name)
    return outside


@contextmanager
def quiet_native_logs():
    """ExecuTorch's runtime logs CPU probing to the process's stderr from C++ on first
    load (notes that concern no user): silence file descriptor 2 around it."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # and its "experimental API" warning
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@torch.no_grad()
def export_executorch(
    model: nn.Module,
    path: str | Path,
    *,
    info: dict[str, Any],
    int8: bool = False,
    calibration: Tensor | None = None,
    check_input: Tensor | None = None,
    calibration_method: str = "percentile",
    percentile: float = 99.99,
) -> ExecuTorchReport:
    """Export ``model`` to an XNNPACK-delegated ``.pte`` (batch 1, the model's square input)
    and check it in ExecuTorch's runtime against PyTorch before writing it (see the module
    docstring).  ``int8`` needs ``calibration`` images, preprocessed as for evaluation;
    ``calibration_method`` and ``percentile`` choose the activation ranges (see
    :func:`_quantization_config`)."""
    XnnpackPartitioner, to_edge_transform_and_lower, Runtime = _executorch()
    # built (and a bad method refused) here, before a minute of lowering
    config = _quantization_config(calibration_method, percentile) if int8 else None
    path = Path(path)
    if path.suffix != ".pte":
        raise ConfigError(
            f"an ExecuTorch program is a .pte file, got {path}", cli=f"--out should name a .pte file, got {path}"
        )
    if int8 and (calibration is None or not len(calibration)):
        raise ConfigError("int8 needs calibration images", cli="--int8 needs --calibration DIR")
    resolution = int(info["resolution"])
    channels = getattr(model, "in_channels", 3)
    network, extra, outputs = deployable(model, info)
    network = copy.deepcopy(network).float().eval()
    example = torch.rand(1, channels, resolution, resolution) if check_input is None else check_input[:1].float()
    if tuple(example.shape[1:]) != (channels, resolution, resolution):
        raise InputShapeError(f"check input {tuple(example.shape)} is not 1x{channels}x{resolution}x{resolution}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's notes on its own internals
        try:
            exported = torch.export.export(network, (example,))
        except Exception as exc:  # torch.export raises many types; the first line says what it could not trace
            raise ExportError(
                f"torch.export cannot capture {type(model).__name__} for ExecuTorch: {_first_line(exc)}"
            ) from exc
        reference: nn.Module = network
        if int8:
            reference = _quantize(exported, calibration.float(), config)
            exported = torch.export.export(reference, (example,))
        program = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
        outside = _outside_delegate(program)
        buffer = program.to_executorch().buffer
    expected = reference(example)
    expected = expected if isinstance(expected, tuple) else (expected,)
    with quiet_native_logs():
        actual = Runtime.get().load_program(bytes(buffer)).load_method("forward").execute([example])
    if int8:
        error = max(((a - e).norm() / e.norm().clamp(min=1e-12)).item() for a, e in zip(actual, expected))
    else:
        error = max(relative_error(a, e) for a, e in zip(actual, expected))
    tolerance = INT8_TOLERANCE if int8 else FP32_TOLERANCE
    if not error <= tolerance:  # also catches NaN
        raise ExportError(
            f"ExecuTorch's output differs from PyTorch's by {error:.2e} relative (tolerance {tolerance:.0e}); "
            "the export is wrong and was not written"
        )
    metadata = {
        "format": FORMAT,
        "arch": getattr(model, "arch", None) or {},
        **class_metadata(info),
        "precision": "int8" if int8 else "fp32",
        "outputs": outputs,
        "backend": "xnnpack",
        "max_relative_error": error,
        **preprocessing_metadata(info),
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(bytes(buffer)))
    atomic_write(metadata_path(path), lambda tmp: Path(tmp).write_text(json.dumps(metadata, indent=2)))
    return ExecuTorchReport(path, metadata["precision"], error, outside, metadata)


class PteModel:
    """A mobilenets ``.pte`` run by ExecuTorch's runtime: call it on a preprocessed batch
    (run one image at a time: the program takes batch 1).  ``info`` has the keys of a
    checkpoint's data info, so ``predict`` takes it like a PyTorch model."""

    def __init__(self, path: str | Path) -> None:
        _, _, Runtime = _executorch()
        self.path = Path(path)
        if not self.path.is_file():
            raise ExportError(f".pte file not found: {self.path}")
        sidecar = metadata_path(self.path)
        if not sidecar.is_file():
            raise ExportError(
                f"{sidecar} is missing: a .pte carries no class names or preprocessing, and 'mobilenets export "
                "--format executorch' writes them there"
            )
        try:
            info = DataInfo.from_record(json.loads(sidecar.read_text()), source=str(sidecar))
        except json.JSONDecodeError as exc:
            raise ExportError(f"{sidecar} is not valid JSON ({exc})") from exc
        try:
            with quiet_native_logs():
                self.method = Runtime.get().load_program(self.path).load_method("forward")
        except Exception as exc:  # the runtime raises RuntimeError or its own types on a bad file
            raise ExportError(
                f"{self.path} is not a loadable ExecuTorch program ({type(exc).__name__}: {exc})"
            ) from exc
        self.info = info.replace(in_channels=info.in_channels or 3)
        self.input_shape = (3, int(info["resolution"]), int(info["resolution"]))

    def eval(self) -> PteModel:
        """Already an inference graph (as a PyTorch model's ``eval()``, for code that calls it)."""
        return self

    def __call__(self, images: Tensor) -> Tensor | tuple[Tensor, ...]:
        images = exported_batch(images, self.input_shape, self.path.name)
        parts = [self.method.execute([image[None].contiguous()]) for image in images]
        outputs = tuple(torch.cat([p[i] for p in parts]) for i in range(len(parts[0])))
        return outputs[0] if len(outputs) == 1 else outputs


class PteDetector(ExportedDetector):
    """A detector's ``.pte`` (network and box decoding), called like the PyTorch detector
    on a list of images (3, H, W) in [0, 1]; NMS runs after it, as for the ONNX export."""

    def __init__(self, path: str | Path, *, program: PteModel | None = None) -> None:
        super().__init__(program or PteModel(path))


def load_pte(path: str | Path) -> Any:
    """The runner for a mobilenets ``.pte``, ready for its task: a detector's takes image lists, the others batches."""
    program = PteModel(path)
    return task_of(program.info).exported_runner(program)
