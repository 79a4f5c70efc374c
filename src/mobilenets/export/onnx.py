"""ONNX export: the deployable graph of each task, batch norm folded, checked against PyTorch.

The exported file carries what prediction needs in its metadata (key
``mobilenets``): architecture, class names, the preprocessing style and
resolution, mean/std.  :class:`~mobilenets.export.ort.OnnxClassifier` reads it back, so
``mobilenets predict --onnx model.onnx`` preprocesses images exactly as
training and evaluation did, and a file exported by another tool is refused
with a clear message instead of being fed wrongly sized or normalised images.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..data import IMAGENET_MEAN, IMAGENET_STD, STYLES
from ..errors import ConfigError
from ..files import atomic_write
from ..tasks import get_task, task_of
from .detection import DecodedDetector, is_detector
from .ort import FORMAT, ExportError, onnx_modules, ort_session, relative_error, set_metadata

__all__ = [
    "ExportReport",
    "SegmentationScores",
    "export_onnx",
    "fold_batchnorm",
]

MIN_OPSET = 17
# fp32 ONNX Runtime against PyTorch: different kernels and summation orders, same
# arithmetic.  Measured ~1e-6 on every registry model; 1e-3 catches real mistakes.
MAX_RELATIVE_ERROR = 1e-3

# Children that feed each other directly inside modules that are not Sequential:
# torchvision's ResNet blocks and stem, and our BasicResidual (same names).
_PAIRED = {"conv1": "bn1", "conv2": "bn2", "conv3": "bn3"}


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``model`` with every BatchNorm that directly follows a conv
    folded into the conv's weight and bias; returns (model, number folded).

    Folding is exact arithmetic (w' = w * gamma / sigma, b' = (b - mu) * gamma / sigma + beta),
    so outputs agree to float rounding; a BN that follows something else stays.
    """
    model = copy.deepcopy(model).eval()
    folded = 0
    for module in list(model.modules()):
        children = dict(module.named_children())
        if isinstance(module, nn.Sequential):
            names = list(children)
            pairs = list(zip(names, names[1:]))
        else:
            pairs = [(conv, bn) for conv, bn in _PAIRED.items() if conv in children and bn in children]
        for conv_name, bn_name in pairs:
            owner, last = _output_conv(module, conv_name)
            bn = getattr(module, bn_name)
            if owner is not None and type(bn) is nn.BatchNorm2d and bn.track_running_stats:
                setattr(owner, last, fuse_conv_bn_eval(getattr(owner, last), bn))
                setattr(module, bn_name, nn.Identity())
                folded += 1
    return model, folded


class _PoolAsMatrices(nn.Module):
    """Adaptive average pooling at one fixed input size, as two constant matrices:
    ``y = P_h x P_w^T``.  The same arithmetic as ``nn.AdaptiveAvgPool2d`` (each output cell is
    the mean of the cells its bin covers), which ONNX cannot express when the input side is
    not a multiple of the output side (torchvision's VGG at 32x32: 1x1 -> 7x7)."""

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> None:
        super().__init__()
        self.register_buffer("rows", _bin_means(in_hw[0], out_hw[0]))
        self.register_buffer("columns", _bin_means(in_hw[1], out_hw[1]))

    def forward(self, x: Tensor) -> Tensor:
        return torch.matmul(torch.matmul(self.rows, x), self.columns.T)


def _bin_means(size: int, bins: int) -> Tensor:
    """(bins, size): row i averages the cells of PyTorch's adaptive bin i, [floor(i n / b), ceil((i + 1) n / b))."""
    matrix = torch.zeros(bins, size)
    for i in range(bins):
        start, end = (i * size) // bins, -((-(i + 1) * size) // bins)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def exportable_pooling(model: nn.Module, example: Tensor) -> int:
    """Replace, in place, every adaptive average pooling whose input side is not a multiple of
    its output side at ``example``'s size by :class:`_PoolAsMatrices`; returns how many."""
    sizes: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {}

    def record(name: str):
        def hook(module, args, output) -> None:
            sizes.setdefault(name, (tuple(args[0].shape[-2:]), tuple(output.shape[-2:])))

        return hook

    hooks = [
        module.register_forward_hook(record(name))
        for name, module in model.named_modules()
        if isinstance(module, nn.AdaptiveAvgPool2d)
    ]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for hook in hooks:
            hook.remove()
    replaced = 0
    for name, (in_hw, out_hw) in sizes.items():
        if in_hw[0] % out_hw[0] or in_hw[1] % out_hw[1]:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, _PoolAsMatrices(in_hw, out_hw))
            replaced += 1
    return replaced


