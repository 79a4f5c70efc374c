"""Quantization-aware training (QAT): fine-tune a model while it computes what its int8 ONNX export will.

Post-training quantization (:mod:`mobilenets.export.quantize`) picks int8 weights and
ranges for a network trained in float; QAT lets training adapt the weights to the
rounding instead.  The forward pass here *simulates ONNX Runtime's int8 graph*: the
batch norms are folded (as in the export), every conv/linear weight is rounded to its
per-channel int8 grid (7-bit dense / 8-bit depthwise where the CPU needs it, as in the
export), and every tensor that ONNX Runtime's QDQ quantizer quantizes is rounded to
its uint8 grid.  Gradients pass through the rounding unchanged (the straight-through
estimator); each activation range is a parameter (as in LSQ, Esser et al. 2020), trained
without weight decay.

Which tensors ONNX Runtime quantizes (conv outputs after the ReLU6 it removes, residual
sums, pooled features, the gates inside hard-swish, ...) is not guessed from the
PyTorch modules: :func:`prepare_qat` exports the model, lets ONNX Runtime's quantizer
choose, and matches each chosen tensor to the PyTorch module whose output has the
same values.  The QAT model's logits therefore agree with the int8 file's (tested),
and ``mobilenets export --int8`` of a QAT checkpoint writes the learned ranges and
integers without calibration.

Use through the training pipeline: ``mobilenets train --qat --init-from CHECKPOINT``
(measured in docs/benchmarks.md#quantization-aware-training-cifar-10), or directly::

    qat_model = prepare_qat(model, calibration_images)
    ...train qat_model as usual...
    export_int8(qat_model, "model-int8.onnx", info=info)   # or: float_model, ranges = convert_qat(qat_model)
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import ptq
from .onnx import ExportReport, export_onnx, fold_batchnorm
from .ort import ExportError, session_with_outputs

__all__ = [
    "ActivationQuantizer",
    "QuantizedConv2d",
    "QuantizedLinear",
    "apply_qat_structure",
    "convert_qat",
    "export_int8",
    "prepare_qat",
    "quantize_weight",
]

LEVELS = 255  # uint8 activations


def _round_ste(x: Tensor) -> Tensor:
    """round(x) forward, identity backward (the straight-through estimator)."""
    return x + (torch.round(x) - x).detach()


class ActivationQuantizer(nn.Module):
    """Rounds a tensor to the uint8 grid ONNX Runtime derives from the range [low, high].

    ONNX Runtime's step is (high - low) / 255 with low <= 0 <= high and zero point
    round(-low / step); this computes the same.  ``high`` (and ``low`` for a signed
    tensor) are parameters with the straight-through gradient of LSQ (Esser et al. 2020),
    without its gradient scale: on MobileNetV2 that scale left the ranges' relative
    gradients 10^7 times smaller than the weights', i.e. frozen.  ``ceiling`` caps ``high`` where the export drops
    a clipping activation (ONNX Runtime removes ReLU6 and lets the uint8 range clip), so
    a range learned above 6 cannot let values through that PyTorch clipped.
    """

    def __init__(self, low: float, high: float, *, signed: bool, ceiling: float | None = None) -> None:
        super().__init__()
        self.signed, self.ceiling = signed, ceiling
        self.high = nn.Parameter(torch.tensor(float(max(high, 1e-6))))
        if signed:
            self.low = nn.Parameter(torch.tensor(float(min(low, 0.0))))
        else:
            self.register_buffer("low", torch.zeros(()))

    def bounds(self) -> tuple[Tensor, Tensor]:
        high = self.high.clamp(min=1e-6)
        if self.ceiling is not None:
            high = high.clamp(max=self.ceiling)
        return self.low.clamp(max=0.0), high

    def step(self) -> Tensor:
        low, high = self.bounds()
        return (high - low) / LEVELS

    def range(self) -> tuple[float, float]:
        low, high = self.bounds()
        return float(low.detach()), float(high.detach())

    def forward(self, x: Tensor) -> Tensor:
        low, high = self.bounds()
        step = (high - low) / LEVELS
        zero = _round_ste(-low / step).clamp(0, LEVELS)
        q = torch.clamp(_round_ste(x / step) + zero, 0, LEVELS)
        return (q - zero) * step

    def extra_repr(self) -> str:
        low, high = self.range()
        return f"range=[{low:.4g}, {high:.4g}], signed={self.signed}, ceiling={self.ceiling}"


def quantize_weight(weight: Tensor, qmax: int) -> tuple[Tensor, Tensor]:
    """``weight`` rounded to symmetric per-output-channel int8 steps of max|w| / ``qmax``,
    as in the export (:func:`mobilenets.export.ptq.grid_for`), so the exported integers
    are the ones trained; and the steps."""
    absmax = weight.detach().reshape(weight.shape[0], -1).abs().amax(1)
    scale = torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))
    shaped = scale.view(-1, *[1] * (weight.dim() - 1))
    return torch.clamp(_round_ste(weight / shaped), -qmax, qmax) * shaped, scale


def _quantize_bias(bias: Tensor | None, input_step: Tensor | None, weight_scale: Tensor) -> Tensor | None:
    """The bias on ONNX Runtime's int32 grid (steps of input step x weight step).

    Small as that rounding is, it decides which way values near a rounding boundary
    go; without it 0.06% of the first layer's outputs in MobileNetV2 rounded the other
    way than in ONNX Runtime and the differences grew through the network."""
    if bias is None or input_step is None:
        return bias
    step = (input_step.detach() * weight_scale).to(bias.dtype)
    return bias + (torch.round(bias / step) * step - bias).detach()


# The layers keep their class's parameters and state-dict keys and only round on the way
# in, so a plain conv or linear becomes quantized by swapping its class (and back again
# in convert_qat): the optimizer, checkpoints and cost profile see the same model.
# ``input_step`` (the step of the uint8 tensor the layer reads) is set before every
# forward by the model's pre-hook, from the quantizer that produces that tensor.
class QuantizedConv2d(nn.Conv2d):
    weight_qmax: int
    input_step: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        weight, scale = quantize_weight(self.weight, self.weight_qmax)
        return self._conv_forward(x, weight, _quantize_bias(self.bias, self.input_step, scale))


class QuantizedLinear(nn.Linear):
    weight_qmax: int
    input_step: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        weight, scale = quantize_weight(self.weight, self.weight_qmax)
        return F.linear(x, weight, _quantize_bias(self.bias, self.input_step, scale))


_QUANTIZED = {nn.Conv2d: QuantizedConv2d, nn.Linear: QuantizedLinear}


class QuantizedHardswish(nn.Hardswish):
    """x * hardsigmoid(x) with the gate on its uint8 grid: ONNX exports hard-swish as
    HardSigmoid then Mul, and ONNX Runtime quantizes the HardSigmoid's output."""

    def __init__(self) -> None:
        super().__init__()
        self.gate_quantizer: ActivationQuantizer | None = None

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gate_quantizer(F.hardsigmoid(x))