def _output_conv(parent: nn.Module, name: str) -> tuple[nn.Module | None, str]:
    """(module, attribute) of the plain conv whose output ``parent.name`` returns: the
    module itself, or the last conv of a decoupled / decomposed replacement."""
    module = getattr(parent, name)
    if type(module) is nn.Conv2d:
        return parent, name
    if type(module).__name__ == "DecoupledConv":  # no import: decouple depends on more than export needs
        return module, "pointwise" if module.order == "dw_pw" else "depthwise"
    if type(module) is nn.Sequential and len(module) and type(module[-1]) is nn.Conv2d:
        return module, str(len(module) - 1)
    return None, name


def class_metadata(info: dict[str, Any]) -> dict[str, Any]:
    """The class names a file records; where they come from when not from the training data
    (published ImageNet/COCO/VOC names, placeholders: evaluation then maps a dataset's folders
    onto them by position, as it does for the weights the file was exported from); and the
    classes ``--classes`` kept of the dataset (evaluation keeps the same), as the weights record them."""
    said = {key: info.get(key) for key in ("classes_source", "selected_classes") if info.get(key)}
    return {"classes": list(info.get("classes") or []), **said}


def preprocessing_metadata(info: dict[str, Any]) -> dict[str, Any]:
    """What a consumer needs to turn an image file into the model's input: the task's own
    record where it has one (a detector's, a segmenter's), else the classifier's style."""
    resolution = int(info["resolution"])
    described = task_of(info).exported_preprocessing(resolution)
    if described is not None:
        return described
    style = info.get("transforms", "imagenet")
    pre = STYLES[style]
    steps = (
        f"RGB, to float in [0, 1], resize shorter side to {round(resolution * pre.eval_resize)}, "
        f"center-crop {resolution}, normalise"
    )
    return {"transforms": style, "resolution": resolution, "mean": list(pre.mean), "std": list(pre.std), "steps": steps}


@dataclass
class ExportReport:
    path: Path
    opset: int
    batchnorm_folded: int
    max_relative_error: float
    dynamic_batch: bool
    metadata: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"wrote {self.path} (opset {self.opset}, {self.batchnorm_folded} batch norms folded, "
            f"{'dynamic' if self.dynamic_batch else 'fixed'} batch); ONNX Runtime vs PyTorch max relative error "
            f"{self.max_relative_error:.2e}"
        )


def max_opset() -> int:
    """The highest opset torch's TorchScript-based exporter (the one used here) writes."""
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", _constants.ONNX_DEFAULT_OPSET))


def deployable(model: nn.Module, info: dict[str, Any]) -> tuple[nn.Module, dict[str, Any], list[str]]:
    """What an export holds for ``model``, with the metadata its task adds and its output
    names, as its task says (``Task.deployable``): a detector's network and box decoding
    (:func:`mobilenets.export.detection.detector_graph`), a segmenter's class scores
    (:func:`segmenter_graph`), a classifier's logits.  ``model`` itself is left as it is."""
    task = get_task("detection") if is_detector(model) else task_of(info)
    return task.deployable(model, info)


def classifier_graph(model: nn.Module, info: dict[str, Any]) -> tuple[nn.Module, dict[str, Any], list[str]]:
    """A classifier exports as it is: its logits."""
    return model, {}, ["logits"]


def segmenter_graph(model: nn.Module, info: dict[str, Any]) -> tuple[nn.Module, dict[str, Any], list[str]]:
    """A segmenter's class scores at the input's size (the upsampling in the graph), and the dataset's class ids."""
    extra = {"task": "segmentation", "class_ids": info.get("class_ids") or list(range(len(info["classes"])))}
    return model if isinstance(model, SegmentationScores) else SegmentationScores(model), extra, ["logits"]