# Hooks are module-level functions reading the quantizer from the module they are called
# with, not closures: a deep copy (EMA, round_weights) then uses the copy's own quantizers.
def _quantize_output(module: nn.Module, inputs, output: Tensor) -> Tensor:
    return module.output_quantizer(output)


def _quantize_input(module: nn.Module, inputs):
    return (module.input_quantizer(inputs[0]), *inputs[1:])


def _share_input_steps(model: nn.Module, inputs) -> None:
    for layer, quantizer in model._qat_layer_inputs:
        layer.input_step = quantizer.step()


# Where each kind of quantization point keeps its quantizer: the model's input on the
# model, a module's output or a hard-swish gate on that module.
_QUANTIZER_ATTR = {"input": "input_quantizer", "output": "output_quantizer", "hardswish_gate": "gate_quantizer"}


def _quantizer_owner(model: nn.Module, modules: dict[str, nn.Module], point: dict[str, Any]) -> nn.Module:
    return model if point["at"] == "input" else modules[point["module"]]


def apply_qat_structure(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """Give a freshly built ``model`` the structure :func:`prepare_qat` recorded in ``spec``
    (folded batch norms, weight and activation quantizers), so a QAT checkpoint's state
    dict loads into it.  Returns the new model (the batch-norm fold copies)."""
    model, _ = fold_batchnorm(model)
    unknown = {point["at"] for point in spec["activations"]} - set(_QUANTIZER_ATTR)
    if unknown:
        raise ValueError(f"unknown quantization point(s) {', '.join(sorted(unknown))}")
    # Hard-swish modules are swapped first, so output hooks land on the modules that stay.
    for point in spec["activations"]:
        if point["at"] == "hardswish_gate":
            _set_module(model, point["module"], QuantizedHardswish())
    modules = dict(model.named_modules())
    for name, layer_spec in spec["weights"].items():
        layer = modules[name]
        if type(layer) not in _QUANTIZED:
            raise ValueError(f"{name} is a {type(layer).__name__}; only plain convs and linears are quantized")
        layer.__class__ = _QUANTIZED[type(layer)]
        layer.weight_qmax = int(layer_spec["qmax"])
    for point in spec["activations"]:
        quantizer = ActivationQuantizer(
            point["low"], point["high"], signed=point["signed"], ceiling=point.get("ceiling")
        )
        owner = _quantizer_owner(model, modules, point)
        setattr(owner, _QUANTIZER_ATTR[point["at"]], quantizer)
        if point["at"] == "input":
            owner.register_forward_pre_hook(_quantize_input)
        elif point["at"] == "output":
            owner.register_forward_hook(_quantize_output)
        # a hard-swish gate is rounded by QuantizedHardswish.forward itself
    # A plain list, not module state: a deep copy maps it to the copy's own modules.
    quantizers = activation_quantizers(model, spec)
    model._qat_layer_inputs = [
        (modules[name], quantizers[layer_spec["input"]])
        for name, layer_spec in spec["weights"].items()
        if layer_spec.get("input") is not None
    ]
    model.register_forward_pre_hook(_share_input_steps)
    model.arch = {**getattr(model, "arch", {}), "qat": spec}
    return model


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent), attr, module)


def activation_quantizers(model: nn.Module, spec: dict[str, Any] | None = None) -> list[ActivationQuantizer]:
    """The activation quantizers of a QAT model, in the order of its spec."""
    modules = dict(model.named_modules())
    return [
        getattr(_quantizer_owner(model, modules, point), _QUANTIZER_ATTR[point["at"]])
        for point in (spec or model.arch["qat"])["activations"]
    ]


def is_qat(model: nn.Module) -> bool:
    return "qat" in (getattr(model, "arch", None) or {})


def prepare_qat(
    model: nn.Module,
    calibration: Tensor,
    *,
    reduce_range: bool | None = None,
    full_range_depthwise: bool = True,
    percentile: float = 99.99,
    weight_rounding: str = "gptq",
) -> nn.Module:
    """A QAT copy of ``model``: batch norms folded, weights and activations rounded as
    ONNX Runtime's int8 export of it will round them.

    It starts where post-training quantization does (:func:`mobilenets.export.quantize_onnx`
    with the same settings and no range search): activation ranges at ``percentile``
    of each tensor on the ``calibration`` images (a preprocessed batch), dense weights
    GPTQ-rounded on them.  ``reduce_range`` (7-bit dense weights) defaults to what this
    CPU needs.  The result trains like any model; its ``arch["qat"]`` records the
    structure, so checkpoints reload with :func:`mobilenets.load_model`.
    """
    from .quantize import needs_reduced_range, quantize_onnx

    if is_qat(model):
        raise ValueError("the model is already prepared for quantization-aware training")
    if calibration.dim() != 4 or calibration.shape[0] == 0:
        raise ValueError(
            f"calibration must be a non-empty batch of images (N, C, H, W), got {tuple(calibration.shape)}"
        )
    reduce_range = needs_reduced_range() if reduce_range is None else reduce_range
    dense_qmax = ptq.QMAX_REDUCED if reduce_range else ptq.QMAX_FULL
    depthwise_qmax = ptq.QMAX_FULL if full_range_depthwise else dense_qmax
    was_training = model.training
    folded, _ = fold_batchnorm(model)
    folded, grids = ptq.round_weights(
        folded, calibration, dense_qmax=dense_qmax, depthwise_qmax=depthwise_qmax, method=weight_rounding
    )
    found: dict[str, Any] = {}

    def percentile_ranges(prepared: Path, groups: list[list[str]]) -> dict[str, tuple[float, float]]:
        names = [name for group in groups for name in group]
        ranges = ptq.activation_ranges(prepared, names, calibration, percentile=percentile)
        # The logits stay float in the export (keep_outputs_float), so they are not simulated.
        inner = [group for group in groups if not set(group) & _graph_outputs(prepared)]
        found["points"] = _match_points(folded, prepared, inner, calibration[:2])
        found["ranges"] = ranges
        found["layer_inputs"] = _layer_inputs(prepared, inner)
        return ranges

    resolution = calibration.shape[-1]
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(folded, fp32, info={"resolution": resolution, "transforms": "imagenet", "classes": []})
        quantize_onnx(
            fp32,
            Path(tmp) / "int8.onnx",
            calibration[:1],
            reduce_range=reduce_range,
            full_range_depthwise=full_range_depthwise,
            weight_rounding="nearest",  # already rounded above
            range_search=False,
            activation_ranges=percentile_ranges,
        )
    activations = []
    for point, names in found["points"]:
        low, high = found["ranges"][names[0]]
        activations.append({**point, "low": low, "high": high, "signed": low < 0})
    spec = {
        "weights": {
            name: {"qmax": grid.qmax, "input": found["layer_inputs"].get(f"{name}.weight")}
            for name, grid in grids.items()
        },
        "activations": activations,
        "reduce_range": reduce_range,
        "percentile": percentile,
        "weight_rounding": weight_rounding,
    }
    qat_model = apply_qat_structure(copy.deepcopy(model), spec)
    # The copy's folded float weights are replaced by the rounded ones prepared above.
    missing, unexpected = qat_model.load_state_dict(folded.state_dict(), strict=False)
    if unexpected or any("quantizer" not in key for key in missing):
        raise RuntimeError(f"QAT structure does not fit the model: missing {missing}, unexpected {unexpected}")
    return qat_model.train(was_training)