def segmenter_preprocessing(resolution: int) -> dict[str, Any]:
    """A segmenter file's preprocessing: ImageNet statistics, a square input, scores resized back."""
    steps = (f"RGB, to float in [0, 1], normalise, resize to {resolution}x{resolution} (bilinear); "
             "scores resize back to the image (bilinear), argmax per pixel")  # fmt: skip
    return {"transforms": "segmentation", "resolution": resolution, "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "steps": steps}  # fmt: skip


@torch.no_grad()
def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    info: dict[str, Any],
    dynamic_batch: bool = False,
    opset: int = MIN_OPSET,
    check_input: Tensor | None = None,
    tolerance: float = MAX_RELATIVE_ERROR,
) -> ExportReport:
    """Export ``model`` (eval mode, BN folded) to ONNX and check ONNX Runtime against PyTorch.

    ``info`` holds ``resolution``, ``transforms`` and ``classes`` (see
    :func:`mobilenets.predict.default_data_info`); they are written into the
    file's metadata.  ``check_input`` (default: random images) is run through
    both; a max relative error above ``tolerance`` deletes nothing but raises
    :class:`ExportError` (the file is written atomically only after the check).
    """
    onnx, _ = onnx_modules()
    highest = max_opset()
    if not MIN_OPSET <= opset <= highest:
        problem = f"must be between {MIN_OPSET} and {highest} (the highest this torch's exporter writes), got {opset}"
        raise ConfigError(f"opset {problem}", cli=f"--opset {problem}")
    path = Path(path)
    resolution = int(info["resolution"])
    channels = getattr(model, "in_channels", 3)
    model, extra, outputs = deployable(model, info)
    if isinstance(model, DecodedDetector):
        check_input = check_input if check_input is not None else torch.rand(1, channels, resolution, resolution)
    reference_model = copy.deepcopy(model).eval().float()
    folded_model, folded = fold_batchnorm(reference_model)
    example = torch.randn(2 if dynamic_batch else 1, channels, resolution, resolution)
    exportable_pooling(folded_model, example)
    x = check_input if check_input is not None else example
    dynamic_axes = {name: {0: "batch"} for name in ["image", *outputs]} if dynamic_batch else None
    tmp = path.with_name(f".{path.name}.export.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            # The exporter's notes about python-side input checks and its own deprecation are not the user's concern.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                folded_model,
                (example,),
                str(tmp),
                input_names=["image"],
                output_names=outputs,
                opset_version=opset,
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
                dynamo=False,
            )
        graph = onnx.load(str(tmp))
        metadata = {
            "format": FORMAT,
            "arch": getattr(model, "arch", None) or {},
            **class_metadata(info),
            "dynamic_batch": dynamic_batch,
            "precision": "fp32",
            **preprocessing_metadata(info),
            **extra,
        }
        set_metadata(graph, metadata)
        onnx.save(graph, str(tmp))
        session = ort_session(tmp)
        if not dynamic_batch and x.shape[0] != 1:
            x = x[:1]
        actual = session.run(None, {"image": x.float().numpy()})
        with torch.no_grad():
            expected = reference_model(x.float())
        expected = expected if isinstance(expected, tuple) else (expected,)
        error = max(relative_error(a, e) for a, e in zip(actual, expected))
        if not error <= tolerance:  # also catches NaN
            raise ExportError(
                f"ONNX Runtime's output differs from PyTorch's by {error:.2e} relative (tolerance {tolerance:.0e}); "
                "the export is wrong and was not written"
            )
        atomic_write(path, lambda out: Path(tmp).replace(out))
    finally:
        tmp.unlink(missing_ok=True)
    return ExportReport(path, opset, folded, error, dynamic_batch, metadata)


class SegmentationScores(nn.Module):
    """A torchvision-style segmenter (``{"out": scores, ...}``) as a network returning its
    class scores (N, C, H, W) alone - the auxiliary head is a training aid, not exported."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.in_channels = getattr(model, "in_channels", 3)
        self.arch = getattr(model, "arch", None)

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)["out"]