def convert_qat(model: nn.Module) -> tuple[nn.Module, list[tuple[dict[str, Any], tuple[float, float]]]]:
    """The plain float model a QAT model simulates, and its learned activation ranges.

    The model's weights are the rounded ones (on their int8 grids), its quantizers
    removed; the ranges are ``(point, (low, high))`` in the spec's order.  Export the
    model with :func:`mobilenets.export.export_onnx` and pass the ranges to
    :func:`mobilenets.export.quantize_onnx` through :func:`onnx_ranges`.
    """
    if not is_qat(model):
        raise ValueError("not a quantization-aware model (see prepare_qat)")
    spec = model.arch["qat"]
    ranges = [(point, q.range()) for point, q in zip(spec["activations"], activation_quantizers(model))]
    plain = copy.deepcopy(model).eval()
    modules = dict(plain.named_modules())
    with torch.no_grad():
        _share_input_steps(plain, ())
        for name in spec["weights"]:
            layer = modules[name]
            weight, scale = quantize_weight(layer.weight, layer.weight_qmax)
            layer.weight.copy_(weight)
            if layer.bias is not None:  # ONNX Runtime rounds it the same way
                layer.bias.copy_(_quantize_bias(layer.bias, layer.input_step, scale))
            layer.__class__ = type(layer).__mro__[1]  # the plain nn.Conv2d / nn.Linear
            del layer.weight_qmax
            layer.__dict__.pop("input_step", None)
    del plain._qat_layer_inputs
    for module in modules.values():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
        for attr in ("output_quantizer", "input_quantizer"):
            if attr in module._modules:
                del module._modules[attr]
    for point in spec["activations"]:
        if point["at"] == "hardswish_gate":
            _set_module(plain, point["module"], nn.Hardswish())
    plain.arch = {k: v for k, v in model.arch.items() if k != "qat"}
    return plain, ranges


def export_int8(
    model: nn.Module,
    out: str | Path,
    *,
    info: dict[str, Any],
    probe: Tensor | None = None,
    fp32_path: str | Path | None = None,
    dynamic_batch: bool = False,
    opset: int = 17,
) -> ExportReport:
    """Write the int8 ONNX file of a QAT ``model`` with its learned ranges and integers, no
    calibration: the float model it simulates (:func:`convert_qat`) is exported to
    ``fp32_path`` (default: ``out`` with ``.fp32.onnx``) and quantized with its ranges.
    ``probe`` - a couple of images, only used to match the graph's tensors to the model's
    layers by value - defaults to two seeded random ones.  Returns the fp32 export's report."""
    from .quantize import quantize_onnx

    out = Path(out)
    fp32_path = Path(fp32_path) if fp32_path is not None else out.with_name(out.stem + ".fp32.onnx")
    plain, ranges = convert_qat(model)
    if probe is None:
        size = info["resolution"]
        channels = getattr(model, "in_channels", 3)
        probe = torch.randn(2, channels, size, size, generator=torch.Generator().manual_seed(0))
    report = export_onnx(plain, fp32_path, info=info, dynamic_batch=dynamic_batch, opset=opset)
    quantize_onnx(
        fp32_path,
        out,
        probe,
        weight_rounding="nearest",  # the weights are on their grids already
        range_search=False,
        activation_ranges=onnx_ranges(plain, ranges, probe),
    )
    return report


def onnx_ranges(model: nn.Module, ranges, probe: Tensor):
    """An ``activation_ranges`` callback for :func:`mobilenets.export.quantize_onnx` that
    gives each tensor ONNX Runtime quantizes the range learned for it (``model`` and
    ``ranges`` from :func:`convert_qat`)."""
    by_point = {_key(point): bounds for point, bounds in ranges}

    def for_graph(prepared: Path, groups: list[list[str]]) -> dict[str, tuple[float, float]]:
        outputs = _graph_outputs(prepared)
        # Any range for the logits: their quantizer is removed after quantization (float outputs).
        out = {name: (-1.0, 1.0) for group in groups if set(group) & outputs for name in group}
        inner = [group for group in groups if not set(group) & outputs]
        for point, names in _match_points(model, prepared, inner, probe):
            if _key(point) not in by_point:
                raise ExportError(
                    f"ONNX Runtime quantizes {names[0]}, which the QAT model did not simulate; "
                    "prepare the model again with this version"
                )
            out.update(dict.fromkeys(names, by_point[_key(point)]))
        return out

    return for_graph


def _layer_inputs(prepared: Path, groups: list[list[str]]) -> dict[str, int]:
    """For each conv/linear weight of the graph (by its PyTorch parameter name, which the
    exporter keeps), the index of the group of quantized tensors its input belongs to."""
    import onnx

    group_of = {name: i for i, group in enumerate(groups) for name in group}
    return {
        node.input[1]: group_of[node.input[0]]
        for node in onnx.load(str(prepared)).graph.node
        if node.op_type in ("Conv", "Gemm") and node.input[0] in group_of
    }


def _graph_outputs(path: Path) -> set[str]:
    import onnx

    return {o.name for o in onnx.load(str(path)).graph.output}


def _key(point: dict[str, Any]) -> tuple[str, str]:
    return point["at"], point.get("module", "")


@torch.no_grad()
def _match_points(model: nn.Module, prepared: Path, groups: list[list[str]], probe: Tensor):
    """For each group of tensors ONNX Runtime quantizes with one shared step, the place in
    ``model`` (BN folded, eval) that computes it: ``[(point, names), ...]``.

    Matching is by value on ``probe`` images: ONNX tensor names are the exporter's, and
    ONNX Runtime removes and reshapes nodes, so only the numbers identify a tensor.
    """
    import onnx

    graph = onnx.load(str(prepared))
    session, wanted = session_with_outputs(graph, [name for group in groups for name in group])
    x = probe.float()
    onnx_values = {}
    for i in range(len(x)):  # the export may have a fixed batch of 1
        for name, value in zip(wanted, session.run(wanted, {graph.graph.input[0].name: x[i : i + 1].numpy()})):
            onnx_values.setdefault(name, []).append(value)
    onnx_values = {name: np.concatenate(v) for name, v in onnx_values.items()}

    candidates: list[tuple[dict[str, Any], Tensor]] = [({"at": "input"}, x)]
    handles = []

    def record_output(name):
        def hook(module, inputs, output):
            if isinstance(output, Tensor):
                candidates.append(({"at": "output", "module": name}, output.detach().clone()))

        return hook

    def record_gate(name):
        def hook(module, inputs):
            candidates.append(({"at": "hardswish_gate", "module": name}, F.hardsigmoid(inputs[0]).clone()))

        return hook

    model = model.eval()
    for name, module in model.named_modules():
        if not name or isinstance(module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
            continue
        handles.append(module.register_forward_hook(record_output(name)))
        if isinstance(module, nn.Hardswish):
            handles.append(module.register_forward_pre_hook(record_gate(name)))
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()

    modules = dict(model.named_modules())
    matched = []
    for group in groups:
        point = None
        for name in group:
            value = torch.from_numpy(x.numpy() if name not in onnx_values else onnx_values[name])
            scale = value.abs().max().clamp(min=1e-6)
            same = [p for p, t in candidates if t.shape == value.shape and ((t - value).abs().max() <= 1e-3 * scale)]
            if same:
                # The deepest module is the one that computes the tensor (a block's last
                # layer, not the block); ReLU6/ReLU record their clipping for the export.
                point = max(same, key=lambda p: p.get("module", "").count(".") + (p["at"] != "input"))
                break
        if point is None:
            raise ExportError(
                f"no layer of the PyTorch model computes {group[0]}, which ONNX Runtime quantizes; "
                "quantization-aware training cannot simulate this model's int8 graph"
            )
        module = modules.get(point.get("module", ""))
        if point["at"] == "output" and isinstance(module, nn.Hardtanh):  # ReLU6 is a Hardtanh
            point = {**point, "ceiling": float(module.max_val)}
        matched.append((point, group))
    return matched
